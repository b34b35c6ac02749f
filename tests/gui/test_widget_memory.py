"""The widget on a lazy stack: planes read region by region, lazy label volumes (Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest
from gui_helpers import CLICK_RADII, CLICK_SCORES, GeometricEngine, disc, layer_named, wait_idle
from read_log import ReadLog

from napari_sam.core import lazy_arrays
from napari_sam.core.lazy_arrays import REGION

pytestmark = pytest.mark.gui

SHAPE = (3, 1500, 2200)


def test_lazy_stack_plane_reads_commit_undo_and_auto_segment(
    make_widget, qtbot, small_model, monkeypatch
):
    # Labels as for a stack too large for NumPy (the default limit is 1 GiB).
    monkeypatch.setattr(lazy_arrays, "DENSE_LABELS_BYTES", 0)
    # Only the embedding's reads are counted here: no prefetching of neighbouring planes and
    # no hashing of the image for its session (both read other planes in their own workers).
    monkeypatch.setattr("napari_sam.widget.plane_embedding.PREFETCH_REACH", 0)
    monkeypatch.setattr(
        "napari_sam.widget.session_panel.SessionPanel.image_changed", lambda self, image: None
    )
    data = (np.arange(np.prod(SHAPE)) % 50_000).reshape(SHAPE).astype(np.uint16)
    lazy = ReadLog(data, chunks=(1, 512, 512))  # np.asarray(lazy) raises
    viewer, widget = make_widget(engine=GeometricEngine(small_model))
    widget.set_tiling("off")  # embedded whole (tiling would read only its tiles' blocks)
    viewer.add_image(lazy, name="lazy", contrast_limits=(0, 50_000))
    viewer.dims.current_step = (1, 0, 0)
    wait_idle(qtbot, widget)
    assert widget.embedding is not None, widget.status.value
    # The worker read plane 1 in regions of whole chunks (napari's own reads, for display,
    # run on the main thread and are not counted). Before: one read of the whole plane.
    ours = [(key, n) for key, n, main in lazy.reads if not main]
    assert {key[0] for key, _ in ours} == {1}
    assert sum(n for _, n in ours) == SHAPE[1] * SHAPE[2]
    assert max(n for _, n in ours) <= REGION * REGION

    layer_named(viewer, "SAM points").add([[1, 700, 900]])
    wait_idle(qtbot, widget)
    # Candidates are kept inside their boxes, not as three full planes.
    [obj] = widget.preview_controller.preview.objects
    assert all(m.mask.size < 100 * 100 for m in obj.masks)
    widget.commit()
    wait_idle(qtbot, widget)
    labels = layer_named(viewer, "SAM labels")
    # The new target is a lazy (zarr) volume: only what was committed takes memory.
    assert not isinstance(labels.data, np.ndarray) and labels.data.shape == SHAPE
    best = CLICK_RADII[int(np.argmax(CLICK_SCORES))]
    assert np.array_equal(labels.data[1] == 1, disc(SHAPE[1:], (700, 900), best))
    assert not np.any(labels.data[0]) and not np.any(labels.data[2])
    assert labels.data.nchunks_initialized == 1
    labels.undo()
    assert not np.any(labels.data[1]) and labels.data.nchunks_initialized == 0
    labels.redo()
    assert labels.data[1].max() == 1

    widget.points_per_side.value = 4
    widget.pred_iou_thresh.value = 0.0
    widget.stability_score_thresh.value = 0.0
    widget.auto_segment()
    wait_idle(qtbot, widget, timeout=120_000)
    auto = layer_named(viewer, "lazy SAM auto")
    assert not isinstance(auto.data, np.ndarray) and auto.data.shape == SHAPE
    assert auto.data[1].max() >= 1 and not np.any(auto.data[0]) and not np.any(auto.data[2])
    assert auto.data.nchunks_initialized <= 3 * 5  # chunks of plane 1 at most
