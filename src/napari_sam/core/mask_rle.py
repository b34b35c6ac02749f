"""Boolean masks as compact, lossless ASCII text (run lengths, zlib, base64).

Session records (:mod:`napari_sam.core.session_record`) store every committed mask this way,
so that replay can say whether a mask came out identical, or how close it is.
"""

from __future__ import annotations

import base64
import binascii
import zlib

import numpy as np

from .errors import SessionError

__all__ = ["decode_mask", "encode_mask"]


def encode_mask(mask: np.ndarray) -> str:
    """Run-length encode a boolean mask, compactly and losslessly.

    The runs of the C-ordered mask alternate between False and True, starting with False
    (a mask starting with True begins with a run of length 0). Their lengths are stored as
    little-endian uint32, zlib-compressed, base64-encoded (ASCII).
    """
    flat = np.ascontiguousarray(mask, bool).reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges)
    if flat.size and flat[0]:
        runs = np.concatenate([[0], runs])
    data = zlib.compress(runs.astype("<u4").tobytes(), 9)
    return base64.b64encode(data).decode("ascii")


def decode_mask(text: str, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`encode_mask`; raise SessionError when ``text`` does not fit ``shape``."""
    try:
        runs = np.frombuffer(zlib.decompress(base64.b64decode(text, validate=True)), "<u4")
    except (binascii.Error, zlib.error, ValueError, TypeError):
        raise SessionError("a stored mask is damaged (not valid run-length data)") from None
    size = int(np.prod(shape))
    if int(runs.sum(dtype=np.int64)) != size:
        raise SessionError(f"a stored mask does not fit the {shape[0]}x{shape[1]} plane")
    values = np.arange(len(runs)) % 2 == 1
    return np.repeat(values, runs.astype(np.intp)).reshape(shape)
