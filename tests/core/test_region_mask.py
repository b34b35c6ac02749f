"""Masks kept inside their bounding boxes, and drawn like full masks."""

from __future__ import annotations

import numpy as np

from napari_sam.core.commits import commit_pixels, draw_objects
from napari_sam.core.region_mask import RegionMask


def blob(shape, r0, c0, r1, c1) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    m[r0, c0] = False  # not a plain rectangle
    return m


def test_from_mask_trims_to_the_true_pixels():
    m = blob((40, 50), 5, 7, 12, 30)
    r = RegionMask.from_mask(m)
    assert (r.y0, r.x0, r.mask.shape) == (5, 7, (7, 23))
    assert r.area == int(m.sum())
    np.testing.assert_array_equal(r.full((40, 50)), m)
    empty = RegionMask.from_mask(np.zeros((40, 50), bool))
    assert empty.mask.shape == (0, 0) and empty.area == 0 and not empty.full((4, 5)).any()
    # Trimming a region with an empty margin moves its corner.
    padded = RegionMask(10, 20, np.pad(r.mask, 3))
    t = padded.trimmed()
    assert (t.y0, t.x0) == (13, 23) and np.array_equal(t.mask, r.mask)


def test_regions_draw_and_commit_like_full_masks():
    shape = (60, 80)
    big = blob(shape, 5, 5, 50, 70)
    small = blob(shape, 20, 20, 30, 35)
    corner = blob(shape, 40, 60, 50, 70)
    masks = [big, small, corner]
    regions = [RegionMask.from_mask(m) for m in masks]
    np.testing.assert_array_equal(draw_objects(regions, shape), draw_objects(masks, shape))
    existing = np.zeros(shape, np.int32)
    existing[25, :] = 9
    for overwrite in (False, True):
        a = commit_pixels(existing, masks, overwrite=overwrite)
        b = commit_pixels(existing, regions, overwrite=overwrite)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
