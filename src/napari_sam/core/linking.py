"""3D and time automatic segmentation: per-slice instances linked into objects or tracks.

Every slice (z plane or time frame) is segmented on its own by
:func:`~napari_sam.core.automatic.segment_automatically`; :func:`link_slices` then gives the
pieces of one object the same id across slices by overlap matching:

- Slices are visited in order. Each instance of slice ``z`` is compared with the objects
  present on slice ``z - 1`` by intersection over union (IoU) of their 2D masks.
- Pairs with IoU >= ``min_iou`` are matched one-to-one, the highest IoU first (greedy); a
  matched instance takes the object's id. When an object splits, the larger overlap
  continues it and the other part starts a new object; when two merge, the merged instance
  continues the one it overlaps most.
- With ``max_gap`` > 0, an instance left unmatched is compared, in the same way, with
  objects last seen 2, 3, ... ``max_gap + 1`` slices before (an object missed on a slice,
  or a cell that blinked in a frame, keeps its id).
- Instances left unmatched start new objects. Objects spanning fewer than ``min_extent``
  slices (first to last, inclusive) are removed, and ids are renumbered 1..N in order of
  first appearance (on one slice: in raster order of their first pixel).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .automatic import AutoParams
from .embedding import CancelCheck, ProgressCallback
from .errors import Cancelled, NapariSamError
from .stack import SliceStack, object_table

if TYPE_CHECKING:  # pragma: no cover
    from .engine import SamEngine


@dataclass(frozen=True)
class LinkParams:
    """How per-slice instances are linked across slices (see the module documentation).

    Attributes
    ----------
    min_iou : float
        Least 2D IoU between an instance and an object on a previous slice to link them.
    min_extent : int
        Objects spanning fewer slices are dropped (1 keeps all).
    max_gap : int
        Slices an object may be missing from and still be continued.
    """

    min_iou: float = 0.3
    min_extent: int = 2
    max_gap: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.min_iou <= 1.0:
            raise NapariSamError("min_iou must be above 0 and at most 1")
        if self.min_extent < 1 or self.max_gap < 0:
            raise NapariSamError("min_extent must be at least 1 and max_gap not negative")


def _match(
    previous: np.ndarray, current: np.ndarray, min_iou: float, exclude: set[int]
) -> list[tuple[int, int]]:
    """One-to-one (object id, instance id) pairs with IoU >= ``min_iou``, best first.

    ``previous`` holds object ids, ``current`` instance ids (0 = background, and ids in
    ``exclude`` are ignored on the ``previous`` side).
    """
    both = (previous > 0) & (current > 0)
    if not both.any():
        return []
    prev_ids, prev_area = np.unique(previous[previous > 0], return_counts=True)
    cur_ids, cur_area = np.unique(current[current > 0], return_counts=True)
    base = int(cur_ids[-1]) + 1
    codes, inter = np.unique(
        previous[both].astype(np.int64) * base + current[both], return_counts=True
    )
    pairs = np.stack([codes // base, codes % base])
    a = prev_area[np.searchsorted(prev_ids, pairs[0])]
    b = cur_area[np.searchsorted(cur_ids, pairs[1])]
    iou = inter / (a + b - inter)
    matched, used_prev, used_cur = [], set(exclude), set()
    for k in np.argsort(-iou, kind="stable"):
        p, c = int(pairs[0, k]), int(pairs[1, k])
        if iou[k] < min_iou:
            break
        if p in used_prev or c in used_cur:
            continue
        matched.append((p, c))
        used_prev.add(p)
        used_cur.add(c)
    return matched


def link_slices(
    slice_labels: np.ndarray,
    axis: int = 0,
    params: LinkParams | None = None,
) -> np.ndarray:
    """Give the instances of each slice ids that are consistent across slices.

    Parameters
    ----------
    slice_labels : ndarray
        int (D0, D1, D2): each slice along ``axis`` labelled on its own (ids need not agree
        between slices; 0 is background).
    axis : int
        The slicing (z or time) axis.
    params : LinkParams, optional

    Returns
    -------
    ndarray
        int32 labels of the same shape: one id per 3D object (or track), 1..N in order of
        first appearance.
    """
    params = params or LinkParams()
    if slice_labels.ndim != 3:
        raise NapariSamError(f"expected a 3D label volume, got shape {slice_labels.shape}")
    src = np.moveaxis(slice_labels, axis, 0)
    out = np.zeros(slice_labels.shape, np.int32)
    dst = np.moveaxis(out, axis, 0)
    first: list[int] = [0]  # first slice of each object id (index 0 unused)
    last: list[int] = [0]
    for z in range(src.shape[0]):
        current = src[z]
        assigned: dict[int, int] = {}  # instance id -> object id
        recent: set[int] = set()  # objects seen after slice z - 1 - gap: not to match again
        for gap in range(min(params.max_gap, z - 1) + 1 if z else 0):
            free = current.copy() if assigned else current
            if assigned:
                free[np.isin(free, list(assigned))] = 0
            for obj, inst in _match(dst[z - 1 - gap], free, params.min_iou, recent):
                assigned[inst] = obj
            recent |= {int(v) for v in np.unique(dst[z - 1 - gap]) if v}
        # New objects of one slice are numbered in raster order of their first pixel.
        ids, at = np.unique(current, return_index=True)
        ids = [int(v) for v in ids[np.argsort(at, kind="stable")] if v]
        lut = np.zeros(int(current.max(initial=0)) + 1, np.int32)
        for inst in ids:
            if inst not in assigned:
                assigned[inst] = len(first)
                first.append(z)
                last.append(z)
            lut[inst] = assigned[inst]
            last[assigned[inst]] = z
        if ids:
            dst[z] = lut[current]
    extent = np.array(last) - np.array(first) + 1
    keep = extent >= params.min_extent
    keep[0] = False
    renumber = np.zeros(len(first), np.int32)
    renumber[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return renumber[out]


@dataclass
class VolumeSegmentation:
    """Result of 3D / time automatic segmentation.

    Attributes
    ----------
    labels : ndarray
        int32 labels of the volume's shape; one id per object (or track) across slices.
    table : dict of str to ndarray
        One row per object: the columns of :func:`~napari_sam.core.stack.object_table`.
    axis : int
        The slicing axis.
    params : AutoParams
        Per-slice automatic segmentation settings.
    link : LinkParams
        Linking settings.
    """

    labels: np.ndarray
    table: dict[str, np.ndarray]
    axis: int
    params: AutoParams = field(default_factory=AutoParams)
    link: LinkParams = field(default_factory=LinkParams)


def segment_volume_automatically(
    engine: SamEngine,
    stack: SliceStack,
    params: AutoParams | None = None,
    link: LinkParams | None = None,
    *,
    spacing: Sequence[float] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> VolumeSegmentation:
    """Automatic segmentation of every slice, linked into 3D objects or tracks.

    Parameters
    ----------
    engine : SamEngine
    stack : SliceStack
        The slices (z planes or time frames); embeddings come from the engine's caches.
    params : AutoParams, optional
        Per-slice automatic segmentation (SAM's defaults).
    link : LinkParams, optional
        Linking across slices (see :mod:`napari_sam.core.linking`).
    spacing : sequence of 3 float, optional
        Voxel size, for the table's ``volume`` column.
    progress : callable, optional
        ``progress(done, total)`` after each slice.
    cancel : callable, optional
        Polled during each slice's segmentation; :class:`Cancelled` is raised when it
        returns True.

    Returns
    -------
    VolumeSegmentation
    """
    from .automatic import segment_automatically

    params = params or AutoParams()
    link = link or LinkParams()
    per_slice = np.zeros(stack.shape, np.int32)
    planes = stack.planes(per_slice)
    for i in range(stack.n_slices):
        if cancel is not None and cancel():
            raise Cancelled("automatic segmentation cancelled")
        planes[i] = segment_automatically(engine, stack.rgb(i), params, cancel=cancel).labels
        if progress is not None:
            progress(i + 1, stack.n_slices)
    labels = link_slices(per_slice, stack.axis, link)
    del per_slice, planes
    return VolumeSegmentation(
        labels=labels,
        table=object_table(labels, stack.axis, spacing),
        axis=stack.axis,
        params=params,
        link=link,
    )
