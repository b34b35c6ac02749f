"""Arrays that are not (all) in memory: planes read region by region, label volumes made lazily.

napari shows dask, zarr and multiscale data without loading it, and so must napari-sam:

- :func:`read_plane` reads one plane of any array-like (dask, zarr, tensorstore, xarray,
  memory-mapped files, ...) into a NumPy array, one region of a few chunks at a time, so
  that nothing larger than the plane itself is ever held (``np.asarray`` of a dask plane
  holds every chunk *and* the assembled copy at once). NumPy arrays are sliced, not copied.
- :func:`empty_labels` makes the zero label array for a new labels layer: a NumPy array for
  one plane or a stack of reasonable size, an in-memory zarr array for larger stacks, whose
  chunks exist only where something was written. napari's Labels layer paints, fills,
  undoes and redoes on zarr arrays.
- :func:`tiff_pixels` memory-maps large uncompressed TIFF files instead of reading them, and
  :func:`sample_values` samples mapped or lazy data by whole rows (volume statistics read a
  few MiB of a large file, not all of it).

zarr is imported when a stack's labels are first made, so importing this module is cheap.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DENSE_LABELS_BYTES",
    "LABEL_CHUNK",
    "MAP_BYTES",
    "REGION",
    "PlaneView",
    "chunk_shape",
    "empty_labels",
    "is_lazy",
    "is_on_disk",
    "read_plane",
    "sample_values",
    "tiff_pixels",
]

#: Pixels along each displayed axis read at once from a lazy array (at least one chunk):
#: 1024 x 1024 uint16 is 2 MiB, small next to the plane it goes into.
REGION = 1024

#: TIFF pixel data at least this large is memory-mapped instead of read (when it is stored
#: uncompressed in one piece): a 10 x 4096 x 4096 uint16 stack (320 MiB) is.
MAP_BYTES = 256 * 2**20

#: Label stacks up to this size are NumPy arrays, larger ones zarr (see :func:`empty_labels`).
DENSE_LABELS_BYTES = 2**30

#: Chunk of the zarr label volumes along the two last axes (1 along the others): 4 MiB of
#: int32, about what a brush stroke or a commit touches, and few reads for a 4096 plane.
LABEL_CHUNK = 1024


def is_on_disk(data: Any) -> bool:
    """Whether reading ``data``'s values reads a file or computes them: a memory-mapped file
    (``numpy.memmap`` and its views), dask, zarr, ...; False for NumPy arrays in memory."""
    return isinstance(data, np.memmap) or is_lazy(data)


def is_lazy(data: Any) -> bool:
    """Whether ``data`` is not a NumPy array in memory (dask, zarr, ...).

    Memory-mapped files (``numpy.memmap``) are NumPy arrays: slicing them reads nothing.
    """
    return not isinstance(data, np.ndarray)


def chunk_shape(data: Any) -> tuple[int, ...] | None:
    """The (largest) chunk of ``data`` along every axis, or None when it has no chunks.

    dask (and dask-backed xarray) gives ``chunksize`` or a tuple of chunk tuples; zarr gives
    ``chunks`` as a tuple of ints.
    """
    size = getattr(data, "chunksize", None)
    if size is not None:
        return tuple(int(s) for s in size)
    chunks = getattr(data, "chunks", None)
    if not isinstance(chunks, tuple) or len(chunks) != len(data.shape):
        return None
    if all(isinstance(c, tuple) for c in chunks):  # dask style: sizes of every chunk
        return tuple(max((int(s) for s in c), default=1) for c in chunks)
    if all(isinstance(c, int | np.integer) for c in chunks):
        return tuple(int(c) for c in chunks)
    return None


def _region_sizes(data: Any, axes: Sequence[int]) -> list[int]:
    """Region length along each of ``axes``: whole chunks, about :data:`REGION` pixels."""
    chunks = chunk_shape(data)
    out = []
    for axis in axes:
        n = int(data.shape[axis])
        c = chunks[axis] if chunks is not None else 1
        c = max(1, min(c, n))
        # A whole number of chunks, so that no chunk is read (or computed) twice.
        out.append(min(n, c * max(1, math.ceil(REGION / c))))
    return out


def _regions(data: Any, axes: Sequence[int]) -> Iterator[tuple[slice, ...]]:
    """Slices along ``axes`` covering them region by region."""
    sizes = _region_sizes(data, axes)
    starts = [range(0, int(data.shape[a]), s) for a, s in zip(axes, sizes, strict=True)]
    for corner in np.ndindex(*(len(r) for r in starts)):
        yield tuple(slice(r[i], r[i] + s) for r, i, s in zip(starts, corner, sizes, strict=True))


def read_plane(data: Any, key: Sequence[int | slice], axes: Sequence[int]) -> np.ndarray:
    """``data[key]`` as a NumPy array, read one region of ``axes`` at a time.

    Parameters
    ----------
    data : array-like
        NumPy, dask, zarr or any array that can be indexed with integers and slices.
    key : sequence of int or slice
        For the first axes of ``data``, an index or ``slice(None)`` (the whole axis); axes
        after them (RGB channels) are taken whole.
    axes : sequence of int
        Axes of ``data`` (taken whole by ``key``) to split into regions: the plane's rows and
        columns. Other whole axes (RGB channels) are read whole.

    Returns
    -------
    ndarray
        A view for NumPy input; otherwise a new array, assembled from regions of about
        :data:`REGION` pixels (whole chunks) along ``axes``.
    """
    ndim = len(data.shape)
    if len(key) > ndim or any(isinstance(k, slice) and k != slice(None) for k in key):
        raise ValueError(f"expected one index or slice(None) per axis of {data.shape}, got {key}")
    key = (*key, *[slice(None)] * (ndim - len(key)))  # trailing axes (RGB) whole
    if not is_lazy(data):
        return data[key]
    kept = [a for a, k in enumerate(key) if isinstance(k, slice)]
    if any(a not in kept for a in axes):
        raise ValueError(f"axes {tuple(axes)} are not taken whole by {key}")
    out: np.ndarray | None = None
    for region in _regions(data, axes):
        sub = list(key)
        for axis, s in zip(axes, region, strict=True):
            sub[axis] = s
        block = np.asarray(data[tuple(sub)])
        if out is None:
            out = np.empty(tuple(int(data.shape[a]) for a in kept), block.dtype)
        where = [slice(None)] * len(kept)
        for axis, s in zip(axes, region, strict=True):
            where[kept.index(axis)] = s
        out[tuple(where)] = block
    if out is None:  # an empty plane: nothing to read
        return np.asarray(data[key])
    return out


class PlaneView:
    """One plane of an nD array, sliced like a 2D array and read only where sliced.

    ``PlaneView(data, index, axes)[r0:r1, c0:c1]`` reads that region of the plane of
    ``data`` that :func:`read_plane` would read whole: rows along ``axes[0]``, columns along
    ``axes[1]`` (transposed when ``axes[0] > axes[1]``), the other leading axes fixed by
    ``index``, trailing axes (RGB channels) whole. A
    :class:`~napari_sam.core.prepared_plane.PreparedPlane` of it converts only those regions.

    Parameters
    ----------
    data : array-like
        NumPy, dask, zarr, ...
    index : sequence of int or None
        For each leading axis of ``data``: the index of the plane, or None for the plane's
        rows and columns.
    axes : (int, int)
        The axes of ``data`` holding the plane's rows and columns.
    """

    def __init__(self, data: Any, index: Sequence[int | None], axes: Sequence[int]) -> None:
        if len(axes) != 2 or any(index[a] is not None for a in axes):
            raise ValueError(f"axes {tuple(axes)} must be the two free axes of {tuple(index)}")
        self.data = data
        self.index = tuple(index)
        self.axes = (int(axes[0]), int(axes[1]))
        trailing = tuple(int(s) for s in data.shape[len(self.index) :])
        self.shape = (int(data.shape[self.axes[0]]), int(data.shape[self.axes[1]]), *trailing)
        self.dtype = np.dtype(data.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        rows, cols = (*key, slice(None), slice(None))[:2]
        full = []
        for axis, i in enumerate(self.index):
            if axis == self.axes[0]:
                full.append(rows)
            elif axis == self.axes[1]:
                full.append(cols)
            else:
                full.append(i)
        out = np.asarray(self.data[tuple(full) + tuple(key[2:])])
        if self.axes[0] > self.axes[1] and out.ndim >= 2:
            if isinstance(rows, slice) and isinstance(cols, slice):
                out = np.swapaxes(out, 0, 1)
        return out


def empty_labels(shape: Sequence[int], dtype: Any = np.int32) -> Any:
    """A zero label array for a new labels layer, costing memory only where it is written.

    Parameters
    ----------
    shape : sequence of int
        The labels' shape (the image's without its RGB axis).
    dtype : numpy dtype-like

    Returns
    -------
    numpy.ndarray or zarr.Array
        A NumPy array for one plane, and for stacks of at most :data:`DENSE_LABELS_BYTES`.
        Larger stacks get an in-memory zarr array, chunked one plane deep and
        :data:`LABEL_CHUNK` pixels square (compressed; chunks never written take no memory).

    Notes
    -----
    ``np.zeros`` takes its pages from the system only when they are first written (Linux,
    macOS), and napari shows a plane of a NumPy array without copying it, so a NumPy label
    stack costs what was written; a zarr one costs that (compressed) plus the plane napari
    copies out for display (64 MiB at 4096 x 4096 int32, measured in docs/performance.md).
    But the whole size of ``np.zeros`` is reserved at once: Linux refuses sizes beyond
    memory and swap (a T x Z stack of 80 GiB of labels on a 24 GiB machine cannot get a
    target layer at all) and Windows charges all of it. Hence NumPy up to a size every
    machine can reserve, zarr beyond.
    """
    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    if len(shape) <= 2 or int(np.prod(shape)) * dtype.itemsize <= DENSE_LABELS_BYTES:
        return np.zeros(shape, dtype)
    import zarr

    chunks = (1,) * (len(shape) - 2) + tuple(max(1, min(LABEL_CHUNK, s)) for s in shape[-2:])
    return zarr.create_array(
        store=zarr.storage.MemoryStore(), shape=shape, chunks=chunks, dtype=dtype, fill_value=0
    )


def sample_values(data: Any, n: int) -> np.ndarray:
    """About ``n`` values evenly spread through ``data`` (1D), reading only what they need.

    A strided sample of a memory-mapped file touches every page of it (it reads the whole
    file), and so do rows spread evenly through it: the kernel reads ahead and maps the
    file in pieces of up to megabytes. This reads a few bands of consecutive whole rows (the
    last axis, with the channels after it when it is short) from evenly spaced planes (at
    least 8 along each axis that has them), about ``n`` values (a few rows more) in all.
    Data of at most ``n`` values is returned whole.
    """
    shape = tuple(int(s) for s in data.shape)
    size = int(np.prod(shape))
    if size <= n:
        return np.asarray(data[...]).reshape(-1)
    if len(shape) == 1:
        return np.asarray(data[:: -(-size // n)])
    row_ndim = 1
    while row_ndim < len(shape) - 1 and int(np.prod(shape[-row_ndim:])) < _MIN_ROW:
        row_ndim += 1
    keys = _band_keys(shape, n, row_ndim)
    return np.concatenate([np.asarray(data[key]).reshape(-1) for key in keys])


#: Fewest values in a "row" read by :func:`sample_values` (RGB pixels are not rows).
_MIN_ROW = 256
#: Bands of rows :func:`sample_values` reads per plane.
_BANDS = 4


def _band_keys(shape: tuple[int, ...], n: int, row_ndim: int) -> list[tuple[int | slice, ...]]:
    """Indices (over the axes before the last ``row_ndim``) of evenly spread bands of rows."""
    count, per = shape[0], int(np.prod(shape[1:]))
    k = min(count, max(-(-n // max(per, 1)), 8))
    if len(shape) == row_ndim + 1:  # k rows, in a few bands of consecutive rows
        bands = min(k, _BANDS)
        rows = -(-k // bands)
        starts = np.unique(np.linspace(0, count - rows, bands).round().astype(int))
        return [(slice(int(a), int(a) + rows),) for a in starts]
    picks = [int(i) for i in np.unique(np.linspace(0, count - 1, k).round())]
    share = max(1, n // len(picks))
    return [(i, *rest) for i in picks for rest in _band_keys(shape[1:], share, row_ndim)]


def tiff_pixels(series: Any) -> np.ndarray:
    """The pixels of a tifffile series: memory-mapped when large and stored plainly, else read.

    Data of at least :data:`MAP_BYTES` stored uncompressed, contiguous and in the machine's
    byte order is mapped copy-on-write (``numpy.memmap`` mode ``"c"``): pages are read from
    the file when used, writing to the array (painting a labels layer) never changes the
    file. Anything else (compressed, tiled, small) is read into memory.

    Parameters
    ----------
    series : tifffile.TiffPageSeries
        A series of an open ``tifffile.TiffFile``; the map stays valid after it is closed.
    """
    offset = getattr(series, "dataoffset", None)
    dtype = np.dtype(series.dtype)
    if offset is not None and dtype.isnative and series.nbytes >= MAP_BYTES:
        path = series.parent.filehandle.path
        return np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=tuple(series.shape))
    return np.asarray(series.asarray())
