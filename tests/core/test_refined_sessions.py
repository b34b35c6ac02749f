"""Label edits, start masks and refinement chains: the pixels, the record, the replay."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from napari_sam.core.commits import edit_pixels, write_edit
from napari_sam.core.errors import PromptError, SessionError
from napari_sam.core.mask_prompts import StartMask, mask_to_logits, shape_prompt
from napari_sam.core.normalize import Normalization
from napari_sam.core.prompts import make_prompts
from napari_sam.core.refinement import predict
from napari_sam.core.replay import recorded_labels, replay_session
from napari_sam.core.session_record import (
    CommitRecord,
    ImageIdentity,
    ModelRecord,
    PlaneRecord,
    SessionRecord,
    StepRecord,
)

H, W = 64, 96
PLANE = PlaneRecord((0, 1), (None, None))
NORM = Normalization(method="percentile", percentiles=(0.5, 99.5))


def _plane():
    labels = np.zeros((8, 10), np.int32)
    labels[1:4, 1:4] = 1
    labels[1:4, 4:6] = 2
    return labels


def test_an_edit_replaces_one_label_and_keeps_the_others():
    labels = _plane()
    mask = np.zeros((8, 10), bool)
    mask[2:6, 3:7] = True  # moves label 1 down and right, over label 2
    rows, cols, values, pixels = edit_pixels(labels, mask, 1, overwrite=False)
    out = labels.copy()
    out[rows, cols] = values
    assert (out == 2).sum() == (labels == 2).sum()  # label 2 untouched
    assert not (out[1, 1:3]).any()  # label 1's old pixels outside the mask cleared
    assert out[5, 6] == 1 and out[2, 3] == 1 and pixels == (out == 1).sum()
    assert pixels == mask.sum() - np.count_nonzero(mask & (labels == 2))
    over = labels.copy()
    assert write_edit(over, mask, 1, overwrite=True) == mask.sum()
    assert (over == 1).sum() == mask.sum() and (over == 2).sum() == 2  # label 2 lost 4 px
    unchanged = labels.copy()
    write_edit(unchanged, labels == 1, 1, overwrite=False)
    np.testing.assert_array_equal(unchanged, labels)


def test_edit_pixels_refuses_a_mask_of_another_shape():
    with pytest.raises(ValueError, match="shape"):
        edit_pixels(_plane(), np.ones((3, 3), bool), 1, overwrite=False)


def test_start_masks_give_the_logits_of_their_shape_or_mask():
    mask = np.zeros((H, W), bool)
    mask[10:30, 20:50] = True
    np.testing.assert_array_equal(
        StartMask(mask=mask, label=4).logits((H, W)), mask_to_logits(mask)
    )
    corners = np.array([[10, 20], [10, 50], [30, 50], [30, 20]], float)
    ellipse = StartMask(shape="ellipse", vertices=corners)
    np.testing.assert_array_equal(
        ellipse.logits((H, W)), shape_prompt("ellipse", corners, (H, W)).logits
    )
    assert (
        ellipse.describe() == "ellipse" and StartMask(mask=mask, label=4).describe() == "label 4"
    )
    with pytest.raises(PromptError):
        StartMask()
    with pytest.raises(PromptError):
        StartMask(shape="polygon")
    with pytest.raises(PromptError, match="plane"):
        StartMask(mask=mask).logits((H + 1, W))


def _image(make_image):
    return make_image((H, W), seed=2)[..., 0].astype(np.uint16) * 16


def _refined_record(engine, image):
    """What the widget does: a refined click chain from an ellipse, then an edit of label 1.

    Returns the record and the labels it wrote.
    """
    rgb = NORM.apply(image)
    emb = engine.embed(rgb)
    record = SessionRecord(ImageIdentity.from_array(image))
    labels = np.zeros((H, W), np.int32)
    model = ModelRecord.from_model(engine.model)
    corners = np.array([[6, 8], [6, 50], [34, 50], [34, 8]], float)
    start = StartMask(shape="ellipse", vertices=corners)
    box = shape_prompt("ellipse", corners, (H, W)).box
    first = make_prompts([[20, 30]], [1], [box], image_shape=(H, W))
    pred = predict(engine, emb, first, refine=True, initial=start.logits((H, W)))
    logits = pred.logits(0, 0)[None]
    final = make_prompts([[20, 30], [30, 12]], [1, 0], [box], image_shape=(H, W))
    pred = predict(engine, emb, final, refine=True, initial=logits)
    mask = pred.mask(0, 0)
    labels[mask] = 1
    record.append(
        CommitRecord.build(
            target="SAM labels",
            plane=PLANE,
            overwrite=False,
            model=model,
            normalization=NORM,
            prompts=[final],
            masks=[mask],
            candidates=[0],
            scores=[pred.score(0, 0)],
            sources=["ellipse 1"],
            labels=[1],
            pixels=[int(mask.sum())],
            steps=[(StepRecord(first, (0,)),)],
            starts=[start],
        )
    )
    # An edit of label 1: its mask starts the chain, a click reshapes it.
    edit_start = StartMask(mask=labels == 1, label=1)
    click = make_prompts([[45, 70]], [1], image_shape=(H, W))
    pred = predict(engine, emb, click, refine=True, initial=edit_start.logits((H, W)))
    new = pred.mask(0, 0)
    pixels = write_edit(labels, new, 1, overwrite=False)
    record.append(
        CommitRecord.build(
            target="SAM labels",
            plane=PLANE,
            overwrite=False,
            model=model,
            normalization=NORM,
            prompts=[click],
            masks=[new],
            candidates=[0],
            scores=[pred.score(0, 0)],
            sources=["points"],
            labels=[1],
            pixels=[pixels],
            starts=[edit_start],
            edit=1,
        )
    )
    return record, labels


def test_refined_and_edited_commits_replay_identically(tiny_engine, make_image, tmp_path):
    image = _image(make_image)
    record, labels = _refined_record(tiny_engine, image)
    path = record.save(tmp_path / "s.json")
    data = json.loads(path.read_text())
    assert data["version"] == 2
    call = data["entries"][0]["calls"][0]
    assert call["start_mask"]["shape"] == "ellipse" and call["refined_from"][0]["candidates"] == [
        0
    ]
    assert (
        data["entries"][1]["edit"] == 1
        and "mask_rle" in data["entries"][1]["calls"][0]["start_mask"]
    )
    loaded = SessionRecord.load(path)
    assert loaded.entries[1].edit == 1 and loaded.entries[0].calls[0].steps[0].candidates == (0,)
    np.testing.assert_array_equal(
        loaded.entries[1].calls[0].start.mask, record.entries[1].calls[0].start.mask
    )
    result = replay_session(loaded, image, engine_for=lambda _rec: tiny_engine)
    assert result.identical, result.summary()
    np.testing.assert_array_equal(result.labels, labels)
    np.testing.assert_array_equal(recorded_labels(loaded), labels)  # without SAM, too


def test_without_a_chain_the_file_stays_version_1(tiny_engine, make_image):
    """Older napari-sam versions open files that use no version 2 key."""
    record, _ = _refined_record(tiny_engine, _image(make_image))
    first, edit = record.entries
    plain = replace(first, calls=tuple(replace(c, steps=(), start=None) for c in first.calls))
    record.entries[:] = [plain]
    data = json.loads(record.to_json())
    assert data["version"] == 1 and "refined_from" not in data["entries"][0]["calls"][0]
    record.entries.append(replace(edit, calls=tuple(replace(c, start=None) for c in edit.calls)))
    assert json.loads(record.to_json())["version"] == 2  # an edit alone needs version 2


def _damaged(tiny_engine, make_image, change):
    record, _ = _refined_record(tiny_engine, _image(make_image))
    data = json.loads(record.to_json())
    change(data)
    with pytest.raises(SessionError) as info:
        SessionRecord.from_json(json.dumps(data), where="s.json")
    return str(info.value)


def test_damaged_chains_are_named(tiny_engine, make_image):
    def bad_candidates(d):
        d["entries"][0]["calls"][0]["refined_from"][0]["candidates"] = [0, 1]

    def bad_shape(d):
        d["entries"][0]["calls"][0]["start_mask"]["shape"] = "line"

    def bad_edit(d):
        d["entries"][1]["edit"] = 0

    assert "refined_from[0].candidates" in _damaged(tiny_engine, make_image, bad_candidates)
    assert "start_mask.shape" in _damaged(tiny_engine, make_image, bad_shape)
    assert "entries[1].edit" in _damaged(tiny_engine, make_image, bad_edit)
