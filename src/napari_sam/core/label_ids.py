"""Label ids and the integer types that hold them: a new id never wraps around.

NumPy casts out-of-range integers silently (``np.array([256]).astype(np.uint8)`` is
``[0]``), so an id one past the end of a uint8 label image would erase or merge objects.
Everything that gives out new ids checks them here first and refuses with
:class:`~napari_sam.core.errors.LabelIdError` (nothing written) when they do not fit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from .errors import LabelIdError

__all__ = ["highest_id", "id_limit", "new_ids"]


def id_limit(dtype: DTypeLike) -> int:
    """The largest label id an array of ``dtype`` holds (1 for bool).

    Raises
    ------
    LabelIdError
        When ``dtype`` is not an integer (or bool) type.
    """
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return 1
    if dt.kind not in "iu":
        raise LabelIdError(f"labels must be integers, not {dt}")
    return int(np.iinfo(dt).max)


def highest_id(data: Any) -> int:
    """The largest label id in ``data`` (0 when it is empty or holds no positive id).

    NumPy and dask arrays are reduced as they are (dask chunk by chunk). Other arrays (zarr,
    ...) are read one plane at a time: ``np.max`` would first copy all of them into memory.
    """
    if not np.size(data):
        return 0
    if isinstance(data, np.ndarray) or hasattr(data, "dask") or len(data.shape) <= 2:
        return max(int(np.max(data)), 0)
    return max(highest_id(data[i]) for i in range(int(data.shape[0])))


def new_ids(
    dtype: DTypeLike,
    highest: int,
    count: int,
    *,
    target: str = "the labels",
    hint: str = "write them into a wider integer type",
) -> range:
    """The ``count`` ids that follow ``highest``, after checking that ``dtype`` holds them.

    Parameters
    ----------
    dtype : numpy dtype-like
        Integer type of the label array the ids go into.
    highest : int
        Largest id already in use (negative values count as 0).
    count : int
        How many new ids are needed.
    target : str
        What the label array is, for the message (e.g. ``"the labels layer 'nuclei'"``).
    hint : str
        What the user can do about it, ending the message (worded for the GUI or the CLI).

    Returns
    -------
    range
        ``highest + 1, ..., highest + count``.

    Raises
    ------
    LabelIdError
        When the last id exceeds the type's range; the message says which ids were needed,
        then ``hint``.
    """
    first = max(int(highest), 0) + 1
    ids = range(first, first + count)
    limit = id_limit(dtype)
    if count and ids[-1] > limit:
        need = f"id {first}" if count == 1 else f"ids {first} to {ids[-1]}"
        raise LabelIdError(
            f"{target} is {np.dtype(dtype)} (ids up to {limit}) and already uses id "
            f"{first - 1}: the new object(s) would need {need}. Nothing was written: {hint}."
        )
    return ids
