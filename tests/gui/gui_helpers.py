"""Helpers shared by the widget tests: a decoder with known answers, waiting, geometry."""

from __future__ import annotations

import threading

import numpy as np

from napari_sam.core.engine import SamEngine
from napari_sam.core.prompts import Prompts
from napari_sam.core.region_mask import RegionMask

#: Candidate radii and predicted IoUs of the geometric decoder's answer to a single click.
CLICK_RADII = (4, 8, 14)
CLICK_SCORES = (0.6, 0.9, 0.7)
#: Radius of the disc drawn around each positive point when there are several points.
POINT_RADIUS = 6


class _GeometricPrediction:
    """What :func:`napari_sam._session.predict_objects` reads from a Prediction."""

    def __init__(self, masks: list[list[np.ndarray]], scores: np.ndarray) -> None:
        self._masks = masks
        self.scores = scores
        self.best = scores.argmax(axis=1)

    @property
    def n_candidates(self) -> int:
        return self.scores.shape[1]

    def mask(self, obj: int = 0, candidate: int | None = None) -> np.ndarray:
        k = int(self.best[obj]) if candidate is None else candidate
        return self._masks[obj][k]

    def region(self, obj: int = 0, candidate: int | None = None) -> RegionMask:
        return RegionMask.from_mask(self.mask(obj, candidate))


def disc(shape, centre, radius) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def box_mask(shape, box) -> np.ndarray:
    r0, c0, r1, c1 = (round(v) for v in box)
    m = np.zeros(shape, bool)
    m[r0 : r1 + 1, c0 : c1 + 1] = True
    return m


class GeometricEngine(SamEngine):
    """A real embedding (so caching and workers are real) with an exactly known decoder.

    ``gate``: when set to a ``threading.Event``, the next ``embed`` call waits for it (and
    ignores cancellation), so that a test can change things while an embedding is late.
    ``gate_entered`` is set once that call is waiting: a test must wait for it before it
    starts other embeddings, or one of those may take the gate instead.
    """

    gate: threading.Event | None = None
    late_key: str | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._gate_lock = threading.Lock()
        self.gate_entered = threading.Event()

    def embed(self, rgb, *, progress=None, cancel=None, **kwargs):
        with self._gate_lock:  # exactly one call takes the gate
            gate, self.gate = self.gate, None
        if gate is not None:
            self.gate_entered.set()
            assert gate.wait(30), "test gate never opened"
            emb = super().embed(rgb, **kwargs)  # a late result, not a cancelled one
            self.late_key = emb.key
            return emb
        return super().embed(rgb, progress=progress, cancel=cancel, **kwargs)

    def predict(self, embedding, prompts: Prompts | None = None, **_):
        assert prompts is not None
        shape = embedding.original_size
        pos = prompts.points[prompts.point_labels == 1]
        neg = prompts.points[prompts.point_labels == 0]
        if prompts.is_single_click:
            masks = [[disc(shape, pos[0], r) for r in CLICK_RADII]]
            return _GeometricPrediction(masks, np.array([CLICK_SCORES], np.float32))
        if len(prompts.boxes):
            masks = [[box_mask(shape, b)] for b in prompts.boxes]
        else:
            m = np.zeros(shape, bool)
            for p in pos:
                m |= disc(shape, p, POINT_RADIUS)
            masks = [[m]]
        for obj in masks:
            for p in neg:
                obj[0] &= ~disc(shape, p, POINT_RADIUS)
        scores = np.full((len(masks), 1), 0.8, np.float32)
        return _GeometricPrediction(masks, scores)


def wait_idle(qtbot, widget, timeout: int = 60_000) -> None:
    """Wait until the widget has no work running or scheduled."""
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def layer_named(viewer, name: str):
    matches = [layer for layer in viewer.layers if layer.name == name]
    assert matches, f"no layer {name!r} in {[layer.name for layer in viewer.layers]}"
    return matches[0]


def press(viewer, key: str) -> None:
    """Run what ``key`` is bound to on the viewer (as napari's key handler would)."""
    from napari.utils.key_bindings import coerce_keybinding

    viewer.keymap[coerce_keybinding(key)](viewer)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def inside_point(mask: np.ndarray) -> tuple[int, int]:
    """The pixel of ``mask`` farthest from its border (surely inside the object)."""
    from scipy import ndimage as ndi

    dist = ndi.distance_transform_edt(mask)
    r, c = np.unravel_index(np.argmax(dist), mask.shape)
    return int(r), int(c)


def record_plane_reads(monkeypatch) -> list[tuple[int, int]]:
    """The (rows, cols) of every region read through ``PlaneView`` from now on (what a lazy
    tiled plane reads from the layer's data)."""
    from napari_sam.core.lazy_arrays import PlaneView

    reads: list[tuple[int, int]] = []
    original = PlaneView.__getitem__

    def recording(self, key):
        out = original(self, key)
        reads.append(out.shape[:2])
        return out

    monkeypatch.setattr(PlaneView, "__getitem__", recording)
    return reads


def object_click(labels: np.ndarray, rows: slice, cols: slice) -> list[float]:
    """A click at the median pixel of the first object found in ``labels[rows, cols]``."""
    ids = np.unique(labels[rows, cols])
    rr, cc = np.nonzero(labels == ids[ids > 0][0])
    return [float(np.median(rr)), float(np.median(cc))]
