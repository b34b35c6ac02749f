"""Plain state and logic behind the napari widget: no napari, no Qt.

The widget (:mod:`napari_sam.widget`) only reads controls and layers, starts workers and
draws results; what to predict for a set of prompts, which candidate is shown, how it is
described and which results are stale lives here, where it can be tested without a display.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .core.commits import draw_objects
from .core.errors import Cancelled
from .core.prompts import NEGATIVE, POSITIVE, Prompts, make_prompts
from .core.region_mask import RegionMask

if TYPE_CHECKING:  # pragma: no cover
    from .core.embedding import ImageEmbedding
    from .core.engine import SamEngine
    from .core.mask_prompts import StartMask
    from .core.session_types import StepRecord

#: Keyboard shortcuts, in napari's notation. None of them is one of napari's default
#: shortcuts (viewer or layer keymaps) in napari 0.9, so the usual keys keep working.
KEYS: dict[str, str] = {
    "segment": "Shift-S",
    "commit": "Shift-C",
    "clear": "Shift-X",
    "toggle": "N",
    "candidate": "W",
    "edit": "Shift-E",
}


def key_text(action: str) -> str:
    """The shortcut of ``action`` as people write it, e.g. ``"Shift+S"``."""
    return KEYS[action].replace("-", "+")


# ------------------------------------------------------------------------------------------
# Staleness
# ------------------------------------------------------------------------------------------


class Generation:
    """A counter that makes late results recognisable.

    Every change that invalidates running work (another image, slice, model or
    normalisation) calls :meth:`bump`; work remembers the :attr:`value` it started with and
    its result is applied only if :meth:`is_current` still says so.
    """

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self.value = next(self._counter)

    def bump(self) -> int:
        """Invalidate everything started so far; return the new value."""
        self.value = next(self._counter)
        return self.value

    def is_current(self, value: int) -> bool:
        """Whether work started at ``value`` is still wanted."""
        return value == self.value


# ------------------------------------------------------------------------------------------
# Prompts -> objects -> predictions
# ------------------------------------------------------------------------------------------


def point_label(value: Any) -> int:
    """Read one point's ``label`` feature as 1 (positive) or 0 (negative).

    Accepts booleans, 1/0 and the strings ``positive``/``negative`` (also ``pos``/``neg``,
    ``+``/``-``, any case). A missing value (NaN, None) counts as positive, which is what a
    point added to a layer without a ``label`` feature means.

    Raises
    ------
    ValueError
        For anything else.
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return POSITIVE
    if isinstance(value, bool | np.bool_):
        return POSITIVE if value else NEGATIVE
    if isinstance(value, int | np.integer | float | np.floating):
        if value in (0, 1):
            return int(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("positive", "pos", "+", "1", "true", "foreground"):
            return POSITIVE
        if text in ("negative", "neg", "-", "0", "false", "background"):
            return NEGATIVE
    raise ValueError(f"point label {value!r} is neither positive nor negative")


@dataclass(frozen=True)
class PromptObject:
    """The prompts of one SAM call and, for each object it asks for, where it came from.

    A call with B boxes asks for B objects (the points are shared by all of them), so
    ``len(sources) == prompts.n_objects``. A call may carry a mask prompt (see
    :mod:`napari_sam._refine`): ``mask_input``, made from ``start`` refined through
    ``steps``, the earlier predictions it follows up (what a session records to replay it).
    """

    prompts: Prompts
    sources: tuple[str, ...]
    mask_input: np.ndarray | None = field(default=None, compare=False)
    steps: tuple[StepRecord, ...] = ()
    start: StartMask | None = field(default=None, compare=False)


def build_objects(
    points: np.ndarray,
    labels: np.ndarray,
    boxes: np.ndarray,
    *,
    per_point: bool,
    image_shape: tuple[int, int],
) -> list[PromptObject]:
    """Decide which SAM calls a set of prompts on one plane stands for.

    Parameters
    ----------
    points : ndarray
        (N, 2) (row, col) in the image plane.
    labels : ndarray
        (N,) 1 positive, 0 negative.
    boxes : ndarray
        (B, 4) (row0, col0, row1, col1).
    per_point : bool
        False: one object per box, all points shared by every box (SAM's own semantics), or
        one object from all points when there is no box. True: one object per positive point
        and one per box, every object sharing all negative points.
    image_shape : tuple of int
        (H, W) of the plane, to validate the prompts.

    Returns
    -------
    list of PromptObject
        Empty when there are no prompts at all.

    Raises
    ------
    napari_sam.core.errors.PromptError
        For prompts SAM cannot use (e.g. only negative points, a point off the image).
    """
    points = np.asarray(points, float).reshape(-1, 2)
    labels = np.asarray(labels, int).reshape(-1)
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    if len(points) == 0 and len(boxes) == 0:
        return []
    if not per_point:
        # One call: SAM batches the boxes, which is much faster than one call per box.
        prompts = make_prompts(points, labels, boxes, image_shape=image_shape)
        sources = tuple(f"box {i + 1}" for i in range(len(boxes))) or ("points",)
        return [PromptObject(prompts, sources)]
    negatives = points[labels == NEGATIVE]
    neg_labels = np.zeros(len(negatives), int)
    objects = []
    for i in np.flatnonzero(labels == POSITIVE):
        pts = np.concatenate([points[i : i + 1], negatives])
        lab = np.concatenate([[POSITIVE], neg_labels])
        objects.append(
            PromptObject(make_prompts(pts, lab, image_shape=image_shape), (f"point {i + 1}",))
        )
    if len(boxes):
        objects.append(
            PromptObject(
                make_prompts(negatives, neg_labels, boxes, image_shape=image_shape),
                tuple(f"box {i + 1}" for i in range(len(boxes))),
            )
        )
    if not objects:
        # Only negative points: let make_prompts say what is missing.
        make_prompts(points, labels, boxes, image_shape=image_shape)
    return objects


@dataclass
class ObjectPreview:
    """SAM's answer for one object: every candidate mask with its predicted IoU.

    Attributes
    ----------
    masks : list of RegionMask or ndarray
        K candidate masks (K = 3 for a single click, else 1), each inside its bounding box
        (:class:`~napari_sam.core.region_mask.RegionMask`) or as a boolean (H, W) array.
    scores : ndarray
        (K,) predicted IoU of each candidate.
    best : int
        Index of the candidate with the highest predicted IoU.
    source : str
        Which prompt(s) asked for it, e.g. ``"box 2"``.
    shape : tuple of int, optional
        (H, W) of the plane; needed when the masks are regions.
    logits : ndarray, optional
        float32 (K, 256, 256) low-resolution logits of the candidates (what a follow-up
        click refines); None where the prediction has none.
    """

    masks: list[RegionMask | np.ndarray]
    scores: np.ndarray
    best: int
    source: str
    shape: tuple[int, int] | None = None
    logits: np.ndarray | None = None

    @property
    def n_candidates(self) -> int:
        """K."""
        return len(self.masks)

    @property
    def plane_shape(self) -> tuple[int, int]:
        """(H, W) of the plane the masks belong to."""
        if self.shape is not None:
            return self.shape
        first = self.masks[0]
        if isinstance(first, RegionMask):
            raise ValueError("an ObjectPreview of regions needs its plane's shape")
        return first.shape[:2]

    def region(self, k: int) -> RegionMask:
        """Candidate ``k`` inside its bounding box."""
        m = self.masks[k]
        return m if isinstance(m, RegionMask) else RegionMask.from_mask(m)

    def full(self, k: int) -> np.ndarray:
        """Candidate ``k`` as a boolean (H, W) mask (made now, for regions)."""
        m = self.masks[k]
        return m.full(self.plane_shape) if isinstance(m, RegionMask) else np.asarray(m, bool)


def predict_objects(
    engine: SamEngine,
    embedding: ImageEmbedding,
    objects: list[PromptObject],
    cancel: Callable[[], bool] | None = None,
) -> list[ObjectPreview]:
    """Run the mask decoder for every object and upsample all candidates.

    Runs in a worker thread: every candidate is upsampled here, so that cycling through
    them later costs nothing. Candidates stay inside their bounding boxes
    (:meth:`~napari_sam.core.engine.Prediction.region`): three full-size masks per object
    would cost 48 MiB on a 4096 x 4096 plane, a nucleus' regions a few kilobytes. Full masks
    are made only for the chosen candidates, when committed. A call's ``mask_input`` goes
    to SAM as its mask prompt (:func:`napari_sam.core.refinement.predict`). ``embedding`` may
    be a :class:`~napari_sam.core.tiled_embedding.TiledEmbedding`: each object is then decoded
    in its tile(s) (:func:`~napari_sam.core.tiled_prompts.predict_tiled`), masks at full size,
    without mask prompts (low-resolution logits belong to one tile).
    """
    from ._tiles import is_tiled
    from .core.refinement import predict

    out = []
    shape = tuple(int(s) for s in embedding.original_size)
    tiled = is_tiled(embedding)  # a large image's tiles: each object decoded in its tile(s)
    for obj in objects:
        if cancel is not None and cancel():
            raise Cancelled("prediction cancelled")
        if tiled:
            from .core.tiled_prompts import predict_tiled

            pred = predict_tiled(engine, embedding, obj.prompts, cancel=cancel)
        else:
            pred = predict(engine, embedding, obj.prompts, refine=True, initial=obj.mask_input)
        for b, source in enumerate(obj.sources):
            out.append(
                ObjectPreview(
                    masks=[pred.region(b, c) for c in range(pred.n_candidates)],
                    scores=pred.scores[b].astype(np.float32),
                    best=int(pred.best[b]),
                    source=source,
                    shape=shape,  # type: ignore[arg-type]
                    logits=_candidate_logits(pred, b),
                )
            )
    return out


def _candidate_logits(pred: Any, b: int) -> np.ndarray | None:
    """(K, 256, 256) logits of object ``b``'s candidates; None for a prediction without."""
    if not hasattr(pred, "logits"):  # e.g. masks stitched from tiles
        return None
    return np.stack([pred.logits(b, c) for c in range(pred.n_candidates)]).astype(np.float32)


# ------------------------------------------------------------------------------------------
# The preview
# ------------------------------------------------------------------------------------------


@dataclass
class Preview:
    """Masks shown in the preview layer, and which candidate of each is chosen.

    Attributes
    ----------
    plane : object
        The image plane the masks belong to (a :class:`napari_sam._layers.Plane`).
    objects : list of ObjectPreview
    candidate : int or None
        None: every object shows its best candidate. Otherwise the candidate index shown for
        every object that has several (objects with one candidate always show it).
    calls : list of PromptObject
        The SAM calls the objects came from, in order (what a session records).
    """

    plane: Any
    objects: list[ObjectPreview]
    candidate: int | None = None
    calls: list[PromptObject] = field(default_factory=list)

    @property
    def n_candidates(self) -> int:
        """Most candidates any object has (1 or 3)."""
        return max((o.n_candidates for o in self.objects), default=0)

    def chosen(self, i: int) -> int:
        """Index of the candidate shown for object ``i``."""
        obj = self.objects[i]
        if self.candidate is None or obj.n_candidates == 1:
            return obj.best
        return self.candidate % obj.n_candidates

    def next_candidate(self) -> int | None:
        """Show the next candidate (wrapping around); return its index, None if only one."""
        if self.n_candidates < 2:
            return None
        first = next(o for o in self.objects if o.n_candidates > 1)
        current = first.best if self.candidate is None else self.candidate
        self.candidate = (current + 1) % first.n_candidates
        return self.candidate

    def masks(self) -> list[np.ndarray]:
        """The chosen mask of every object, as boolean (H, W) arrays (made on each call)."""
        return [o.full(self.chosen(i)) for i, o in enumerate(self.objects)]

    def regions(self) -> list[RegionMask]:
        """The chosen mask of every object, inside its bounding box."""
        return [o.region(self.chosen(i)) for i, o in enumerate(self.objects)]

    def scores(self) -> list[float]:
        """Predicted IoU of the chosen candidate of every object."""
        return [float(o.scores[self.chosen(i)]) for i, o in enumerate(self.objects)]

    def label_image(self) -> np.ndarray:
        """int32 (H, W): object i as label i + 1; smaller objects drawn over larger ones."""
        shape = self.objects[0].plane_shape if self.objects else (0, 0)
        return draw_objects(self.regions(), shape)

    def describe(self) -> str:
        """One line for the widget, e.g. ``"candidate 2/3 · predicted IoU 0.87 (best 0.93)"``."""
        if not self.objects:
            return "no object"
        scores = self.scores()
        if len(self.objects) == 1:
            obj = self.objects[0]
            k = self.chosen(0)
            if obj.n_candidates == 1:
                return f"1 object · predicted IoU {scores[0]:.2f}"
            which = "best" if k == obj.best else f"best {obj.scores[obj.best]:.2f}"
            return (
                f"candidate {k + 1}/{obj.n_candidates} · predicted IoU {scores[0]:.2f} ({which})"
            )
        shown = ", ".join(f"{s:.2f}" for s in scores[:8]) + (", …" if len(scores) > 8 else "")
        cand = (
            ""
            if self.n_candidates < 2
            else (
                " · best candidates"
                if self.candidate is None
                else f" · candidate {self.candidate + 1}/{self.n_candidates}"
            )
        )
        return f"{len(self.objects)} objects{cand} · predicted IoU {shown}"
