"""Automatic segmentation: overlapping masks -> labels, parameters, and the full run."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.core.automatic import (
    AutoParams,
    AutoSegmentation,
    masks_to_labels,
    segment_automatically,
)
from napari_sam.core.embedding import compute_embedding
from napari_sam.core.engine import SamEngine
from napari_sam.core.errors import Cancelled, ImageError, NapariSamError

TABLE_COLUMNS = [
    "label",
    "area",
    "bbox_y0",
    "bbox_x0",
    "bbox_y1",
    "bbox_x1",
    "predicted_iou",
    "stability_score",
]


def box_mask(shape, r0, c0, r1, c1):
    """Boolean mask of rows r0..r1-1 and columns c0..c1-1."""
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


# --------------------------------------------------------------------------------------------
# masks_to_labels
# --------------------------------------------------------------------------------------------


def test_small_mask_stays_on_top_of_the_big_one():
    shape = (20, 30)
    small = box_mask(shape, 5, 6, 8, 10)  # 3 x 4 = 12 px
    big = box_mask(shape, 2, 3, 15, 25)  # 13 x 22 = 286 px
    # The small one first, to show that painting order comes from size, not from the list.
    labels, table = masks_to_labels(
        [small, big], shape, predicted_iou=np.array([0.9, 0.5]), stability_score=[0.8, 0.7]
    )
    assert labels.dtype == np.int32
    assert labels.shape == shape
    expected = np.zeros(shape, np.int32)
    expected[big] = 1
    expected[small] = 2
    np.testing.assert_array_equal(labels, expected)

    assert list(table) == TABLE_COLUMNS
    np.testing.assert_array_equal(table["label"], [1, 2])
    np.testing.assert_array_equal(table["area"], [286 - 12, 12])  # visible pixels
    np.testing.assert_array_equal(table["bbox_y0"], [2, 5])
    np.testing.assert_array_equal(table["bbox_x0"], [3, 6])
    np.testing.assert_array_equal(table["bbox_y1"], [15, 8])
    np.testing.assert_array_equal(table["bbox_x1"], [25, 10])
    # Scores follow their masks through the reordering.
    np.testing.assert_allclose(table["predicted_iou"], [0.5, 0.9], rtol=1e-6)
    np.testing.assert_allclose(table["stability_score"], [0.7, 0.8], rtol=1e-6)
    assert table["predicted_iou"].dtype == np.float32
    assert table["label"].dtype == np.int32
    assert table["area"].dtype == np.int64


def test_labels_are_numbered_from_the_largest():
    shape = (10, 40)
    masks = [
        box_mask(shape, 0, 0, 2, 2),  # 4
        box_mask(shape, 0, 10, 5, 20),  # 50
        box_mask(shape, 0, 30, 3, 33),  # 9
        box_mask(shape, 6, 0, 10, 10),  # 40
    ]
    labels, table = masks_to_labels(masks, shape)
    for label, i in zip([1, 2, 3, 4], [1, 3, 2, 0], strict=True):
        assert set(np.unique(labels[masks[i]])) == {label}
    np.testing.assert_array_equal(table["label"], [1, 2, 3, 4])
    np.testing.assert_array_equal(table["area"], [50, 40, 9, 4])
    np.testing.assert_array_equal(table["bbox_y0"], [0, 6, 0, 0])
    np.testing.assert_array_equal(table["bbox_x0"], [10, 0, 30, 0])
    np.testing.assert_array_equal(table["bbox_y1"], [5, 10, 3, 2])
    np.testing.assert_array_equal(table["bbox_x1"], [20, 10, 33, 2])
    assert np.isnan(table["predicted_iou"]).all()
    assert np.isnan(table["stability_score"]).all()
    assert (labels > 0).sum() == table["area"].sum()


def test_equal_sizes_keep_list_order():
    shape = (4, 10)
    a = box_mask(shape, 0, 0, 2, 2)
    b = box_mask(shape, 0, 5, 2, 7)
    labels, _ = masks_to_labels([a, b], shape)
    assert labels[0, 0] == 1
    assert labels[0, 5] == 2


def test_min_size_uses_the_visible_area():
    shape = (20, 40)
    big = box_mask(shape, 0, 0, 10, 10)  # 100 px, fully visible
    lone_small = box_mask(shape, 15, 30, 17, 32)  # 4 px: dropped
    # 20 px, but a 16 px mask covers all but 4 of them: dropped although 20 >= min_size.
    hidden = box_mask(shape, 0, 20, 4, 25)
    cover = box_mask(shape, 0, 20, 4, 24)
    labels, table = masks_to_labels(
        [big, lone_small, hidden, cover], shape, predicted_iou=[0.1, 0.2, 0.3, 0.4], min_size=10
    )
    np.testing.assert_array_equal(table["label"], [1, 2])
    np.testing.assert_array_equal(table["area"], [100, 16])
    np.testing.assert_allclose(table["predicted_iou"], [0.1, 0.4], rtol=1e-6)
    assert (labels[big] == 1).all()
    assert (labels[cover] == 2).all()
    assert (labels[lone_small] == 0).all()
    assert (labels[hidden & ~cover] == 0).all()
    assert labels.max() == 2


def test_min_size_boundary_is_inclusive():
    shape = (5, 5)
    m = box_mask(shape, 0, 0, 2, 3)  # 6 px
    assert masks_to_labels([m], shape, min_size=6)[0].max() == 1
    assert masks_to_labels([m], shape, min_size=7)[0].max() == 0


def test_fully_hidden_masks_are_dropped():
    shape = (6, 6)
    a = box_mask(shape, 0, 0, 3, 3)
    b = a.copy()  # identical: the later one hides the earlier
    labels, table = masks_to_labels([a, b], shape)
    np.testing.assert_array_equal(table["label"], [1])
    np.testing.assert_array_equal(labels, a.astype(np.int32))


def test_empty_mask_list():
    labels, table = masks_to_labels([], (7, 9))
    assert labels.shape == (7, 9)
    assert labels.dtype == np.int32
    assert not labels.any()
    assert list(table) == TABLE_COLUMNS
    for column in table.values():
        assert len(column) == 0


def test_empty_mask_is_dropped():
    shape = (5, 5)
    labels, table = masks_to_labels([np.zeros(shape, bool), box_mask(shape, 1, 1, 3, 3)], shape)
    np.testing.assert_array_equal(table["area"], [4])
    assert labels.max() == 1


# --------------------------------------------------------------------------------------------
# AutoParams
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"points_per_side": 0}, "points_per_side"),
        ({"points_per_batch": 0}, "points_per_batch"),
        ({"pred_iou_thresh": 1.5}, "pred_iou_thresh"),
        ({"pred_iou_thresh": -0.1}, "pred_iou_thresh"),
        ({"stability_score_thresh": 2}, "stability_score_thresh"),
        ({"box_nms_thresh": -1}, "box_nms_thresh"),
        ({"crop_n_layers": -1}, "crop_n_layers"),
        ({"min_size": -5}, "min_size"),
    ],
)
def test_auto_params_validation(kwargs, match):
    with pytest.raises(NapariSamError, match=match):
        AutoParams(**kwargs)


def test_auto_params_defaults_and_generator_kwargs():
    p = AutoParams(min_size=7)
    kw = p.generator_kwargs()
    assert "min_size" not in kw
    assert kw["points_per_side"] == 32
    assert kw["pred_iou_thresh"] == 0.88
    assert kw["stability_score_thresh"] == 0.95
    AutoParams(pred_iou_thresh=0, stability_score_thresh=1, box_nms_thresh=0)  # bounds are valid


# --------------------------------------------------------------------------------------------
# segment_automatically with a small random model
# --------------------------------------------------------------------------------------------

PARAMS = AutoParams(points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)


@pytest.fixture(scope="module")
def rgb(make_image):
    return make_image((64, 96))


@pytest.fixture(scope="module")
def engine(small_model, rgb):
    eng = SamEngine(small_model)
    eng.cache.put(compute_embedding(small_model, rgb))
    return eng


@pytest.fixture(scope="module")
def auto_run(engine, rgb):
    calls: list[tuple[int, int]] = []
    result = segment_automatically(engine, rgb, PARAMS, progress=lambda d, t: calls.append((d, t)))
    return result, calls


def test_segment_automatically_labels(auto_run, rgb):
    result, _ = auto_run
    assert isinstance(result, AutoSegmentation)
    assert result.params == PARAMS
    labels = result.labels
    assert labels.dtype == np.int32
    assert labels.shape == rgb.shape[:2]
    n = result.n_objects
    # Labels 1..N without gaps; one value per pixel means no overlaps.
    present = np.unique(labels)
    np.testing.assert_array_equal(present[present > 0], np.arange(1, n + 1))
    assert list(result.table) == TABLE_COLUMNS
    assert all(len(col) == n for col in result.table.values())
    np.testing.assert_array_equal(
        result.table["area"], np.bincount(labels.ravel(), minlength=n + 1)[1:]
    )
    if n:
        assert np.isfinite(result.table["predicted_iou"]).all()
        assert (result.table["predicted_iou"] > 0).all()  # pred_iou_thresh=0 keeps only > 0


def test_segment_automatically_progress(auto_run):
    _, calls = auto_run
    assert calls, "progress was never reported"
    total = calls[-1][1]
    # 1 crop (the whole image) + ceil(16 points / 64 per batch) = 1 batch.
    assert total == 2
    assert calls[-1] == (total, total)
    dones = [d for d, _ in calls]
    assert dones == sorted(dones)
    assert all(t == total for _, t in calls)


def test_segment_automatically_progress_with_several_batches(engine, rgb):
    calls: list[tuple[int, int]] = []
    params = AutoParams(
        points_per_side=4, points_per_batch=5, pred_iou_thresh=0, stability_score_thresh=0
    )
    segment_automatically(engine, rgb, params, progress=lambda d, t: calls.append((d, t)))
    # 1 embedding + ceil(16 / 5) = 4 batches
    assert calls == [(i, 5) for i in range(1, 6)]


def test_segment_automatically_uses_the_cached_embedding(engine, rgb, monkeypatch):
    from napari_sam.core import engine as engine_module

    def must_not_compute(*args, **kwargs):
        raise AssertionError("the embedding should come from the engine's cache")

    monkeypatch.setattr(engine_module, "compute_embedding", must_not_compute)
    segment_automatically(engine, rgb, PARAMS)


def test_segment_automatically_cancel(engine, rgb):
    polls = []

    def cancel() -> bool:
        polls.append(1)
        return len(polls) > 1

    with pytest.raises(Cancelled):
        segment_automatically(engine, rgb, PARAMS, cancel=cancel)
    assert len(polls) == 2


def test_segment_automatically_cancel_at_once(engine, rgb):
    with pytest.raises(Cancelled):
        segment_automatically(engine, rgb, PARAMS, cancel=lambda: True)


def test_segment_automatically_checks_the_image(engine):
    with pytest.raises(ImageError):
        segment_automatically(engine, np.zeros((8, 8), np.float32), PARAMS)


def test_segment_automatically_min_size(engine, rgb, auto_run):
    full, _ = auto_run
    if not full.n_objects:
        pytest.skip("the random model found nothing to filter")
    cut = int(np.median(full.table["area"])) + 1
    result = segment_automatically(
        engine,
        rgb,
        AutoParams(points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0, min_size=cut),
    )
    assert (result.table["area"] >= cut).all()
    assert result.n_objects == int((full.table["area"] >= cut).sum())
