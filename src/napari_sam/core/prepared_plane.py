"""SAM's uint8 RGB input of one large plane, made region by region from lazy data.

:func:`~napari_sam.core.normalize.prepare_image` converts a whole plane at once: right for
what fits in memory, wrong for a 40,000 px slide in a zarr store or a large TIFF, of which a
click needs one tile. A :class:`PreparedPlane` reads and converts only the regions asked for
(``plane[r0:r1, c0:c1]``), so tiled embedding (:mod:`napari_sam.core.tiled_embedding`) holds
no more than the tiles it works on.

Converting region by region needs an intensity mapping that is the same for every region:

- contrast limits and ``"none"`` map each pixel on its own, and are used as they are;
- percentiles depend on the whole plane: they are computed once, from the whole plane when
  it has at most :data:`SAMPLE_PIXELS` pixels (the limits are then exactly those
  :func:`prepare_image` computes, and so is every byte of the result) and otherwise from a
  deterministic sample of :data:`SAMPLE_PATCHES` square patches spread evenly over the
  plane, and become the plane's contrast limits (:attr:`PreparedPlane.norm`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from typing import Any

import numpy as np

from .normalize import (
    MAX_CHANNELS_GUESSED,
    Normalization,
    _channels_last,
    _percentile_frame,
    _select_channels,
    resolve_method,
)

__all__ = ["SAMPLE_PATCHES", "SAMPLE_PIXELS", "PreparedPlane", "check_prepared"]

#: Planes of at most this many pixels are read whole to compute percentiles (4 Mpx).
SAMPLE_PIXELS = 1 << 22

#: Patches per side of the grid sampled for the percentiles of larger planes, and their size:
#: 8 x 8 patches of 256 x 256 px are :data:`SAMPLE_PIXELS` in all, each within a chunk or two
#: of a tiled file, spread over the whole plane.
SAMPLE_PATCHES = 8
_PATCH = 256

#: Patches (per side) and their size read for the plane's identity (:attr:`PreparedPlane.key`).
_KEY_PATCHES = 4
_KEY_PATCH = 64


class PreparedPlane:
    """The uint8 (H, W, 3) SAM input of one plane of a lazy array, converted when sliced.

    Parameters
    ----------
    data : array-like
        One 2D plane: ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)``, of any array type that
        can be sliced without reading the rest (NumPy, memory-mapped files, dask, zarr,
        :class:`~napari_sam.core.lazy_arrays.PlaneView`). Which axis holds the channels is
        decided as :func:`prepare_image` decides it (``norm.channel_axis``, ``rgb``, or
        guessed from the shape).
    norm : Normalization
        The settings; percentiles are fixed once for the plane (see the module
        documentation) and the result is :attr:`norm`.
    rgb : bool, optional
        Whether the last axis is RGB(A), as for :func:`prepare_image`.

    Attributes
    ----------
    norm : Normalization
        The mapping applied to every region: contrast limits or ``"none"``. Its
        :meth:`~Normalization.describe` goes into a tile store's signature.
    key : str
        An identity of the plane for finding its tile store: shape, dtype, :attr:`norm` and
        a few small patches of its pixels. It is not a hash of every pixel (that would read
        the whole plane); tile stores check each tile's own pixels before using it.

    Examples
    --------
    >>> plane = PreparedPlane(np.zeros((600, 800), np.uint16), Normalization())
    >>> plane.shape, plane[0:10, 0:20].shape
    ((600, 800, 3), (10, 20, 3))
    """

    def __init__(self, data: Any, norm: Normalization, *, rgb: bool | None = None) -> None:
        shape = tuple(int(s) for s in data.shape)
        dtype = np.dtype(data.dtype)
        # Validate like prepare_image, on a stand-in of the right shape (nothing is read).
        dummy = np.broadcast_to(np.zeros((), dtype), shape)
        planes, is_rgb = _channels_last(dummy, channel_axis=norm.channel_axis, rgb=rgb)
        n_channels = planes.shape[2] - (1 if is_rgb and planes.shape[2] == 4 else 0)
        self._selected = _select_channels(norm.channels, n_channels, rgb=is_rgb)
        self.data = data
        self._dtype = dtype
        self._is_rgb = is_rgb
        self._axis = _channel_axis(shape, norm.channel_axis, is_rgb)
        spatial = [s for axis, s in enumerate(shape) if axis != self._axis]
        self._height, self._width = spatial[0], spatial[1]
        self.norm = self._pointwise(norm)
        self.key = self._identity()

    # -- array-like -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, 3)."""
        return self._height, self._width, 3

    @property
    def dtype(self) -> np.dtype:
        """Always uint8."""
        return np.dtype(np.uint8)

    @property
    def ndim(self) -> int:
        """Always 3."""
        return 3

    @property
    def source_dtype(self) -> np.dtype:
        """dtype of the data before conversion."""
        return self._dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        """The prepared pixels of ``[rows, cols]`` (slices with step 1, or ints), a new array."""
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) > 3:
            raise IndexError(f"too many indices for a prepared plane: {key!r}")
        rows, cols, *rest = (*key, slice(None), slice(None))[:3]
        r, squeeze_r = _as_slice(rows, self._height)
        c, squeeze_c = _as_slice(cols, self._width)
        out = self._convert(self._read(r, c))
        out = out[..., rest[0]] if rest and rest[0] != slice(None) else out
        if squeeze_c:
            out = out[:, 0]
        if squeeze_r:
            out = out[0]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.read()
        return out if dtype is None else out.astype(dtype)

    def read(self) -> np.ndarray:
        """The whole prepared plane, converted band by band (for a plane embedded whole)."""
        out = np.empty(self.shape, np.uint8)
        band = max(1, (1 << 22) // max(self._width, 1))
        for r0 in range(0, self._height, band):
            rows = slice(r0, min(r0 + band, self._height))
            out[rows] = self._convert(self._read(rows, slice(0, self._width)))
        return out

    # -- internals --------------------------------------------------------------------------
    def _read(self, rows: slice, cols: slice) -> np.ndarray:
        """The raw pixels of a region, axes in the data's order."""
        if self._axis == 0:
            index: tuple = (slice(None), rows, cols)
        elif self._axis == 1:
            index = (rows, slice(None), cols)
        else:
            index = (rows, cols)
        return np.asarray(self.data[index])

    def _convert(self, region: np.ndarray) -> np.ndarray:
        if self._axis is None:
            return self.norm.apply(region, rgb=False)
        if self._is_rgb:
            return replace(self.norm, channel_axis=None).apply(region, rgb=True)
        return replace(self.norm, channel_axis=self._axis).apply(region, rgb=False)

    def _pointwise(self, norm: Normalization) -> Normalization:
        """``norm`` with percentiles replaced by this plane's contrast limits."""
        method = resolve_method(norm.method, self._dtype, norm.contrast_limits)
        if method != "percentile":
            return replace(norm, method=method)
        limits = []
        samples = self._sample(self._sample_patches())
        for values in samples:
            frame = _percentile_frame(values, norm.percentiles)
            limits.append((frame.base + frame.lo, frame.base + frame.hi))
        return replace(norm, method="contrast_limits", contrast_limits=tuple(limits))

    def _sample_patches(self) -> tuple[int, int]:
        """(patches per side, patch size) of the sample; (1, 0) for the whole plane."""
        if self._height * self._width <= SAMPLE_PIXELS:
            return 1, 0
        return SAMPLE_PATCHES, _PATCH

    def _sample(self, layout: tuple[int, int]) -> list[np.ndarray]:
        """1D values of each selected channel over the sample ``layout``."""
        per_channel: list[list[np.ndarray]] = [[] for _ in self._selected]
        for rows, cols in _patches(self._height, self._width, *layout):
            region = self._read(rows, cols)
            if region.dtype == np.bool_:
                region = region.view(np.uint8)
            if region.ndim == 2:
                per_channel[0].append(region.reshape(-1))
                continue
            chans = np.moveaxis(region, self._axis if not self._is_rgb else 2, -1)
            for slot, index in enumerate(self._selected):
                per_channel[slot].append(np.ascontiguousarray(chans[..., index]).reshape(-1))
        return [np.concatenate(parts) for parts in per_channel]

    def _identity(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(repr((self.shape, str(self._dtype), self._axis, self._is_rgb)).encode())
        h.update(repr(self.norm).encode())
        n = min(_KEY_PATCHES, max(1, min(self._height, self._width) // _KEY_PATCH))
        for rows, cols in _patches(self._height, self._width, n, _KEY_PATCH):
            h.update(np.ascontiguousarray(self._read(rows, cols)).data)
        return "plane-" + h.hexdigest()


def _channel_axis(shape: tuple[int, ...], channel_axis: int | None, is_rgb: bool) -> int | None:
    """The data axis holding channels, by :func:`prepare_image`'s rules (None: grey 2D)."""
    if len(shape) == 2:
        return None
    if channel_axis is not None:
        return channel_axis % 3
    if is_rgb:
        return 2
    return 0 if shape[0] <= MAX_CHANNELS_GUESSED else 2


def _as_slice(index: Any, n: int) -> tuple[slice, bool]:
    """A step-1 slice within ``0..n`` for ``index`` (an int squeezes its axis)."""
    if isinstance(index, (int, np.integer)):
        i = int(index) + (n if index < 0 else 0)
        if not 0 <= i < n:
            raise IndexError(f"index {index} is out of bounds for an axis of {n}")
        return slice(i, i + 1), True
    if not isinstance(index, slice):
        raise IndexError(f"a prepared plane is sliced by ranges, not by {type(index).__name__}")
    start, stop, step = index.indices(n)
    if step != 1:
        raise IndexError("a prepared plane is sliced with step 1")
    return slice(start, max(start, stop)), False


def _patches(height: int, width: int, per_side: int, size: int) -> list[tuple[slice, slice]]:
    """``per_side`` x ``per_side`` square patches of ``size`` spread evenly (the whole plane
    for size 0); fewer when the plane is too small for them to be apart."""
    if size <= 0 or (height <= size and width <= size):
        return [(slice(0, height), slice(0, width))]
    rows = _starts(height, size, per_side)
    cols = _starts(width, size, per_side)
    return [
        (slice(r, min(r + size, height)), slice(c, min(c + size, width)))
        for r in rows
        for c in cols
    ]


def _starts(n: int, size: int, count: int) -> list[int]:
    if n <= size:
        return [0]
    count = min(count, math.ceil(n / size))
    return sorted({int(v) for v in np.rint(np.linspace(0, n - size, count))})


def check_prepared(plane: Any) -> None:
    """Raise :class:`~napari_sam.core.errors.ImageError` unless ``plane`` is a uint8
    (H, W, 3) array or a :class:`PreparedPlane`."""
    if isinstance(plane, PreparedPlane):
        return
    from .embedding import check_rgb

    check_rgb(plane)
