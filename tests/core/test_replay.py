"""Replaying sessions with the bundled tiny model: identical labels, or an IoU per object."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_sam.core.automatic import AutoParams, segment_automatically
from napari_sam.core.commits import commit_pixels, write_commit
from napari_sam.core.errors import SessionError
from napari_sam.core.normalize import Normalization
from napari_sam.core.prompts import make_prompts
from napari_sam.core.replay import ReplayInputError, recorded_labels, replay_session
from napari_sam.core.session_record import (
    AutoRunRecord,
    CommitRecord,
    ImageIdentity,
    ModelRecord,
    PlaneRecord,
    SessionRecord,
)

H, W = 64, 96
Z0 = PlaneRecord((1, 2), (0, None, None))
Z1 = PlaneRecord((1, 2), (1, None, None))
Z2_TRANSPOSED = PlaneRecord((2, 1), (2, None, None))  # rows = image columns


class Annotator:
    """Does what the widget does on commit, on NumPy arrays, and records it."""

    def __init__(self, engine, image, *, rgb=False):
        self.engine, self.image = engine, image
        self.record = SessionRecord(ImageIdentity.from_array(image, rgb=rgb))
        self.labels: dict[str, np.ndarray] = {}

    def _layer(self, target):
        shape = self.record.image.labels_shape
        return self.labels.setdefault(target, np.zeros(shape, np.int32))

    def _rgb(self, plane, norm):
        return norm.apply(plane.take(self.image), rgb=self.record.image.rgb)

    def commit(self, plane, calls, *, overwrite=False, pick=None, target="SAM labels"):
        """``calls``: (points, point_labels, boxes) per SAM call; ``pick``: candidates."""
        norm = Normalization(method="percentile", percentiles=(0.5, 99.5))
        labels = self._layer(target)
        rgb = self._rgb(plane, norm)
        emb = self.engine.embed(rgb)
        prompts = [make_prompts(*c, image_shape=rgb.shape[:2]) for c in calls]
        masks, picks, scores = [], [], []
        for p in prompts:
            pred = self.engine.predict(emb, p)
            for b in range(pred.n_objects):
                k = int(pred.best[b]) if pick is None else pick[len(masks)]
                masks.append(pred.mask(b, k))
                picks.append(k)
                scores.append(pred.score(b, k))
        view = plane.view(labels)
        # New ids from the largest + 1, only for objects that keep pixels (write_objects).
        visible = np.bincount(
            commit_pixels(view, masks, overwrite=overwrite)[2], minlength=len(masks)
        )
        first = int(labels.max()) + 1
        ids = [
            first + int(np.count_nonzero(visible[:i])) if v else None
            for i, v in enumerate(visible)
        ]
        pixels = write_commit(view, masks, ids, overwrite=overwrite)
        self.record.append(
            CommitRecord.build(
                target=target,
                plane=plane,
                overwrite=overwrite,
                model=ModelRecord.from_model(self.engine.model),
                normalization=norm,
                prompts=prompts,
                masks=masks,
                candidates=picks,
                scores=scores,
                sources=[f"object {i + 1}" for i in range(len(masks))],
                labels=ids,
                pixels=pixels.tolist(),
            )
        )
        return ids

    def auto(self, plane, target):
        norm = Normalization()
        params = AutoParams(points_per_side=4, pred_iou_thresh=0.5, stability_score_thresh=0.5)
        result = segment_automatically(self.engine, self._rgb(plane, norm), params)
        layer = self.labels[target] = np.zeros(self.record.image.labels_shape, np.int32)
        plane.view(layer)[...] = result.labels
        self.record.append(
            AutoRunRecord.build(
                target=target,
                plane=plane,
                model=ModelRecord.from_model(self.engine.model),
                normalization=norm,
                params=params,
                labels=result.labels,
            )
        )
        return result


@pytest.fixture(scope="module")
def stack(make_image):
    """(3, H, W) uint16: blobs of different sizes and places on every plane."""
    planes = [make_image((H, W), seed=z)[..., 0].astype(np.uint16) * 16 for z in range(3)]
    planes[1] = np.roll(planes[1], (5, 9), axis=(0, 1))
    planes[2] = np.ascontiguousarray(np.flip(planes[2], 1))
    return np.stack(planes)


@pytest.fixture(scope="module")
def session(tiny_engine, stack):
    """A session of five commits on three planes, and the labels it wrote."""
    a = Annotator(tiny_engine, stack)
    a.commit(Z0, [(None, None, [[8, 12, 32, 48], [40, 55, 60, 85]])])  # one call, two boxes
    a.commit(Z1, [([[30, 40]], None, None)], pick=[0])  # a click, candidate 0 on purpose
    a.commit(Z1, [([[50, 72]], None, None), ([[20, 30], [60, 90]], [1, 0], None)])  # 2 calls
    a.commit(Z1, [(None, None, [[10, 10, 60, 90]])], overwrite=False)  # under the others
    a.commit(Z2_TRANSPOSED, [([[70, 40]], None, [[50, 20, 90, 60]])], overwrite=True)
    return a


def _engine_of(engine):
    return lambda rec: engine


def test_replay_recreates_the_labels_bit_identically(session, stack, tmp_path):
    """A fresh model load, precision as recorded, from the saved file: the same labels."""
    path = session.record.save(tmp_path / "session.json")
    result = replay_session(SessionRecord.load(path), stack)
    expected = session.labels["SAM labels"]
    assert expected.max() >= 6  # the session really wrote objects on every plane
    assert (expected[2] > 0).any() and (expected[0] > 0).any()
    np.testing.assert_array_equal(result.labels, expected)
    assert result.identical and result.notes == []
    assert len(result.objects) == sum(len(c.objects) for c in session.record.commits)
    assert all(o.identical and o.iou == 1.0 for o in result.objects)
    assert result.summary().startswith(
        f"{len(result.objects)} objects: {len(result.objects)} identical"
    )
    assert result.objects[0].describe() == "entry 1, label 1 (object 1, axis 0=0): identical"


def test_a_changed_prompt_is_reported_with_its_iou(session, stack, tiny_engine):
    data = json.loads(session.record.to_json())
    call = data["entries"][1]["calls"][0]
    call["points"] = [[12, 20]]  # elsewhere: SAM answers with another mask
    record = SessionRecord.from_json(json.dumps(data))
    result = replay_session(record, stack, engine_for=_engine_of(tiny_engine))
    changed = [o for o in result.objects if o.entry == 2]
    others = [o for o in result.objects if o.entry != 2]
    assert len(changed) == 1 and not changed[0].identical
    assert 0.0 <= changed[0].iou < 1.0
    assert f"IoU {changed[0].iou:.4f} with the recorded mask" in changed[0].describe()
    assert all(o.iou <= 1.0 for o in others)
    assert not result.identical
    assert "1 differs (lowest IoU" in result.summary()
    assert not np.array_equal(result.labels, session.labels["SAM labels"])


def test_another_precision_is_noted_and_compared_by_iou(session, stack, tiny_engine):
    other = "bf16" if tiny_engine.model.precision == "fp32" else "fp32"
    first = SessionRecord(session.record.image, session.record.entries[:1])  # one plane: fast
    result = replay_session(first, stack, precision=other, device="cpu")
    assert len(result.objects) == 2
    assert any("ran as tiny (sha256 " in n and other in n for n in result.notes), result.notes
    for o in result.objects:
        assert o.identical == (o.iou == 1.0)
        assert o.iou > 0.8, o.describe()  # reduced precision changes masks only at the edges
    assert result.labels.max() == 2


def test_another_image_is_refused_unless_allowed(session, stack, tiny_engine):
    changed = stack.copy()
    changed[0, 0, 0] += 1
    with pytest.raises(SessionError, match="is not the session's image"):
        replay_session(session.record, changed, engine_for=_engine_of(tiny_engine))
    result = replay_session(
        session.record, changed, engine_for=_engine_of(tiny_engine), allow_other_image=True
    )
    assert any("another image" in n for n in result.notes)
    with pytest.raises(SessionError, match="shape"):
        replay_session(
            session.record, stack[:2], engine_for=_engine_of(tiny_engine), allow_other_image=True
        )


def test_several_layers_need_a_target(tiny_engine, stack):
    a = Annotator(tiny_engine, stack)
    a.commit(Z0, [(None, None, [[8, 12, 32, 48]])], target="cells")
    a.commit(Z0, [(None, None, [[40, 55, 60, 85]])], target="nuclei")
    a.commit(Z0, [([[20, 30]], None, None)], target="cells", overwrite=True)
    with pytest.raises(SessionError, match=r"2 labels layers \('cells', 'nuclei'\)"):
        replay_session(a.record, stack, engine_for=_engine_of(tiny_engine))
    for target in ("cells", "nuclei"):
        result = replay_session(a.record, stack, target=target, engine_for=_engine_of(tiny_engine))
        np.testing.assert_array_equal(result.labels, a.labels[target])
        assert result.identical
    with pytest.raises(SessionError, match="no labels layer 'x'"):
        replay_session(a.record, stack, target="x", engine_for=_engine_of(tiny_engine))


def test_automatic_runs_are_replayed_with_later_commits_on_top(tiny_engine, stack):
    a = Annotator(tiny_engine, stack)
    found = a.auto(Z1, "stack SAM auto")
    assert found.n_objects > 0
    a.commit(Z1, [(None, None, [[8, 12, 32, 48]])], target="stack SAM auto", overwrite=True)
    result = replay_session(a.record, stack, engine_for=_engine_of(tiny_engine))
    np.testing.assert_array_equal(result.labels, a.labels["stack SAM auto"])
    assert result.identical and len(result.auto_runs) == 1
    assert result.auto_runs[0].describe().endswith(f"identical ({found.n_objects} objects)")


def test_replay_of_an_rgb_image(tiny_engine, make_image):
    image = make_image((H, W), seed=4)
    a = Annotator(tiny_engine, image, rgb=True)
    a.commit(PlaneRecord((0, 1), (None, None)), [([[20, 30]], None, None)])
    result = replay_session(a.record, image, engine_for=_engine_of(tiny_engine))
    assert result.labels.shape == (H, W) and result.identical


def test_a_candidate_sam_does_not_give_is_a_clear_error(session, stack, tiny_engine):
    data = json.loads(session.record.to_json())
    data["entries"][0]["calls"][0]["objects"][0]["candidate"] = 2  # boxes give one candidate
    record = SessionRecord.from_json(json.dumps(data))
    with pytest.raises(SessionError, match="entry 1: candidate 2 of object 1 does not exist"):
        replay_session(record, stack, engine_for=_engine_of(tiny_engine))


def test_a_missing_custom_checkpoint_is_a_clear_error(session, stack):
    data = json.loads(session.record.to_json())
    for entry in data["entries"]:
        entry["model"].update(name="custom", checkpoint="/nowhere/my_sam.pth")
    record = SessionRecord.from_json(json.dumps(data))
    with pytest.raises(
        ReplayInputError, match=r"checkpoint /nowhere/my_sam\.pth .* is not there"
    ) as e:
        replay_session(record, stack)
    assert e.value.needs == "checkpoint"
    assert str(e.value).endswith("is not there; pass --checkpoint PATH")
    assert e.value.for_gui().endswith(
        "is not there; choose 'custom checkpoint file…' and select the file"
    )


def test_random_weights_are_rebuilt_from_architecture_and_seed(small_model, stack):
    from napari_sam.core.engine import SamEngine

    a = Annotator(SamEngine(small_model), stack)
    a.commit(Z0, [(None, None, [[8, 12, 32, 48]])])
    assert a.record.entries[0].model.name == "random:custom"
    result = replay_session(SessionRecord.from_json(a.record.to_json()), stack)
    np.testing.assert_array_equal(result.labels, a.labels["SAM labels"])
    assert result.identical and result.notes == []


def test_an_empty_session_has_nothing_to_replay(stack):
    record = SessionRecord(ImageIdentity.from_array(stack))
    with pytest.raises(SessionError, match="nothing to replay"):
        replay_session(record, stack)


def test_recorded_labels_rebuild_the_layer_without_sam(session):
    rebuilt = recorded_labels(SessionRecord.from_json(session.record.to_json()))
    np.testing.assert_array_equal(rebuilt, session.labels["SAM labels"])


def test_recorded_labels_cannot_rebuild_automatic_runs(tiny_engine, stack):
    a = Annotator(tiny_engine, stack)
    a.auto(Z0, "stack SAM auto")
    with pytest.raises(SessionError, match=r"automatic segmentation \(entry 1\).*replay"):
        recorded_labels(a.record)
