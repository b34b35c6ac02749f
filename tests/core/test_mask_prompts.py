"""Masks and drawn shapes in SAM's low-resolution mask frame, checked against known geometry."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_sam.core.engine import upsample_mask
from napari_sam.core.errors import PromptError
from napari_sam.core.mask_prompts import (
    MASK_LOGIT,
    coverage_to_logits,
    mask_to_logits,
    shape_prompt,
)
from napari_sam.core.metrics import iou
from napari_sam.core.resize import preprocess_shape


def back_to_image(logits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The mask a low-resolution prompt stands for, at the image's resolution (SAM's way)."""
    geometry = SimpleNamespace(original_size=shape, input_size=preprocess_shape(*shape, 1024))
    return upsample_mask(torch.from_numpy(logits), geometry)


def ellipse_mask(shape, centre, radii, angle=0.0) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    dy, dx = yy - centre[0], xx - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dy + s * dx, -s * dy + c * dx
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2 <= 1.0


def test_coverage_to_logits():
    out = coverage_to_logits(np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(out, [-MASK_LOGIT, 0.0, MASK_LOGIT], atol=1e-5)
    assert out.dtype == np.float32


def test_mask_of_a_256_image_maps_pixel_to_pixel():
    # 256 -> 1024 input (4x), pooled by 4: each low-resolution pixel is one image pixel.
    mask = np.zeros((256, 256), bool)
    mask[40:90, 100:180] = True
    logits = mask_to_logits(mask)
    assert logits.shape == (256, 256) and logits.dtype == np.float32
    np.testing.assert_allclose(logits[41:89, 101:179], MASK_LOGIT, atol=1e-4)
    np.testing.assert_allclose(logits[:38], -MASK_LOGIT, atol=1e-4)
    np.testing.assert_array_equal(logits > 0, mask)


@pytest.mark.parametrize("shape", [(200, 320), (600, 150), (1500, 1000)])
def test_mask_of_any_image_lands_on_the_object(shape):
    h, w = shape
    mask = ellipse_mask(shape, (0.4 * h, 0.6 * w), (0.2 * h, 0.25 * w), angle=0.5)
    logits = mask_to_logits(mask)
    # The padding below or right of the resized image is background.
    hh, ww = preprocess_shape(h, w, 1024)
    assert (logits[-(-hh // 4) + 1 :] < 0).all() and (logits[:, -(-ww // 4) + 1 :] < 0).all()
    assert iou(back_to_image(logits, shape), mask) > 0.95


def test_polygon_on_a_256_image_covers_its_pixels():
    # Vertices at pixel centres: the border pixels are half inside (logit 0), corners a
    # quarter, the inside fully.
    square = [(10, 20), (10, 60), (40, 60), (40, 20)]
    for kind in ("polygon", "rectangle", "path"):
        p = shape_prompt(kind, np.array(square), (256, 256))
        np.testing.assert_allclose(p.logits[11:40, 21:60], MASK_LOGIT, atol=1e-4)
        np.testing.assert_allclose(p.logits[10, 21:60], 0.0, atol=1e-4)
        np.testing.assert_allclose(p.logits[25, 60], 0.0, atol=1e-4)
        assert p.logits[10, 20] == pytest.approx(np.log(0.25 / 0.75), abs=1e-4)
        assert (p.logits[:9] < -MASK_LOGIT + 1e-3).all()
        np.testing.assert_array_equal(p.box, [10, 20, 40, 60])


@pytest.mark.parametrize("shape", [(256, 256), (200, 320), (900, 500)])
@pytest.mark.parametrize("angle", [0.0, np.pi / 6])
def test_ellipse_from_its_box_corners(shape, angle):
    h, w = shape
    centre, radii = np.array([0.45 * h, 0.5 * w]), np.array([0.2 * h, 0.3 * w])
    # napari keeps an ellipse as the 4 corners of its (rotated) bounding rectangle.
    axis_r = radii[0] * np.array([np.cos(angle), np.sin(angle)])
    axis_c = radii[1] * np.array([-np.sin(angle), np.cos(angle)])
    corners = np.array(
        [centre - axis_r - axis_c, centre - axis_r + axis_c,
         centre + axis_r + axis_c, centre + axis_r - axis_c]
    )  # fmt: skip
    p = shape_prompt("ellipse", corners, shape)
    truth = ellipse_mask(shape, centre, radii, angle)
    assert iou(back_to_image(p.logits, shape), truth) > 0.95
    # The box is the ellipse's own extent, not its rotated corners'.
    rows, cols = np.nonzero(truth)
    np.testing.assert_allclose(p.box, [rows.min(), cols.min(), rows.max(), cols.max()], atol=1.0)
    if angle:
        assert p.box[0] > corners[:, 0].min() + 1


def test_a_shape_partly_off_the_image_is_clipped():
    p = shape_prompt("polygon", np.array([(-30, -30), (-30, 50), (50, 50), (50, -30)]), (100, 80))
    np.testing.assert_array_equal(p.box, [0, 0, 50, 50])
    assert iou(back_to_image(p.logits, (100, 80)), np.pad(np.ones((51, 51), bool),
                                                          ((0, 49), (0, 29)))) > 0.97  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "vertices", "match"),
    [
        ("star", [(0, 0), (1, 1), (2, 0)], "unknown shape type 'star'"),
        ("polygon", [(0, 0), (5, 5)], "at least 3 vertices"),
        ("ellipse", [(0, 0), (0, 5), (5, 5)], "4 corners of its box, got 3"),
        ("polygon", [(0, 0, 1), (5, 5, 1), (5, 0, 1)], r"\(N, 2\)"),
        ("polygon", [(0, 0), (np.nan, 5), (5, 0)], "finite"),
        ("path", [(10, 10), (20, 20), (30, 30)], "encloses no pixel"),
        ("polygon", [(200, 10), (200, 50), (260, 50)], "outside the 100x80 image"),
    ],
)
def test_shapes_sam_cannot_use(kind, vertices, match):
    with pytest.raises(PromptError, match=match):
        shape_prompt(kind, np.array(vertices, float), (100, 80))


def test_mask_of_wrong_dimensions():
    with pytest.raises(PromptError, match="2D"):
        mask_to_logits(np.zeros((2, 3, 4), bool))
