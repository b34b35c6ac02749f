"""The bundled tiny model: registered, loadable offline, real SAM geometry, honest record, and
the mask quality it must keep (thresholds a margin below the numbers in docs/tiny-model.md).

Every image here is held out: training draws synthetic images from one generator seeded by the
training script, never these seeds, and never the real images ``cb4df20a83`` and
``4d14a3629b``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_sam.core.automatic import AutoParams, segment_automatically
from napari_sam.core.metrics import (
    best_match_iou,
    bounding_box,
    interior_point,
    iou,
    score_prompts,
)
from napari_sam.core.normalize import prepare_image
from napari_sam.core.registry import MODELS
from napari_sam.core.synthetic import make_cells

# Measured values are in docs/tiny-model.md; these are the floors the tests hold it to.
BOX_IOU = 0.7
CLICK_IOU = 0.65
REAL_BOX_IOU = 0.37
AUTO_RECALL = 0.4
AUTO_IOU = 0.68
AUTO_PRED_IOU = 0.5
AUTO_STABILITY = 0.7


@pytest.fixture
def tiny(tiny_engine):
    return tiny_engine


def test_tiny_model_is_bundled_with_real_geometry_and_its_record(tiny):
    assert MODELS["tiny"].bundled_path.is_file()
    m = tiny.model
    assert m.name == "tiny" and m.checkpoint == MODELS["tiny"].bundled_path
    arch = m.architecture
    assert (arch.image_size, arch.patch_size, arch.embedding_size) == (1024, 16, 64)
    assert "NOT a real SAM" in m.meta["warning"]
    # The record says how it was made (scripts/train_tiny_sam.py reproduces it).
    assert m.meta["steps"] > 0 and m.meta["train_real_images"]
    assert "cb4df20a83_image.png" not in m.meta["train_real_images"]  # held out


def test_tiny_model_runs_the_full_resolution_path(tiny):
    s = make_cells((200, 320), seed=3, radius_range=(10, 30))
    emb = tiny.embed(prepare_image(s.image))
    assert tuple(emb.features.shape[-2:]) == (64, 64)
    assert emb.input_size == (640, 1024)
    pred = tiny.predict(emb, points=[[100, 160]])
    assert pred.low_res_logits.shape[-2:] == (256, 256)
    assert pred.mask().shape == (200, 320) and pred.n_candidates == 3
    assert np.isfinite(pred.scores).all()


# --------------------------------------------------------------------------------------------
# Quality: what the trained tiny model must do (thresholds a margin below docs/tiny-model.md)
# --------------------------------------------------------------------------------------------


def _objects(labels: np.ndarray, min_area: int = 150) -> list[np.ndarray]:
    ids = [i for i in np.unique(labels) if i]
    masks = [labels == i for i in ids]
    return [m for m in masks if m.sum() >= min_area]


@pytest.fixture(scope="module")
def scene():
    """A non-square synthetic image (held out: training never draws this seed)."""
    s = make_cells((240, 352), seed=424242, radius_range=(8, 30), touching=0.3)
    return prepare_image(s.image), s.labels


def test_one_box_selects_its_object(tiny, scene):
    rgb, labels = scene
    emb = tiny.embed(rgb)
    scores = [iou(tiny.predict(emb, boxes=[bounding_box(m)]).mask(), m) for m in _objects(labels)]
    assert len(scores) >= 5
    assert np.mean(scores) >= BOX_IOU, scores


def test_several_boxes_give_one_object_each(tiny, scene):
    rgb, labels = scene
    objs = _objects(labels)[:6]
    pred = tiny.predict(tiny.embed(rgb), boxes=[bounding_box(m) for m in objs])
    assert pred.n_objects == len(objs)
    for k in range(len(objs)):
        # Each mask matches its own object better than any other one.
        ious = [iou(pred.mask(k), other) for other in objs]
        assert int(np.argmax(ious)) == k, ious
    assert np.mean([iou(pred.mask(k), m) for k, m in enumerate(objs)]) >= BOX_IOU


def test_click_at_row_col_selects_that_object(tiny, scene):
    rgb, labels = scene  # non-square: swapped coordinates would land elsewhere or outside
    emb = tiny.embed(rgb)
    objs = _objects(labels)
    hits = []
    for m in objs:
        r, c = interior_point(m)
        mask = tiny.predict(emb, points=[[r, c]]).mask()
        assert mask[r, c], "the clicked pixel is not in its own mask"
        hits.append(iou(mask, m))
    assert np.mean(hits) >= CLICK_IOU, hits


def test_unseen_real_nuclei_with_boxes(tiny):
    import imageio.v3 as iio
    import tifffile

    # H&E nuclei the model never saw (cb4df20a83, the other held-out image, has nuclei too
    # small for this model at SAM's input size: docs/tiny-model.md).
    real = Path(__file__).parents[1] / "data" / "real"
    rgb = prepare_image(iio.imread(real / "4d14a3629b_image.png"))
    labels = tifffile.imread(real / "4d14a3629b_labels.tif").astype(np.int32)
    res = score_prompts(tiny, rgb, labels, max_objects=40, seed=0)
    assert res.summary()["box_iou"] >= REAL_BOX_IOU


def test_automatic_segmentation_finds_the_objects(tiny, scene):
    rgb, labels = scene
    params = AutoParams(points_per_side=16, pred_iou_thresh=AUTO_PRED_IOU,
                        stability_score_thresh=AUTO_STABILITY, min_size=20)  # fmt: skip
    result = segment_automatically(tiny, rgb, params)
    found = [best_match_iou(result.labels, m) for m in _objects(labels)]
    recall = np.mean(np.array(found) >= 0.5)
    assert recall >= AUTO_RECALL, found
    assert np.mean([f for f in found if f >= 0.5]) >= AUTO_IOU
