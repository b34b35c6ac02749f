"""Quality measures with known answers."""

from __future__ import annotations

import numpy as np

from napari_sam.core.metrics import best_match_iou


def test_best_match_iou_picks_the_label_that_fits_best():
    labels = np.zeros((10, 10), np.int32)
    labels[0:4, 0:4] = 1  # 16 px, covers the reference's first half
    labels[0:4, 4:10] = 2  # 24 px, covers its second half and more
    reference = np.zeros((10, 10), bool)
    reference[0:4, 2:8] = True  # 24 px
    # label 1: 8 shared / 32 union; label 2: 16 shared / 32 union
    assert best_match_iou(labels, reference) == 0.5
    # A reference that no label touches is not found.
    far = np.zeros((10, 10), bool)
    far[8:, 8:] = True
    assert best_match_iou(labels, far) == 0.0
