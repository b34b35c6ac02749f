"""Resizing to the encoder input equals segment_anything's ResizeLongestSide; no torchvision on
the way from a checkpoint to the first mask."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from napari_sam.core.resize import preprocess_shape, resize_boxes, resize_coords, resize_image

SHAPES = [
    (1, 1),
    (3, 5),
    (100, 120),
    (683, 1000),
    (1024, 1024),
    (2000, 300),
    (999, 1001),
    (7, 1500),
]


@pytest.fixture(scope="module")
def official():
    from segment_anything.utils.transforms import ResizeLongestSide

    return ResizeLongestSide(1024)


@pytest.mark.parametrize("shape", SHAPES)
def test_image_equals_resize_longest_side(official, shape):
    rng = np.random.default_rng(sum(shape))
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours = resize_image(rgb, 1024)
    assert preprocess_shape(*shape, 1024) == official.get_preprocess_shape(*shape, 1024)
    assert ours.flags.writeable and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, official.apply_image(rgb))


@pytest.mark.parametrize("shape", SHAPES)
def test_prompts_equal_resize_longest_side(official, shape):
    rng = np.random.default_rng(1)
    coords = rng.uniform(0, max(shape), (2, 5, 2))
    boxes = rng.uniform(0, max(shape), (4, 4))
    np.testing.assert_array_equal(
        resize_coords(coords, shape, 1024), official.apply_coords(coords, shape)
    )
    np.testing.assert_array_equal(
        resize_boxes(boxes, shape, 1024), official.apply_boxes(boxes, shape)
    )
    assert coords.dtype == np.float64 and np.all(coords < max(shape))  # inputs untouched


def test_first_mask_without_torchvision():
    """segment_anything's package __init__ (predictor, torchvision, torch._dynamo) is not run
    until one of its own names is asked for, and then everything is there as usual."""
    code = """
import sys
import numpy as np
from napari_sam.core.checkpoints import load_model
from napari_sam.core.engine import SamEngine

engine = SamEngine(load_model("tiny", device="cpu"))
rgb = np.zeros((64, 80, 3), np.uint8)
rgb[10:40, 20:60] = 200
mask = engine.predict(engine.embed(rgb), points=[[20, 30]]).mask()
heavy = [m for m in ("torchvision", "torch._dynamo") if m in sys.modules]
assert not heavy, heavy

import segment_anything
from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry
assert SamPredictor is segment_anything.predictor.SamPredictor
assert "vit_b" in sam_model_registry and "torchvision" in sys.modules
try:
    segment_anything.no_such_name
except AttributeError:
    pass
else:
    raise AssertionError("missing names must still raise AttributeError")
"""
    subprocess.run([sys.executable, "-c", code], check=True)
