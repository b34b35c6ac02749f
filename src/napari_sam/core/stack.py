"""A volume or time series seen as a stack of 2D slices along one axis.

:class:`SliceStack` gives each slice as SAM's uint8 RGB input and its embedding (through the
engine's caches), along any axis of a 3D array: z for a z-stack or a scan's axial slices,
a row or column axis for coronal and sagittal views, t for a time-lapse. The two axes left
are the displayed plane, in their array order: a plane's (row, col) are the first and the
second of them. :func:`embed_slices` computes the embeddings of all slices, the current
slice first and then outward from it. :func:`object_table` measures the objects of a label
volume (slices spanned, voxels, physical volume) for propagation and 3D automatic
segmentation alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .embedding import CancelCheck, ImageEmbedding, ProgressCallback, check_rgb, image_key
from .errors import Cancelled, ImageError
from .normalize import Normalization, resolve_method

if TYPE_CHECKING:  # pragma: no cover
    from .engine import SamEngine

#: Values read to find a volume's percentiles (a regular subsample beyond this).
_PERCENTILE_SAMPLE = 4_000_000


class SliceStack:
    """The slices of a 3D array along ``axis``, each as a prepared uint8 (H, W, 3) image.

    Parameters
    ----------
    rgb_of : callable
        ``rgb_of(i)`` returns slice ``i`` prepared for SAM: uint8 (H, W, 3) with (H, W) the
        plane's shape. It should map intensities the same way for every slice (one
        normalisation per volume), so that neighbouring slices look alike to SAM.
    shape : tuple of int
        Shape of the 3D volume (and of the label volumes made for it).
    axis : int
        The axis the slices are taken along (the propagation axis); 0, 1, 2 or negative.

    Attributes
    ----------
    normalization : Normalization or None
        The per-volume intensity mapping when the stack was made by :meth:`from_volume`.

    See Also
    --------
    SliceStack.from_volume : the usual way to make one from an array.
    """

    def __init__(
        self,
        rgb_of: Callable[[int], np.ndarray],
        shape: Sequence[int],
        axis: int = 0,
    ) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ImageError(f"a slice stack needs a non-empty 3D shape, got {shape}")
        if not -3 <= axis <= 2:
            raise ImageError(f"axis {axis} does not exist in a 3D volume (use 0, 1 or 2)")
        self.shape = shape
        self.axis = axis % 3
        self._rgb_of = rgb_of
        self._keys: dict[int, str] = {}
        self.normalization: Normalization | None = None

    @classmethod
    def from_volume(
        cls,
        volume: np.ndarray,
        axis: int = 0,
        *,
        normalization: Normalization | None = None,
        rgb: bool = False,
    ) -> SliceStack:
        """Slices of a grey (3D) or colour (4D, last axis RGB) volume.

        Parameters
        ----------
        volume : ndarray
            (D0, D1, D2) or, with ``rgb``, (D0, D1, D2, 3 or 4).
        axis : int
            Slicing axis among the three spatial ones.
        normalization : Normalization, optional
            Intensity mapping (default: ``Normalization()``, i.e. ``"auto"``). A percentile
            mapping is resolved **once for the whole volume** (its percentiles become fixed
            contrast limits), so that all slices share one mapping.
        rgb : bool
            The last axis holds colours.

        Returns
        -------
        SliceStack
        """
        arr = np.asarray(volume)
        if arr.ndim != (4 if rgb else 3):
            want = "(D0, D1, D2, 3)" if rgb else "(D0, D1, D2)"
            raise ImageError(
                f"expected a {'colour' if rgb else 'grey'} volume {want}, got shape {arr.shape}"
            )
        if rgb and arr.shape[-1] not in (3, 4):
            raise ImageError(
                f"the last axis of a colour volume has 3 or 4 entries, not {arr.shape}"
            )
        norm = volume_normalization(arr, normalization or Normalization(), rgb=rgb)

        def rgb_of(i: int) -> np.ndarray:
            return norm.apply(arr[(slice(None),) * stack.axis + (i,)], rgb=rgb)

        stack = cls(rgb_of, arr.shape[:3], axis)
        stack.normalization = norm
        return stack

    @property
    def n_slices(self) -> int:
        """Number of slices along the axis."""
        return self.shape[self.axis]

    @property
    def plane_shape(self) -> tuple[int, int]:
        """(H, W) of one slice: the two other axes, in array order."""
        return tuple(s for a, s in enumerate(self.shape) if a != self.axis)  # type: ignore[return-value]

    def check_index(self, i: int) -> int:
        """``i`` as an int, or :class:`ImageError` when no such slice exists."""
        if not 0 <= int(i) < self.n_slices:
            raise ImageError(
                f"slice {i} does not exist along axis {self.axis} (0..{self.n_slices - 1})"
            )
        return int(i)

    def rgb(self, i: int) -> np.ndarray:
        """Slice ``i`` prepared for SAM (uint8 (H, W, 3)); remembers its embedding key."""
        i = self.check_index(i)
        out = self._rgb_of(i)
        check_rgb(out)
        if out.shape[:2] != self.plane_shape:
            raise ImageError(
                f"slice {i} gave an image of shape {out.shape[:2]}, expected {self.plane_shape}"
            )
        self._keys[i] = image_key(out)
        return out

    def cached_embedding(self, engine: SamEngine, i: int) -> ImageEmbedding | None:
        """Embedding of slice ``i`` if the engine has it in memory or on disk, else None.

        A slice seen before is found by its remembered key without preparing its image
        again, so that walking a stack with cached embeddings costs no normalisation.
        """
        key = self._keys.get(i)
        if key is not None:
            emb = engine.cache.get(engine.model_id, key)
            if emb is not None:
                return emb
        return engine.cached_embedding(self.rgb(i))

    def embedding(
        self,
        engine: SamEngine,
        i: int,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
    ) -> ImageEmbedding:
        """Embedding of slice ``i``: from the engine's caches, computed when missing."""
        key = self._keys.get(i)
        if key is not None:
            emb = engine.cache.get(engine.model_id, key)
            if emb is not None:
                return emb
        return engine.embed(self.rgb(i), progress=progress, cancel=cancel)

    def planes(self, volume: np.ndarray) -> np.ndarray:
        """A view of ``volume`` (of this stack's shape) with the slicing axis first."""
        if volume.shape[:3] != self.shape:
            raise ImageError(f"expected a volume of shape {self.shape}, got {volume.shape}")
        return np.moveaxis(volume, self.axis, 0)


def volume_normalization(
    volume: np.ndarray, normalization: Normalization, *, rgb: bool = False
) -> Normalization:
    """``normalization`` with a percentile mapping replaced by the volume's fixed limits.

    Percentiles computed per slice would stretch every slice differently (an object's
    last, faint slice would look as bright as its middle one); computed once over the
    volume (on a regular subsample of at most a few million values), they become contrast
    limits shared by all slices.
    """
    if resolve_method(normalization.method, volume.dtype, normalization.contrast_limits) != (
        "percentile"
    ):
        return normalization
    n_channels = volume.shape[-1] if rgb else 1
    channels = normalization.channels or tuple(range(min(n_channels, 3)))
    step = max(1, int(np.ceil((volume.size / max(n_channels, 1) / _PERCENTILE_SAMPLE) ** (1 / 3))))
    sample = volume[::step, ::step, ::step]
    limits = []
    for c in channels:
        values = (sample[..., c] if rgb else sample).astype(np.float32).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            limits.append((0.0, 0.0))
            continue
        lo, hi = (float(v) for v in np.percentile(values, normalization.percentiles))
        if hi <= lo:
            lo, hi = float(values.min()), float(values.max())
        limits.append((lo, hi))
    return Normalization(
        method="contrast_limits",
        contrast_limits=tuple(limits) if len(limits) > 1 else limits[0],
        channel_axis=normalization.channel_axis,
        channels=normalization.channels,
    )


def slice_order(n_slices: int, start: int) -> list[int]:
    """``start``, then outward from it alternately: start+1, start-1, start+2, ...

    Examples
    --------
    >>> slice_order(5, 1)
    [1, 2, 0, 3, 4]
    """
    if not 0 <= start < n_slices:
        raise ImageError(f"slice {start} does not exist (0..{n_slices - 1})")
    order = [start]
    for d in range(1, n_slices):
        order += [i for i in (start + d, start - d) if 0 <= i < n_slices]
    return order


@dataclass(frozen=True)
class SliceEmbeddings:
    """What :func:`embed_slices` did.

    Attributes
    ----------
    computed : int
        Embeddings the encoder computed.
    reused : int
        Embeddings found in memory or on disk.
    seconds : float
        Wall time.
    """

    computed: int
    reused: int
    seconds: float


def embed_slices(
    engine: SamEngine,
    stack: SliceStack,
    start: int | None = None,
    *,
    indices: Sequence[int] | None = None,
    keep_in_memory: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    preempt: CancelCheck | None = None,
) -> SliceEmbeddings:
    """Compute the embeddings of all (or some) slices, ``start`` first, then outward.

    Each embedding goes through :meth:`SamEngine.embed`: one already in memory or in the
    engine's on-disk store is reused, a new one is stored there. Afterwards propagation and
    slice navigation find every slice's embedding without running the encoder.

    Parameters
    ----------
    engine : SamEngine
    stack : SliceStack
    start : int, optional
        The slice the user is on (default: the middle one); it is computed first, then its
        neighbours, alternately above and below.
    indices : sequence of int, optional
        Only these slices (still in order of distance from ``start``).
    keep_in_memory : bool
        Grow the engine's in-memory cache to hold every slice (4 MiB per slice for the
        ViT models). When False, slices beyond the cache's size are kept only in the
        engine's store (if any).
    progress : callable, optional
        ``progress(done, total)`` after each slice.
    cancel : callable, optional
        Polled before each slice and during the encoder; :class:`Cancelled` is raised when
        it returns True (embeddings finished so far stay cached).
    preempt : callable, optional
        Polled during the encoder like ``cancel``: when it returns True (more urgent work
        waits), the slice being encoded is abandoned, ``progress`` is called with the slices
        done so far (where a scheduler lets the urgent work run: see
        :meth:`napari_sam._tasks.Task.progress`), and the slice is encoded again. Only the
        abandoned slice's partial work is lost. Needs a ``progress`` that gives way.

    Returns
    -------
    SliceEmbeddings
    """
    t0 = time.perf_counter()
    start = stack.n_slices // 2 if start is None else stack.check_index(start)
    order = slice_order(stack.n_slices, start)
    if indices is not None:
        wanted = {stack.check_index(i) for i in indices}
        order = [i for i in order if i in wanted]
    if keep_in_memory and engine.cache.max_items < len(order):
        engine.cache.max_items = len(order)
    cancelled = cancel or (lambda: False)
    stop = cancelled if preempt is None or progress is None else lambda: cancelled() or preempt()
    computed = reused = 0
    for done, i in enumerate(order):
        if cancelled():
            raise Cancelled("embedding of the slices cancelled")
        if stack.cached_embedding(engine, i) is not None:
            reused += 1
        else:
            while True:
                try:
                    stack.embedding(engine, i, cancel=stop)
                    break
                except Cancelled:
                    if cancelled() or stop is cancelled:
                        raise
                    progress(done, len(order))  # preempted: more urgent work runs here
            computed += 1
        if progress is not None:
            progress(done + 1, len(order))
    return SliceEmbeddings(computed, reused, time.perf_counter() - t0)


#: Columns of :func:`object_table`.
TABLE_COLUMNS = ("label", "slice_first", "slice_last", "n_slices", "voxels", "volume")


def object_table(
    labels: np.ndarray,
    axis: int = 0,
    spacing: Sequence[float] | None = None,
    *,
    ids: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """One row per object of a 3D label volume.

    Parameters
    ----------
    labels : ndarray
        int (D0, D1, D2) labels, 0 is background.
    axis : int
        The slicing (propagation or time) axis that ``slice_*`` columns count along.
    spacing : sequence of 3 float, optional
        Voxel size along each axis of ``labels`` (e.g. mm for scans): gives ``volume``.
    ids : sequence of int, optional
        The rows to give, in this order (an absent object gets 0 voxels and slices -1);
        default: every label present, in increasing order.

    Returns
    -------
    dict of str to ndarray
        ``label``; ``slice_first`` and ``slice_last`` (inclusive) along ``axis``;
        ``n_slices``, the slices that hold voxels of the object; ``voxels``; ``volume`` in
        the cube of ``spacing``'s unit (mm^3 for a scan in mm), NaN without ``spacing``.
    """
    from scipy import ndimage as ndi

    if labels.ndim != 3:
        raise ImageError(f"expected a 3D label volume, got shape {labels.shape}")
    if spacing is not None and len(spacing) != 3:
        raise ImageError(f"spacing needs one value per axis (3), got {tuple(spacing)}")
    axis %= 3
    if ids is None:
        ids = np.unique(labels)
        ids = ids[ids > 0]
    ids = np.asarray(ids, np.int64).reshape(-1)
    counts = np.bincount(labels.ravel(), minlength=int(ids.max(initial=0)) + 1)
    boxes = ndi.find_objects(labels)
    first, last, n_slices = [], [], []
    for i in ids:
        box = boxes[i - 1] if 0 < i <= len(boxes) else None
        if box is None:
            first.append(-1)
            last.append(-1)
            n_slices.append(0)
            continue
        present = (labels[box] == i).any(axis=tuple(a for a in range(3) if a != axis))
        first.append(box[axis].start)
        last.append(box[axis].stop - 1)
        n_slices.append(int(present.sum()))
    voxels = np.array([counts[i] if i > 0 else 0 for i in ids], np.int64)
    unit = float(np.prod(spacing)) if spacing is not None else np.nan
    return {
        "label": ids.astype(np.int32),
        "slice_first": np.array(first, np.int64),
        "slice_last": np.array(last, np.int64),
        "n_slices": np.array(n_slices, np.int64),
        "voxels": voxels,
        "volume": voxels * unit,
    }
