"""Propagate objects through a volume or a time series, slice by slice.

Prompts on one or more key slices of an object give its mask there; each next slice is then
prompted from the mask found on the slice before (its box, a point inside it, its
low-resolution logits as a mask prompt, or a combination: :data:`PROMPT_MODES`), outward
until the object ends. Key slices anchor the object: between two key slices each one
propagates toward the other and they meet half-way; beyond the outermost ones propagation
runs until a stopping rule fires (see :class:`PropagationParams`) or the volume ends.

Several objects are propagated at once, each with its own label id. The slicing axis is the
one of the :class:`~napari_sam.core.stack.SliceStack` (z, a row or column axis, or time:
the same id then follows an object through the frames).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .automatic import RegionMask
from .embedding import CancelCheck, ProgressCallback
from .errors import Cancelled, PromptError
from .metrics import interior_point
from .prompts import make_prompts
from .stack import SliceStack, object_table

if TYPE_CHECKING:  # pragma: no cover
    from .engine import SamEngine

#: How a slice is prompted from the mask found on its neighbour.
PROMPT_MODES = ("box", "points", "box+points", "box+mask", "points+mask", "box+points+mask")

#: Why propagation stopped on one side of an object (``stop_below``/``stop_above``).
STOP_REASONS = {
    "edge": "the volume ends",
    "key": "it met the part propagated from the next key slice",
    "empty": "the mask vanished or fell below min_area pixels",
    "score": "SAM's predicted IoU fell below min_score",
    "area": "the area changed by more than the allowed ratio from the slice before",
    "overlap": "the mask barely overlaps the one on the slice before",
    "none": "nothing to propagate: the key slice's mask is empty",
}


@dataclass(frozen=True)
class SlicePrompt:
    """Prompts for one object on one key slice.

    Coordinates are (row, col) in the slice's plane: the two axes other than the slicing
    axis, in array order (for axis 1 of a (z, y, x) volume: row = z, col = x).

    Attributes
    ----------
    index : int
        The key slice, along the slicing axis.
    box : tuple of 4 float, optional
        (row0, col0, row1, col1), inclusive corners.
    points : sequence of (row, col), optional
    point_labels : sequence of int, optional
        1 positive, 0 negative (all positive when omitted).
    """

    index: int
    box: tuple[float, float, float, float] | None = None
    points: Sequence[Sequence[float]] = ()
    point_labels: Sequence[int] | None = None


@dataclass(frozen=True)
class PropagationParams:
    """How slices are prompted and where an object is taken to end.

    Attributes
    ----------
    prompt : str
        One of :data:`PROMPT_MODES`: ``"box"`` the previous mask's bounding box (grown by
        ``box_margin``), ``"points"`` one positive point at its most interior pixel,
        ``"mask"`` its low-resolution logits as SAM's mask prompt; ``+`` combines them.
    box_margin : float
        Fraction of the box's height and width added on each side (objects grow from one
        slice to the next toward their middle).
    min_score : float
        Stop when SAM's predicted IoU of the new mask is below this. 0 disables the rule.
    min_area : int
        Stop when the new mask has fewer pixels.
    min_area_ratio, max_area_ratio : float
        Stop when the new mask's area divided by the previous one's is outside this range
        (the mask collapsed, or leaked into the surroundings).
    min_overlap : float
        Stop when ``|new & previous| / min(|new|, |previous|)`` is below this (SAM jumped to
        another object). 0 disables the rule.
    """

    prompt: str = "box"
    box_margin: float = 0.0
    min_score: float = 0.6
    min_area: int = 4
    min_area_ratio: float = 0.2
    max_area_ratio: float = 3.0
    min_overlap: float = 0.5

    def __post_init__(self) -> None:
        if self.prompt not in PROMPT_MODES:
            raise PromptError(
                f"unknown propagation prompt {self.prompt!r}: choose one of "
                + ", ".join(PROMPT_MODES)
            )
        if self.box_margin < 0 or self.min_area < 0:
            raise PromptError("box_margin and min_area must not be negative")
        if not 0.0 <= self.min_area_ratio <= 1.0 <= self.max_area_ratio:
            raise PromptError("the area ratios must satisfy 0 <= min_area_ratio <= 1 <= max")
        if not (0.0 <= self.min_score <= 1.0 and 0.0 <= self.min_overlap <= 1.0):
            raise PromptError("min_score and min_overlap must be between 0 and 1")


@dataclass
class PropagationResult:
    """Labels of the propagated objects and one row per object.

    Attributes
    ----------
    labels : ndarray
        int32 volume of the stack's shape; each object has its own id, 0 is background.
    table : dict of str to ndarray
        One row per object, in the order given: the columns of
        :func:`~napari_sam.core.stack.object_table` (``label``, ``slice_first``,
        ``slice_last``, ``n_slices``, ``voxels``, ``volume``), ``key_slices`` (how many) and
        ``stop_below``/``stop_above`` (a key of :data:`STOP_REASONS`).
    axis : int
        The slicing axis.
    slices : dict of str to ndarray
        One row per object and slice where a mask was kept, by object then slice:
        ``label``, ``slice``, ``area`` (pixels of SAM's mask, before overlaps with other
        objects are resolved), ``score`` (predicted IoU), ``overlap`` with the mask on the
        slice it was prompted from (NaN on key slices) and ``key`` (True on key slices).
    params : PropagationParams
    """

    labels: np.ndarray
    table: dict[str, np.ndarray]
    axis: int
    slices: dict[str, np.ndarray]
    params: PropagationParams = field(default_factory=PropagationParams)


@dataclass
class _Step:
    """The mask found on one slice: where it is, its score and its low-res logits."""

    region: RegionMask
    area: int
    score: float
    logits: np.ndarray | None
    overlap: float = np.nan


class _Walker:
    """Prompts slices of one stack from their neighbours' masks; counts work for progress."""

    def __init__(
        self,
        engine: SamEngine,
        stack: SliceStack,
        params: PropagationParams,
        progress: ProgressCallback | None,
        cancel: CancelCheck | None,
        total: int,
    ) -> None:
        self.engine, self.stack, self.params = engine, stack, params
        self.progress, self.cancel = progress, cancel
        self.done, self.total = 0, total
        self.want_logits = "mask" in params.prompt

    def tick(self, n: int = 1) -> None:
        self.done = min(self.done + n, self.total)
        if self.progress is not None:
            self.progress(self.done, self.total)

    def predict(self, index: int, **prompt: object) -> _Step | None:
        """Mask of slice ``index`` for the given prompts; None when it is empty."""
        if self.cancel is not None and self.cancel():
            raise Cancelled("propagation cancelled")
        emb = self.stack.embedding(self.engine, index, cancel=self.cancel)
        pred = self.engine.predict(emb, **prompt)  # type: ignore[arg-type]
        mask = pred.mask(0)
        rows = np.flatnonzero(mask.any(axis=1))
        if len(rows) == 0:
            return None
        cols = np.flatnonzero(mask.any(axis=0))
        sub = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        return _Step(
            region=RegionMask(int(rows[0]), int(cols[0]), sub),
            area=int(np.count_nonzero(sub)),
            score=pred.score(0),
            logits=pred.logits(0) if self.want_logits else None,
        )

    def prompts_from(self, prev: _Step) -> dict[str, object]:
        """Prompts for the next slice made from the mask found on this one."""
        mode, reg = self.params.prompt, prev.region
        out: dict[str, object] = {}
        h, w = reg.mask.shape
        if "box" in mode:
            m = self.params.box_margin
            out["boxes"] = [[reg.y0 - m * h, reg.x0 - m * w, reg.y0 + h - 1 + m * h,
                             reg.x0 + w - 1 + m * w]]  # fmt: skip
        if "points" in mode:
            r, c = interior_point(reg.mask)
            out["points"] = [[reg.y0 + r, reg.x0 + c]]
        if "mask" in mode:
            out["mask_input"] = prev.logits
        return out

    def stop_reason(self, prev: _Step, new: _Step | None) -> str | None:
        """Which stopping rule ``new`` breaks, if any."""
        p = self.params
        if new is None or new.area < max(p.min_area, 1):
            return "empty"
        if p.min_score > 0 and new.score < p.min_score:
            return "score"
        if not p.min_area_ratio <= new.area / prev.area <= p.max_area_ratio:
            return "area"
        new.overlap = _overlap(prev, new)
        if new.overlap < p.min_overlap:
            return "overlap"
        return None

    def chain(self, start: _Step, indices: range, end_reason: str) -> tuple[list, str]:
        """Walk ``indices`` from the mask ``start``; the steps kept and why it stopped."""
        steps: list[tuple[int, _Step]] = []
        prev = start
        for i in indices:
            new = self.predict(i, **self.prompts_from(prev))
            self.tick()
            reason = self.stop_reason(prev, new)
            if reason is not None:
                return steps, reason
            assert new is not None
            steps.append((i, new))
            prev = new
        return steps, end_reason


def objects_from_prompts(
    boxes: Sequence[Sequence[float]] = (),
    points: Sequence[Sequence[float]] = (),
) -> dict[int, list[SlicePrompt]]:
    """Objects from flat prompts given as the command line takes them.

    Parameters
    ----------
    boxes : sequence of (slice, row0, col0, row1, col1)
        Each box is one object, with ids 1, 2, ... in the order given.
    points : sequence of (slice, row, col) or (slice, row, col, label)
        ``label`` 1 (positive, the default) or 0 (negative). On a slice with boxes, the
        points are shared by its boxes (as in 2D, where points refine every box of the
        image); on a slice without a box, its points form one more object.

    Returns
    -------
    dict of int to list of SlicePrompt
        For :func:`propagate`. Every object has one key slice.
    """
    from collections import defaultdict

    by_slice: dict[int, list[tuple[float, float, int]]] = defaultdict(list)
    for p in points:
        if len(p) not in (3, 4):
            raise PromptError(f"a point is (slice, row, col[, label]), got {tuple(p)}")
        by_slice[_slice_index(p[0])].append((p[1], p[2], int(p[3]) if len(p) == 4 else 1))
    objects: dict[int, list[SlicePrompt]] = {}
    boxed = set()
    for b in boxes:
        if len(b) != 5:
            raise PromptError(f"a box is (slice, row0, col0, row1, col1), got {tuple(b)}")
        z = _slice_index(b[0])
        boxed.add(z)
        pts = by_slice.get(z, [])
        objects[len(objects) + 1] = [_slice_prompt(z, tuple(b[1:]), pts)]
    for z, pts in by_slice.items():
        if z not in boxed:
            objects[len(objects) + 1] = [_slice_prompt(z, None, pts)]
    return objects


def _slice_index(value: float) -> int:
    """A slice coordinate as an int; :class:`PromptError` unless it is a whole number."""
    if float(value) != int(value):
        raise PromptError(f"slice indices must be whole numbers, got {value}")
    return int(value)


def _slice_prompt(z: int, box: tuple | None, pts: list[tuple[float, float, int]]) -> SlicePrompt:
    return SlicePrompt(
        z,
        box=box,  # type: ignore[arg-type]
        points=tuple((r, c) for r, c, _ in pts),
        point_labels=tuple(k for _, _, k in pts) if pts else None,
    )


def _overlap(a: _Step, b: _Step) -> float:
    """``|a & b| / min(|a|, |b|)`` of two region masks."""
    ra, rb = a.region, b.region
    y0, x0 = max(ra.y0, rb.y0), max(ra.x0, rb.x0)
    y1 = min(ra.y0 + ra.mask.shape[0], rb.y0 + rb.mask.shape[0])
    x1 = min(ra.x0 + ra.mask.shape[1], rb.x0 + rb.mask.shape[1])
    if y1 <= y0 or x1 <= x0:
        return 0.0
    sa = ra.mask[y0 - ra.y0 : y1 - ra.y0, x0 - ra.x0 : x1 - ra.x0]
    sb = rb.mask[y0 - rb.y0 : y1 - rb.y0, x0 - rb.x0 : x1 - rb.x0]
    return int(np.count_nonzero(sa & sb)) / min(a.area, b.area)


def _check_objects(
    objects: Mapping[int, Sequence[SlicePrompt]], stack: SliceStack
) -> dict[int, list[SlicePrompt]]:
    """Validated objects: positive unique ids, key slices that exist, one prompt per slice."""
    if not objects:
        raise PromptError("nothing to propagate: give prompts for at least one object")
    checked: dict[int, list[SlicePrompt]] = {}
    for label, keys in objects.items():
        if isinstance(label, bool) or not isinstance(label, int | np.integer) or label < 1:
            raise PromptError(f"object ids must be positive integers, got {label!r}")
        keys = sorted(keys, key=lambda k: k.index)
        if not keys:
            raise PromptError(f"object {label} has no prompts")
        for k in keys:
            if isinstance(k.index, bool) or not isinstance(k.index, int | np.integer):
                raise PromptError(
                    f"object {label}: slice indices must be integers, not {k.index!r}"
                )
            if not 0 <= k.index < stack.n_slices:
                raise PromptError(
                    f"object {label}: slice {k.index} does not exist along axis "
                    f"{stack.axis} (0..{stack.n_slices - 1})"
                )
        indices = [k.index for k in keys]
        if len(set(indices)) != len(indices):
            raise PromptError(
                f"object {label} has two prompts on one slice: merge them into one SlicePrompt"
            )
        checked[int(label)] = keys
    return checked


def _key_step(walker: _Walker, label: int, key: SlicePrompt) -> _Step | None:
    """The mask of an object on one of its key slices."""
    try:
        prompts = make_prompts(
            key.points if len(key.points) else None,
            key.point_labels,
            None if key.box is None else [key.box],
            image_shape=walker.stack.plane_shape,
        )
    except PromptError as err:
        raise PromptError(f"object {label}, slice {key.index}: {err}") from None
    walker.tick()
    return walker.predict(key.index, prompts=prompts)


def _propagate_object(
    walker: _Walker, label: int, keys: list[SlicePrompt]
) -> tuple[list[tuple[int, _Step]], list[tuple[int, _Step]], str, str]:
    """Key-slice steps, propagated steps, and the stop reasons below and above."""
    n = walker.stack.n_slices
    anchors = [(k.index, _key_step(walker, label, k)) for k in keys]
    propagated: list[tuple[int, _Step]] = []
    # Between two key slices each propagates toward the other, up to the half-way slice.
    for (a, step_a), (b, step_b) in itertools.pairwise(anchors):
        mid = (a + b) // 2
        for start, indices in ((step_a, range(a + 1, mid + 1)), (step_b, range(b - 1, mid, -1))):
            if start is not None:
                propagated += walker.chain(start, indices, "key")[0]
    first, first_step = anchors[0]
    last, last_step = anchors[-1]
    below = above = "none"
    if first_step is not None:
        steps, below = walker.chain(first_step, range(first - 1, -1, -1), "edge")
        propagated += steps
    if last_step is not None:
        steps, above = walker.chain(last_step, range(last + 1, n), "edge")
        propagated += steps
    return [(i, s) for i, s in anchors if s is not None], propagated, below, above


def propagate(
    engine: SamEngine,
    stack: SliceStack,
    objects: Mapping[int, Sequence[SlicePrompt]],
    params: PropagationParams | None = None,
    *,
    spacing: Sequence[float] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> PropagationResult:
    """Segment objects through a volume from prompts on their key slices.

    Parameters
    ----------
    engine : SamEngine
    stack : SliceStack
        The volume's slices along the propagation (or time) axis. Embeddings are taken
        from the engine's caches, computed when missing (see
        :func:`~napari_sam.core.stack.embed_slices` to compute them all beforehand).
    objects : mapping of int to sequence of SlicePrompt
        Label id -> prompts on one or more key slices of that object.
    params : PropagationParams, optional
        Prompting and stopping rules (defaults: the best measured, see docs/volumes.md).
    spacing : sequence of 3 float, optional
        Voxel size along each axis of the volume, for the ``volume`` column.
    progress : callable, optional
        ``progress(done, total)`` after each slice.
    cancel : callable, optional
        Polled before each slice; :class:`~napari_sam.core.errors.Cancelled` is raised
        when it returns True (no labels are returned then).

    Returns
    -------
    PropagationResult

    Notes
    -----
    Where two objects' masks overlap on a slice, the pixels go to the object whose nearest
    key slice is closest to that slice (key slices first; on a tie the object listed
    first): a chain that ran past its object's end into a neighbour loses to the
    neighbour's own masks.
    """
    params = params or PropagationParams()
    checked = _check_objects(objects, stack)
    walker = _Walker(engine, stack, params, progress, cancel, len(checked) * stack.n_slices)
    found = {}
    for k, (label, keys) in enumerate(checked.items()):
        found[label] = _propagate_object(walker, label, keys)
        walker.tick((k + 1) * stack.n_slices - walker.done)  # slices it did not reach
    labels = _paint(stack, found)
    ids = list(found)
    table = object_table(labels, stack.axis, spacing, ids=ids)
    table["key_slices"] = np.array([len(checked[i]) for i in ids], np.int64)
    table["stop_below"] = np.array([found[i][2] for i in ids], dtype=object)
    table["stop_above"] = np.array([found[i][3] for i in ids], dtype=object)
    return PropagationResult(
        labels=labels, table=table, axis=stack.axis, slices=_slice_rows(found), params=params
    )


def _paint(stack: SliceStack, found: dict[int, tuple]) -> np.ndarray:
    """The label volume; a pixel claimed by several objects goes to the nearest key slice.

    Masks are painted onto background only, in order of their slice's distance from the
    object's nearest key slice (key slices first; ties: the object listed first). A chain
    that ran past its object's end into a neighbour stacked above or below it thus loses
    those pixels to the neighbour's own, better anchored masks.
    """
    masks = []
    for order, (label, (keys, propagated, _, _)) in enumerate(found.items()):
        anchors = np.array([i for i, _ in keys])
        for i, step in keys + propagated:
            dist = int(np.abs(anchors - i).min()) if len(anchors) else 0
            masks.append((dist, order, i, label, step.region))
    labels = np.zeros(stack.shape, np.int32)
    planes = stack.planes(labels)
    for _, _, i, label, reg in sorted(masks, key=lambda m: m[:3]):
        h, w = reg.mask.shape
        view = planes[i, reg.y0 : reg.y0 + h, reg.x0 : reg.x0 + w]
        view[reg.mask & (view == 0)] = label
    return labels


def _slice_rows(found: dict[int, tuple]) -> dict[str, np.ndarray]:
    """The per-slice rows of :attr:`PropagationResult.slices`."""
    rows = []
    for label, (keys, propagated, _, _) in found.items():
        steps = [(i, s, True) for i, s in keys] + [(i, s, False) for i, s in propagated]
        rows += [
            (label, i, s.area, s.score, s.overlap, k)
            for i, s, k in sorted(steps, key=lambda t: t[0])
        ]
    cols = list(zip(*rows, strict=True)) if rows else [()] * 6
    return {
        "label": np.array(cols[0], np.int32),
        "slice": np.array(cols[1], np.int64),
        "area": np.array(cols[2], np.int64),
        "score": np.array(cols[3], np.float32),
        "overlap": np.array(cols[4], np.float32),
        "key": np.array(cols[5], bool),
    }
