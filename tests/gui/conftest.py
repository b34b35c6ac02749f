"""Fixtures for the napari widget tests (run under Xvfb: napari's canvas needs OpenGL).

Engines:

- ``geometric_engine``: a real (random-weight, small) image encoder with a *geometric*
  decoder: a click gives discs around it, a box gives the filled box. The masks are known
  exactly, which makes coordinate mapping, commits and undo checkable to the pixel.
- ``tiny_engine``: the bundled trained tiny model, for tests that judge mask quality and for
  automatic segmentation.
"""

from __future__ import annotations

import pytest

# segment-anything imports torchvision, which imports triton; triton must be loaded before
# the OpenGL driver brings its own LLVM into the process (the first napari canvas does), or
# the interpreter crashes. See napari_sam._compat.
import segment_anything  # noqa: F401
from gui_helpers import GeometricEngine


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch, tmp_path_factory):
    """Widgets start with the bundled tiny model and never see the user's cache."""
    monkeypatch.setenv("NAPARI_SAM_MODEL", "tiny")
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("NAPARI_SAM_BASE_URL", "http://127.0.0.1:9/nothing-here")


@pytest.fixture
def geometric_engine(small_model) -> GeometricEngine:
    return GeometricEngine(small_model)


@pytest.fixture
def make_widget(make_napari_viewer_proxy, qtbot):
    """``make_widget(engine=None, **viewer_kwargs) -> (viewer, widget)``; widgets are closed
    (keys unbound, workers stopped) at the end of the test."""
    from napari_sam.widget import SamWidget

    made = []

    def factory(engine=None, viewer=None):
        viewer = viewer if viewer is not None else make_napari_viewer_proxy()
        widget = SamWidget(viewer, engine=engine)
        made.append(widget)
        return viewer, widget

    yield factory
    for widget in made:
        if not widget.closed:
            widget.cancel()
            qtbot.waitUntil(lambda w=widget: not w.runner.busy, timeout=30_000)
            widget.close()


@pytest.fixture
def notes():
    """Every napari notification shown during the test, as (severity, message)."""
    from napari.utils.notifications import notification_manager

    got: list[tuple[str, str]] = []

    def record(n):
        got.append((str(n.severity), str(n.message)))

    notification_manager.notification_ready.connect(record)
    yield got
    notification_manager.notification_ready.disconnect(record)
