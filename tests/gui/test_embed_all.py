"""Embedding every slice of a stack in the background: the current slice first then outward,
clicks served first, cancel, embeddings on disk found by a later widget, no encoder run by a
propagation afterwards, lazily read stacks read plane by plane (Xvfb)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from gui_helpers import layer_named, wait_idle
from read_log import ReadLog

from napari_sam.core import engine as engine_module
from napari_sam.core.embedding import EmbeddingStore, image_key
from napari_sam.core.errors import Cancelled
from napari_sam.core.locations import embeddings_dir
from napari_sam.core.stack import slice_order
from napari_sam.core.synthetic import make_nuclei_volume

pytestmark = pytest.mark.gui


@pytest.fixture
def encoder_calls(monkeypatch):
    """Every run of the image encoder, as the key of the image it encoded.

    ``encoder_calls.slow = s`` makes each run take ``s`` seconds, polling its cancel check
    like the real encoder between blocks.
    """
    real = engine_module.compute_embedding
    calls: list[str] = []

    def spy(model, rgb, *, progress=None, cancel=None):
        t_end = time.monotonic() + spy.slow
        while time.monotonic() < t_end:
            if cancel is not None and cancel():
                raise Cancelled("embedding cancelled")
            time.sleep(0.02)
        emb = real(model, rgb, progress=progress, cancel=cancel)
        calls.append(emb.key)
        return emb

    spy.slow = 0.0
    spy.calls = calls
    monkeypatch.setattr(engine_module, "compute_embedding", spy)
    # Only embed-all embeds ahead: no prefetching of the neighbours of the current slice.
    monkeypatch.setattr("napari_sam.widget.plane_embedding.PREFETCH_REACH", 0)
    return spy


def _keys(widget, image) -> list[str]:
    norm = widget.normalization_settings(image)
    return [image_key(norm.apply(np.asarray(image.data[z]))) for z in range(image.data.shape[0])]


def _open(make_widget, qtbot, data, z, engine=None, **kwargs):
    viewer, widget = make_widget(engine=engine)
    image = viewer.add_image(data, name="stack", **kwargs)
    viewer.dims.current_step = (z, 0, 0)
    wait_idle(qtbot, widget, timeout=120_000)
    assert widget.embedding is not None, widget.status.value
    return viewer, widget, image


def _embed_all(qtbot, widget) -> None:
    widget.embed_all_slices()
    wait_idle(qtbot, widget, timeout=300_000)
    assert widget.status.value.startswith("Embedded "), widget.status.value


def test_all_slices_current_first_on_disk_for_the_next_widget_and_propagation(
    make_widget, qtbot, encoder_calls
):
    vol = make_nuclei_volume((14, 64, 64), n_objects=3, seed=1)  # 14: the least z
    # The widget loads the bundled tiny model itself (NAPARI_SAM_MODEL=tiny), with the store.
    _, widget, image = _open(make_widget, qtbot, vol.image, 2)
    keys = _keys(widget, image)
    _embed_all(qtbot, widget)
    assert [keys.index(k) for k in encoder_calls.calls] == slice_order(
        14, 2
    )  # [2, 3, 1, 4, 0, 5, ...]
    assert "Embedded 14/14 slices" in widget.status.value, widget.status.value
    store = EmbeddingStore(embeddings_dir())
    assert store.usage()[0] == 14
    assert widget.cache_panel.usage.value.startswith("14 stored")
    widget.close()

    # Another viewer and widget (a new session: fresh model, empty memory) on the same data.
    encoder_calls.calls.clear()
    viewer, widget, image = _open(make_widget, qtbot, vol.image, 6)
    _embed_all(qtbot, widget)
    assert encoder_calls.calls == [], "slices stored on disk were encoded again"
    assert "14 already stored" in widget.status.value
    # Propagation through the whole stack finds every embedding.
    ids, counts = np.unique(vol.labels[6][vol.labels[6] > 0], return_counts=True)
    rows, cols = np.nonzero(vol.labels[6] == ids[np.argmax(counts)])
    r0, c0, r1, c1 = rows.min(), cols.min(), rows.max(), cols.max()
    box = [[6, r0, c0], [6, r0, c1], [6, r1, c1], [6, r1, c0]]
    layer_named(viewer, "SAM boxes").add_rectangles(np.array(box, float))
    widget.volume_panel.min_score.value = 0.3
    wait_idle(qtbot, widget, timeout=120_000)
    widget.propagate()
    wait_idle(qtbot, widget, timeout=300_000)
    assert layer_named(viewer, "SAM labels").data.any()
    assert encoder_calls.calls == []


def test_another_model_does_not_reuse_stored_slices(
    make_widget, qtbot, encoder_calls, small_model
):
    from napari_sam.core.engine import SamEngine

    data = np.random.default_rng(0).random((4, 40, 48), dtype=np.float32)
    _, widget, _image = _open(make_widget, qtbot, data, 1)  # tiny model, stored on disk
    _embed_all(qtbot, widget)
    assert len(encoder_calls.calls) == 4
    store = EmbeddingStore(embeddings_dir())
    encoder_calls.calls.clear()
    other = SamEngine(small_model, store=store)  # another model, the same folder
    _, second, _ = _open(make_widget, qtbot, data, 1, engine=other)
    _embed_all(qtbot, second)
    assert len(encoder_calls.calls) == 4
    assert store.usage()[0] == 8


def test_a_click_during_embed_all_is_served_before_it_ends(
    make_widget, qtbot, encoder_calls, geometric_engine
):
    data = np.random.default_rng(1).random((10, 48, 64), dtype=np.float32)
    viewer, widget, image = _open(make_widget, qtbot, data, 5, engine=geometric_engine)
    encoder_calls.slow = 0.5  # seconds per slice: the click arrives mid-slice
    widget.embed_all_slices()
    task = widget.runner.current("embed_all")
    qtbot.waitUntil(lambda: task.done >= 2, timeout=30_000)
    assert "embedded" in widget.progress_text.value and "/10 slices" in widget.progress_text.value
    layer_named(viewer, "SAM points").add([5, 20, 30])
    qtbot.waitUntil(lambda: widget.preview is not None, timeout=30_000)
    assert widget.runner.current("embed_all") is task and task.done < task.total
    wait_idle(qtbot, widget, timeout=120_000)
    cache = geometric_engine.cache
    assert all(cache.get(geometric_engine.model_id, k) for k in _keys(widget, image))


def test_cancel_stops_embed_all(make_widget, qtbot, encoder_calls, geometric_engine):
    data = np.random.default_rng(2).random((12, 48, 64), dtype=np.float32)
    _, widget, _image = _open(make_widget, qtbot, data, 0, engine=geometric_engine)
    encoder_calls.slow = 0.3
    widget.volume_panel.embed_all_button.clicked.emit()
    assert widget.volume_panel.embed_all_button.text == "Stop embedding slices"
    task = widget.runner.current("embed_all")
    qtbot.waitUntil(lambda: task.done >= 2, timeout=30_000)
    widget.volume_panel.embed_all_button.clicked.emit()  # the same button stops it
    wait_idle(qtbot, widget)
    assert task.cancelled and 2 <= len(encoder_calls.calls) < 12
    assert "stopped" in widget.status.value and "/12 slices" in widget.status.value
    assert widget.volume_panel.embed_all_button.text == "Embed all slices"
    widget.embed_all_slices()  # again: the finished slices are not encoded twice
    qtbot.waitUntil(lambda: widget.runner.current("embed_all") is not None, timeout=5_000)
    widget.cancel()  # the widget's Cancel stops it too
    wait_idle(qtbot, widget)
    assert len(set(encoder_calls.calls)) == len(encoder_calls.calls) < 12


def test_changing_the_intensities_stops_embed_all(
    make_widget, qtbot, encoder_calls, geometric_engine
):
    data = np.random.default_rng(3).random((8, 40, 40), dtype=np.float32)
    _, widget, image = _open(make_widget, qtbot, data, 3, engine=geometric_engine)
    encoder_calls.slow = 0.3
    widget.embed_all_slices()
    task = widget.runner.current("embed_all")
    widget.viewer.dims.current_step = (4, 0, 0)  # moving along the stack: it carries on
    qtbot.waitUntil(lambda: widget.plane_embedder.key[2].index[0] == 4, timeout=10_000)
    assert not task.cancelled
    image.contrast_limits = (0.2, 0.8)  # other intensities: other embeddings
    qtbot.waitUntil(lambda: task.cancelled, timeout=10_000)
    wait_idle(qtbot, widget)


def test_a_lazy_stack_is_embedded_plane_by_plane(
    make_widget, qtbot, encoder_calls, geometric_engine, monkeypatch
):
    monkeypatch.setattr(  # the session's image hash reads every plane in its own worker
        "napari_sam.widget.session_panel.SessionPanel.image_changed", lambda self, image: None
    )
    shape = (5, 64, 80)
    lazy = ReadLog((np.arange(np.prod(shape)) % 1000).reshape(shape).astype(np.uint16))
    _, widget, _ = _open(
        make_widget, qtbot, lazy, 2, engine=geometric_engine, contrast_limits=(0, 1000)
    )
    _embed_all(qtbot, widget)
    assert len(encoder_calls.calls) == 5
    ours = [key for key, _, main in lazy.reads if not main]
    assert {key[0] for key in ours} == set(range(5))  # np.asarray(lazy) would have raised
    assert lazy.largest_read(main=False) <= shape[1] * shape[2]


def test_memory_only_when_the_disk_box_is_off_and_clear(make_widget, qtbot, encoder_calls):
    viewer, widget = make_widget()
    widget.cache_panel.on_disk.value = False
    viewer.add_image(np.random.default_rng(4).random((3, 32, 32), dtype=np.float32))
    wait_idle(qtbot, widget, timeout=120_000)
    _embed_all(qtbot, widget)
    assert len(encoder_calls.calls) == 3 and widget.engine.store is None
    store = EmbeddingStore(embeddings_dir())
    assert store.usage() == (0, 0) and widget.cache_panel.usage.value == "(memory only)"
    widget.cache_panel.on_disk.value = True  # from now on new embeddings are stored
    assert widget.engine.store is not None
    widget.image.value = viewer.add_image(
        np.random.default_rng(5).random((3, 32, 32), dtype=np.float32)
    )
    wait_idle(qtbot, widget, timeout=120_000)
    _embed_all(qtbot, widget)
    assert store.usage()[0] == 3 and widget.cache_panel.usage.value.startswith("3 stored")
    assert widget.cache_panel.clear() == 3
    assert store.usage() == (0, 0) and widget.cache_panel.usage.value.startswith("0 stored")


def test_slices_embedded_by_the_cli_are_used_by_the_widget(
    make_widget, qtbot, encoder_calls, tmp_path
):
    from volume_files import write_itk

    from napari_sam._reader import read_layers
    from napari_sam.cli import main

    vol = make_nuclei_volume((14, 48, 56), n_objects=3, seed=2)
    path = write_itk(tmp_path / "mri.nii.gz", (vol.image * 1000).astype(np.int16))
    assert main(["embed", str(path), "--model", "tiny", "--device", "cpu"]) == 0
    assert len(encoder_calls.calls) == 14
    encoder_calls.calls.clear()
    # napari-sam's reader opens it with the volume's percentiles as contrast limits: the
    # same intensity mapping as the CLI's, so the same prepared slices and keys.
    viewer, widget = make_widget()
    (data, kwargs, _), *_ = read_layers(str(path))
    image = viewer.add_image(data, **kwargs)
    assert (np.asarray(image.scale) < 0).any()  # mirrored axes, as NIfTI files often are
    wait_idle(qtbot, widget, timeout=120_000)
    _embed_all(qtbot, widget)
    assert encoder_calls.calls == [] and "14 already stored" in widget.status.value
    # Propagating needs no encoder either; its volume is positive on mirrored axes.
    z = widget.plane_embedder.plane.index[0]  # the slice shown
    ids, counts = np.unique(vol.labels[z][vol.labels[z] > 0], return_counts=True)
    rows, cols = np.nonzero(vol.labels[z] == ids[np.argmax(counts)])
    r0, c0, r1, c1 = rows.min(), cols.min(), rows.max(), cols.max()
    box = np.array([[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]], float)
    layer_named(viewer, "SAM boxes").add_rectangles(box)
    widget.volume_panel.min_score.value = 0.3
    wait_idle(qtbot, widget, timeout=120_000)
    widget.propagate()
    wait_idle(qtbot, widget, timeout=300_000)
    features = layer_named(viewer, "SAM labels").features
    assert encoder_calls.calls == [] and len(features) == 1
    spacing = np.abs(np.asarray(image.scale))
    assert features["volume"][0] == pytest.approx(features["voxels"][0] * spacing.prod())
