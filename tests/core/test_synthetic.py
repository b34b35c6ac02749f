"""Synthetic data with known answers: the time-lapse of moving nuclei."""

from __future__ import annotations

import numpy as np

from napari_sam.core.synthetic import make_moving_nuclei


def test_moving_nuclei_keep_their_track_id_move_and_overlap_frame_to_frame():
    s = make_moving_nuclei((10, 96, 112), n_objects=4, speed=2.0, seed=3)
    assert s.image.shape == s.labels.shape == (10, 96, 112)
    assert s.image.dtype == np.float32 and s.labels.dtype == np.int32
    for k in range(1, 5):
        masks = s.labels == k
        assert masks.any(axis=(1, 2)).all(), f"track {k} missing in a frame"
        start, end = (np.argwhere(masks[t]).mean(axis=0) for t in (0, -1))
        assert np.hypot(*(end - start)) > 2.0, f"track {k} did not move"
        for t in range(9):  # consecutive frames overlap (a tracker can follow them)
            overlap = (masks[t] & masks[t + 1]).sum() / masks[t].sum()
            assert overlap > 0.5, (k, t, overlap)
    assert s.labels.max() == 4
    inside, outside = s.image[s.labels > 0].mean(), s.image[s.labels == 0].mean()
    assert inside > outside + 0.3
    again = make_moving_nuclei((10, 96, 112), n_objects=4, speed=2.0, seed=3)
    np.testing.assert_array_equal(again.labels, s.labels)
