"""Planes next to the current one are embedded ahead of need; clicks are never kept waiting
by it (any other torch job cancels it)."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
from gui_helpers import GeometricEngine, layer_named, wait_idle

from napari_sam.core.embedding import image_key
from napari_sam.core.errors import Cancelled

pytestmark = pytest.mark.gui


def _key(widget, image, z):
    rgb = widget.normalization_settings(image).apply(image.data[z])
    return image_key(rgb)


def test_neighbouring_slices_are_embedded_ahead_and_moving_is_instant(
    make_widget, qtbot, geometric_engine
):
    viewer, widget = make_widget(engine=geometric_engine)
    image = viewer.add_image(
        np.random.default_rng(0).random((6, 48, 64), dtype=np.float32), name="stack"
    )
    viewer.dims.current_step = (2, 0, 0)
    wait_idle(qtbot, widget)
    assert widget.plane_embedder.prefetched == 4  # slices 3, 1, 4, 0
    cache = geometric_engine.cache
    for z in (0, 1, 3, 4):
        assert cache.get(geometric_engine.model_id, _key(widget, image, z)) is not None, z
    assert cache.get(geometric_engine.model_id, _key(widget, image, 5)) is None

    viewer.dims.current_step = (3, 0, 0)  # one slice on: no encoder run
    wait_idle(qtbot, widget)
    assert "embedding cached" in widget.status.value


def test_a_click_cancels_prefetching(make_widget, qtbot, geometric_engine):
    viewer, widget = make_widget(engine=geometric_engine)
    viewer.add_image(np.random.default_rng(1).random((9, 48, 64), dtype=np.float32), name="s")
    qtbot.waitUntil(lambda: widget.runner.current("prefetch") is not None, timeout=30_000)
    prefetch = widget.runner.current("prefetch")
    z = viewer.dims.current_step[0]
    layer_named(viewer, "SAM points").add([z, 20, 30])
    qtbot.waitUntil(lambda: prefetch.cancelled, timeout=10_000)
    wait_idle(qtbot, widget)
    assert widget.preview is not None


class SlowEncoder(GeometricEngine):
    """An encoder that takes about 1.5 s (cancellable) and counts how often it started."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.started: Counter = Counter()

    def embed(self, rgb, *, progress=None, cancel=None, **kwargs):
        if self.cached_embedding(rgb) is None:
            self.started[image_key(rgb)] += 1
            for _ in range(30):
                if cancel is not None and cancel():
                    raise Cancelled("embedding cancelled")
                time.sleep(0.05)
        return super().embed(rgb, progress=progress, cancel=cancel, **kwargs)


def test_moving_onto_the_plane_being_prefetched_waits_for_it(make_widget, qtbot, small_model):
    engine = SlowEncoder(small_model)
    viewer, widget = make_widget(engine=engine)
    image = viewer.add_image(
        np.random.default_rng(2).random((6, 48, 64), dtype=np.float32), name="stack"
    )
    viewer.dims.current_step = (2, 0, 0)
    next_key = _key(widget, image, 3)  # the first plane prefetched from slice 2
    qtbot.waitUntil(lambda: engine.started[next_key] == 1, timeout=60_000)
    assert widget.runner.current("prefetch") is not None

    viewer.dims.current_step = (3, 0, 0)  # while slice 3 is in the encoder
    wait_idle(qtbot, widget, timeout=120_000)
    assert engine.started[next_key] == 1  # computed once, not cancelled and restarted
    assert widget.plane_embedder.waited_for_prefetch == 1
    assert widget.embedding is not None and widget.plane_embedder.plane.index[0] == 3
    assert widget.preview is None  # nothing asked for
