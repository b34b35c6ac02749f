"""An array-like that logs every read and refuses to be read whole (tests of lazy inputs)."""

from __future__ import annotations

import threading

import numpy as np


class ReadLog:
    """Wraps a NumPy array the way dask, zarr or tensorstore arrays look to napari.

    Every ``__getitem__`` is logged with the number of elements it returned and whether it
    ran on the main thread (napari's display) or another one (napari-sam's workers).
    ``np.asarray`` of the whole array raises: nothing may load a whole volume.

    Parameters
    ----------
    data : ndarray
    chunks : tuple of int, optional
        Advertised like zarr's ``chunks``.
    """

    def __init__(self, data: np.ndarray, chunks: tuple[int, ...] | None = None) -> None:
        self._data = data
        self.reads: list[tuple[tuple, int, bool]] = []
        if chunks is not None:
            self.chunks = chunks

    shape = property(lambda self: self._data.shape)
    dtype = property(lambda self: self._data.dtype)
    ndim = property(lambda self: self._data.ndim)
    size = property(lambda self: self._data.size)

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, key):
        out = self._data[key]
        main = threading.current_thread() is threading.main_thread()
        self.reads.append((key, int(np.size(out)), main))
        return out

    def __array__(self, dtype=None, copy=None):
        raise AssertionError(f"the whole array {self.shape} was read at once")

    def largest_read(self, *, main: bool | None = None) -> int:
        """Elements of the largest read (only those on the main thread or not, if given)."""
        return max((n for _, n, m in self.reads if main is None or m == main), default=0)
