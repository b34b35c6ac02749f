"""Data safety in the widget: stale actions die with their plane, errors in slots become
messages and cost no labels, progress never overflows, label ids never wrap."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from gui_helpers import layer_named, wait_idle

from napari_sam._tasks import Task

pytestmark = pytest.mark.gui


def _stack(seed=0):
    return np.random.default_rng(seed).random((3, 64, 80), dtype=np.float32)


def test_a_pending_commit_dies_when_the_slice_changes(make_widget, qtbot, geometric_engine):
    """Commit asked for on one slice while its embedding computes; the user moves to another
    slice with its own prompt: nothing may be committed there behind the user's back."""
    viewer, widget = make_widget(engine=geometric_engine)
    gate = threading.Event()
    geometric_engine.gate = gate
    viewer.add_image(_stack(), name="v")
    qtbot.waitUntil(geometric_engine.gate_entered.is_set)
    here = viewer.dims.current_step[0]
    there = (here + 1) % 3
    points = layer_named(viewer, "SAM points")
    points.add([here, 30, 40])
    points.add([there, 30, 40])
    widget.commit()
    assert "as soon as the preview is ready" in widget.status.value
    viewer.dims.current_step = (there, 0, 0)
    gate.set()
    wait_idle(qtbot, widget)
    assert widget.preview is not None  # the other slice previews its own point...
    assert not [x for x in viewer.layers if x.name == "SAM labels"], "committed on the other slice"


def test_commit_after_a_cancelled_embedding_says_why(make_widget, qtbot, geometric_engine):
    viewer, widget = make_widget(engine=geometric_engine)
    gate = threading.Event()
    geometric_engine.gate = gate
    viewer.add_image(np.random.default_rng(1).random((64, 80), dtype=np.float32), name="img")
    qtbot.waitUntil(geometric_engine.gate_entered.is_set)
    widget.cancel()
    gate.set()
    wait_idle(qtbot, widget)
    assert "cancelled" in widget.status.value.lower()
    messages = []
    widget.notify = messages.append
    widget.commit()
    wait_idle(qtbot, widget)
    assert messages and "embedding was cancelled" in messages[-1], messages


@pytest.mark.parametrize("error", [MemoryError("no memory"), PermissionError("read-only")])
def test_a_failing_labels_write_is_a_message_not_a_crash(
    make_widget, qtbot, geometric_engine, monkeypatch, error
):
    viewer, widget = make_widget(engine=geometric_engine)
    viewer.add_image(np.random.default_rng(2).random((64, 80), dtype=np.float32), name="img")
    wait_idle(qtbot, widget)
    target = viewer.add_labels(np.zeros((64, 80), np.int32), name="mine")
    target.data[5:10, 5:10] = 7
    widget.target.value = target
    layer_named(viewer, "SAM points").add([30, 40])
    wait_idle(qtbot, widget)

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(target, "data_setitem", fail)
    shown = []
    monkeypatch.setattr("napari_sam.widget.messages.show_error", shown.append)
    widget.commit()  # must not raise
    wait_idle(qtbot, widget)
    assert shown and "could not be written" in shown[-1], shown
    assert widget.status.value.startswith("Error:")
    assert int(target.data.max()) == 7 and int((target.data == 7).sum()) == 25


def test_uint8_target_full_refuses_clearly_and_keeps_labels(make_widget, qtbot, geometric_engine):
    viewer, widget = make_widget(engine=geometric_engine)
    viewer.add_image(np.random.default_rng(3).random((64, 80), dtype=np.float32), name="img")
    wait_idle(qtbot, widget)
    data = np.zeros((64, 80), np.uint8)
    data[20:40, 30:50] = 255  # the clicked object already carries id 255
    target = viewer.add_labels(data, name="eight bit")
    widget.target.value = target
    widget.overwrite.value = True
    errors = []
    import napari_sam.widget.messages as messages

    real = messages.show_error
    messages.show_error = errors.append
    try:
        layer_named(viewer, "SAM points").add([30, 40])
        wait_idle(qtbot, widget)
        widget.commit()
        wait_idle(qtbot, widget)
    finally:
        messages.show_error = real
    assert errors and "int32" in errors[-1], errors
    np.testing.assert_array_equal(target.data, data)  # nothing erased, nothing wrapped


def test_progress_of_a_vit_h_sized_download_fits_the_bar(make_widget, qtbot, geometric_engine):
    """2.6e9 bytes do not fit a Qt progress bar's int: the bar counts thousandths."""
    _, widget = make_widget(engine=geometric_engine)
    task = Task("model", "loading model vit_h")
    task.done, task.total = 1_500_000_000, 2_564_550_879
    widget.runner._current["model"] = task  # as if a download were running
    try:
        widget.progress_panel.refresh()
        assert 0 <= widget.progress.value <= widget.progress.max == 1000
        assert widget.progress.value == round(1000 * task.done / task.total)
        assert "1431 of 2446 MiB" in widget.progress_text.value
    finally:
        widget.runner._current.clear()
        widget.progress_panel.refresh()
