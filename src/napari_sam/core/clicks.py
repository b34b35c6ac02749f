"""The click simulator and the interactive-segmentation benchmark (mIoU per click, NoC).

The field measures interactive tools with a simulated user (Xu et al. 2016; the protocol of
RITM, Sofiiuk et al. 2022, which the SAM paper follows): the first click goes to the centre
of the object, each next one to the centre of the largest error region of the current mask,

- **positive** where the object is missed (false negatives),
- **negative** where background is included (false positives),

"centre" and "largest" being measured by the distance transform: the click is the error
pixel farthest from the border of its error region (the image border counts as a border),
and it is positive when the deepest missed pixel lies strictly deeper than the deepest
included one (ties: negative, as in RITM). A pixel is never clicked twice; with no error
left, no click is made and the IoU stays. The masks are SAM's best candidate by predicted IoU,
as the widget shows them.

After each click the IoU with the reference is recorded; the benchmark reports

- **mIoU@k**: the mean IoU over objects after k clicks;
- **NoC@85 / NoC@90**: the mean number of clicks an object needs to reach IoU 0.85 / 0.90,
  counting **N + 1** for an object that never reaches it within the N clicks (so NoC is at
  most N + 1, and a model that fails is not rewarded by a small N).

With ``box_first`` the first interaction is the object's tight bounding box instead of a
click (it counts as interaction 1); the box stays in every later prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi

from . import refinement
from .errors import PromptError
from .metrics import bounding_box, iou
from .prompts import make_prompts

if TYPE_CHECKING:  # pragma: no cover
    from .embedding import ImageEmbedding
    from .engine import SamEngine

__all__ = [
    "THRESHOLDS",
    "Click",
    "ClickResults",
    "ObjectRun",
    "evaluate_image",
    "next_click",
    "reference_objects",
    "simulate_object",
]

#: The IoU thresholds of NoC@85 and NoC@90.
THRESHOLDS = (0.85, 0.90)


@dataclass(frozen=True)
class Click:
    """One simulated click, (row, col) in pixels; ``positive``: "this is the object"."""

    row: int
    col: int
    positive: bool

    def as_list(self) -> list[int]:
        """``[row, col, label]`` with label 1 (positive) or 0 (negative)."""
        return [self.row, self.col, int(self.positive)]


def _depth(region: np.ndarray, clicked: np.ndarray | None) -> np.ndarray:
    """Distance of each pixel of ``region`` to its border (the image border counts)."""
    dist = np.zeros(region.shape)
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    if len(rows) == 0:
        return dist
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # Only the region's box plus a ring of 1 (zeros: outside it, or past the image border):
    # the nearest zero of a pixel in the box is never farther than that ring.
    ring = np.pad(region, 1)[r0 : r1 + 2, c0 : c1 + 2]
    dist[r0:r1, c0:c1] = ndi.distance_transform_edt(ring)[1:-1, 1:-1]
    if clicked is not None:
        dist[clicked] = 0.0
    return dist


def next_click(
    prediction: np.ndarray, reference: np.ndarray, clicked: np.ndarray | None = None
) -> Click | None:
    """Where the simulated user clicks next: the centre of the largest error region.

    Parameters
    ----------
    prediction : ndarray
        Boolean (H, W) current mask (all False before the first click).
    reference : ndarray
        Boolean (H, W) mask of the object.
    clicked : ndarray, optional
        Boolean (H, W): pixels clicked already, never clicked again.

    Returns
    -------
    Click or None
        None when no pixel is wrong (or only clicked ones are).
    """
    prediction = np.asarray(prediction, bool)
    reference = np.asarray(reference, bool)
    missed = _depth(reference & ~prediction, clicked)
    extra = _depth(prediction & ~reference, clicked)
    m_max, e_max = float(missed.max(initial=0.0)), float(extra.max(initial=0.0))
    if m_max == 0.0 and e_max == 0.0:
        return None
    positive = m_max > e_max
    r, c = np.unravel_index(int(np.argmax(missed if positive else extra)), reference.shape)
    return Click(int(r), int(c), positive)


@dataclass
class ObjectRun:
    """One object's simulated session: the IoU after each interaction and the clicks."""

    ious: list[float] = field(default_factory=list)
    clicks: list[Click] = field(default_factory=list)


def simulate_object(
    engine: SamEngine,
    embedding: ImageEmbedding,
    reference: np.ndarray,
    *,
    clicks: int = 10,
    box_first: bool = False,
    refine: bool | None = None,
) -> ObjectRun:
    """Segment one object with simulated clicks; record the IoU after each.

    Parameters
    ----------
    engine : SamEngine
        Anything with ``predict`` as ``SamEngine.predict``.
    embedding : ImageEmbedding
        The image's embedding.
    reference : ndarray
        Boolean (H, W) mask of the object (not empty).
    clicks : int
        Interactions (the box, with ``box_first``, is the first).
    box_first : bool
        Start with the object's tight bounding box instead of a click.
    refine : bool, optional
        Pass the previous mask's logits with each follow-up click
        (:func:`napari_sam.core.refinement.predict`; default: its default).

    Returns
    -------
    ObjectRun
        ``len(ious) == clicks``.
    """
    reference = np.asarray(reference, bool)
    if not reference.any():
        raise PromptError("the reference object is empty")
    boxes = [bounding_box(reference)] if box_first else None
    shape = reference.shape
    run = ObjectRun()
    points: list[tuple[int, int]] = []
    labels: list[int] = []
    clicked = np.zeros(shape, bool)
    mask = np.zeros(shape, bool)
    previous = None
    for k in range(clicks):
        if not (box_first and k == 0):
            click = next_click(mask, reference, clicked)
            if click is None:  # nothing left to correct
                run.ious.append(run.ious[-1])
                continue
            run.clicks.append(click)
            clicked[click.row, click.col] = True
            points.append((click.row, click.col))
            labels.append(int(click.positive))
        prompts = make_prompts(points or None, labels or None, boxes, image_shape=shape)
        pred = refinement.predict(engine, embedding, prompts, previous, refine=refine)
        previous = refinement.remember(pred, prompts)
        mask = pred.mask()
        run.ious.append(iou(mask, reference))
    return run


def reference_objects(
    labels: np.ndarray,
    *,
    min_area: int = 20,
    max_objects: int | None = None,
    seed: int = 0,
) -> list[tuple[int, int]]:
    """The objects of reference labels to evaluate, as (plane, label id) pairs.

    Parameters
    ----------
    labels : ndarray
        Integer (H, W) labels, or (Z, H, W): every plane's objects are separate 2D objects
        (what a 2D model segments on a slice).
    min_area : int
        Ignore objects (on a plane) smaller than this many pixels.
    max_objects : int, optional
        Evaluate a random subset of this size (drawn with ``seed``, in a fixed order).
    seed : int
        For the subset.

    Returns
    -------
    list of (int, int)
        Sorted by plane, then id.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[np.newaxis]
    found = []
    for z, plane in enumerate(labels):
        ids, counts = np.unique(plane, return_counts=True)
        found += [(z, int(i)) for i, n in zip(ids, counts, strict=True) if i and n >= min_area]
    if max_objects is not None and len(found) > max_objects:
        pick = np.random.default_rng(seed).choice(len(found), max_objects, replace=False)
        found = [found[i] for i in sorted(pick.tolist())]
    return found


@dataclass
class ClickResults:
    """IoU per object and interaction, and the benchmark numbers made from them.

    Attributes
    ----------
    ious : ndarray
        float (n_objects, n_clicks).
    objects : list
        What each row is (e.g. ``(plane, label)``), for reports.
    clicks : list of list of Click
        The clicks of each object.
    """

    ious: np.ndarray
    objects: list[Any] = field(default_factory=list)
    clicks: list[list[Click]] = field(default_factory=list)

    @classmethod
    def from_runs(
        cls, runs: Sequence[ObjectRun], objects: Sequence[Any], clicks: int
    ) -> ClickResults:
        """Collect simulated sessions of ``clicks`` interactions each."""
        ious = np.array([r.ious for r in runs], float).reshape(len(runs), clicks)
        return cls(ious, list(objects), [list(r.clicks) for r in runs])

    @property
    def n_objects(self) -> int:
        """Number of objects evaluated."""
        return int(self.ious.shape[0])

    @property
    def n_clicks(self) -> int:
        """Interactions per object (N)."""
        return int(self.ious.shape[1])

    def miou(self) -> np.ndarray:
        """(N,) mean IoU over objects after each interaction (mIoU@1..N)."""
        return self.ious.mean(axis=0) if self.n_objects else np.full(self.n_clicks, np.nan)

    def clicks_to_reach(self, threshold: float) -> np.ndarray:
        """(n_objects,) interactions each object needs to reach ``threshold``; N + 1 if never."""
        reached = self.ious >= threshold
        first = np.argmax(reached, axis=1) + 1
        return np.where(reached.any(axis=1), first, self.n_clicks + 1)

    def noc(self, threshold: float) -> float:
        """Mean number of clicks to reach ``threshold`` (N + 1 for objects that never do)."""
        return float(self.clicks_to_reach(threshold).mean()) if self.n_objects else float("nan")

    def summary_line(self) -> str:
        """``mIoU@1=X mIoU@N=Y NoC@85=A NoC@90=B objects=K``."""
        m = self.miou()
        n85, n90 = (self.noc(t) for t in THRESHOLDS)
        return (
            f"mIoU@1={m[0]:.3f} mIoU@{self.n_clicks}={m[-1]:.3f} "
            f"NoC@85={n85:.2f} NoC@90={n90:.2f} objects={self.n_objects}"
        )

    def table(self) -> list[str]:
        """Lines of a table: interaction, mIoU, and the share of objects at IoU >= 0.85/0.90."""
        lines = ["click  mIoU   >=0.85  >=0.90"]
        m = self.miou()
        for k in range(self.n_clicks):
            shares = [float((self.ious[:, k] >= t).mean()) for t in THRESHOLDS]
            lines.append(f"{k + 1:>5}  {m[k]:.3f}  {shares[0]:6.1%}  {shares[1]:6.1%}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary with every object's IoUs and clicks."""
        return {
            "miou": [round(float(v), 6) for v in self.miou()],
            "noc85": self.noc(THRESHOLDS[0]),
            "noc90": self.noc(THRESHOLDS[1]),
            "objects": [
                {
                    "object": list(obj) if isinstance(obj, tuple) else obj,
                    "ious": [round(float(v), 6) for v in row],
                    "clicks": [c.as_list() for c in clicks],
                }
                for obj, row, clicks in zip(self.objects, self.ious, self.clicks, strict=True)
            ],
        }


def evaluate_image(
    engine: SamEngine,
    rgb: np.ndarray,
    labels: np.ndarray,
    *,
    clicks: int = 10,
    box_first: bool = False,
    refine: bool | None = None,
    min_area: int = 20,
    max_objects: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> ClickResults:
    """Simulate clicks on every (or a random subset of) reference object of one 2D image.

    Parameters
    ----------
    engine : SamEngine
    rgb : ndarray
        Prepared uint8 (H, W, 3) image.
    labels : ndarray
        Reference instance labels (H, W).
    clicks, box_first, refine
        See :func:`simulate_object`.
    min_area, max_objects, seed
        See :func:`reference_objects`.
    progress : callable, optional
        ``progress(done, total)`` after each object.

    Returns
    -------
    ClickResults
        Objects named by their label id.
    """
    if labels.shape != rgb.shape[:2]:
        raise PromptError(
            f"reference labels of shape {labels.shape} do not match the image "
            f"({rgb.shape[0]}x{rgb.shape[1]})"
        )
    objs = reference_objects(labels, min_area=min_area, max_objects=max_objects, seed=seed)
    emb = engine.embed(rgb)
    runs = []
    for done, (_, label) in enumerate(objs, start=1):
        runs.append(
            simulate_object(
                engine, emb, labels == label, clicks=clicks, box_first=box_first, refine=refine
            )
        )
        if progress is not None:
            progress(done, len(objs))
    return ClickResults.from_runs(runs, [label for _, label in objs], clicks)
