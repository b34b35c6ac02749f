"""Turn any 2D microscopy or medical image into the uint8 RGB (H, W, 3) image SAM expects.

:func:`prepare_image` does all the work; :class:`Normalization` records a choice of settings
so that widgets and the command line can store it, apply it again and describe it in
provenance metadata.

Intensities are mapped to 0..255 by one of four methods:

``"contrast_limits"``
    ``lo`` -> 0 and ``hi`` -> 255 linearly, clipping outside: what the user sees in napari.
``"percentile"``
    Per channel, the low and high percentiles of the finite values become ``lo`` and ``hi``.
``"none"``
    Values are used as they are, clipped to 0..255 (floats rounded); ``bool`` gives 0/255.
``"auto"`` (default)
    ``"contrast_limits"`` when limits are given; otherwise ``"none"`` for ``uint8`` and
    ``bool`` images (SAM was trained on raw 8-bit photographs, stretching would change their
    colours) and ``"percentile"`` for every other dtype.

The arithmetic is done in float64 (exact offsets even for 64-bit integers), one channel and a
block of rows at a time, so that memory stays near the size of the output plus the one copy
percentiles need, whatever the dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .errors import ImageError

__all__ = [
    "DEFAULT_PERCENTILES",
    "MAX_CHANNELS_GUESSED",
    "Method",
    "Normalization",
    "prepare_image",
    "resolve_method",
]

Method = Literal["auto", "percentile", "contrast_limits", "none"]
"""Name of an intensity mapping (see the module documentation)."""

_METHODS: tuple[str, ...] = get_args(Method)

DEFAULT_PERCENTILES: tuple[float, float] = (1.0, 99.8)
"""Low and high percentiles used by the ``"percentile"`` method unless told otherwise."""

MAX_CHANNELS_GUESSED = 8
"""Largest first (or last) dimension of a 3D array that is guessed to be a channel axis."""

_ContrastLimits = tuple[float, float] | Sequence[tuple[float, float]] | Sequence[Sequence[float]]


def resolve_method(
    method: Method, dtype: DTypeLike, contrast_limits: Any | None = None
) -> Literal["percentile", "contrast_limits", "none"]:
    """Return the concrete method that ``method`` stands for with an image of ``dtype``.

    Parameters
    ----------
    method : {"auto", "percentile", "contrast_limits", "none"}
        Requested method.
    dtype : numpy dtype-like
        The image's dtype.
    contrast_limits : optional
        Contrast limits, if any were given.

    Returns
    -------
    str
        ``method`` itself unless it is ``"auto"``, which becomes ``"contrast_limits"`` when
        limits are given, ``"none"`` for ``uint8`` and ``bool`` and ``"percentile"`` otherwise.

    Raises
    ------
    ImageError
        If ``method`` is unknown, or contradicts ``contrast_limits`` (limits given with
        ``"percentile"`` or ``"none"``, or missing with ``"contrast_limits"``).
    """
    if method not in _METHODS:
        raise ImageError(
            f"Unknown normalization method {method!r}: choose one of {', '.join(_METHODS)}."
        )
    if method == "auto":
        if contrast_limits is not None:
            return "contrast_limits"
        dt = np.dtype(dtype)
        return "none" if dt in (np.dtype(np.uint8), np.dtype(np.bool_)) else "percentile"
    if method == "contrast_limits" and contrast_limits is None:
        raise ImageError("Normalization method 'contrast_limits' needs contrast_limits=(lo, hi).")
    if method != "contrast_limits" and contrast_limits is not None:
        raise ImageError(
            f"contrast_limits were given but the normalization method is {method!r}: "
            "use method 'contrast_limits' or 'auto', or drop the limits."
        )
    return method


def prepare_image(
    image: ArrayLike,
    *,
    method: Method = "auto",
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
    contrast_limits: _ContrastLimits | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    rgb: bool | None = None,
) -> np.ndarray:
    """Convert one 2D image plane (grey, RGB(A) or multi-channel) to SAM's uint8 RGB input.

    Parameters
    ----------
    image : array-like
        A 2D grey image ``(H, W)`` or a 3D array holding one 2D plane with a channel axis.
        Numeric (not complex) or ``bool`` dtype. It is never modified.
    method : {"auto", "percentile", "contrast_limits", "none"}, default "auto"
        Intensity mapping, see below.
    channel_axis : int, optional
        Axis of a 3D array that holds the channels (negative values count from the end).
        Guessed when omitted, see below. Not allowed with a 2D image.
    channels : sequence of int, optional
        Indices (1 to 3, in order) of the channels to use, after the alpha channel of an RGBA
        image has been dropped. One channel gives a grey image, two give red = first,
        green = second, blue = 0, three give red, green, blue. Required when there are more
        than 3 channels. A 2D image has the single channel 0.
    contrast_limits : (lo, hi) or sequence of (lo, hi), optional
        One pair for all channels, or one pair per selected channel. ``lo`` maps to 0 and
        ``hi`` to 255, linearly, with clipping. With ``lo == hi`` values above ``lo`` give
        255 and the others 0.
    percentiles : (float, float), default (1.0, 99.8)
        Low and high percentiles (0..100) of the ``"percentile"`` method.
    rgb : bool, optional
        True: the last axis is RGB or RGBA (like napari's ``layer.rgb``). False: never read
        the last axis as colour, even if it has 3 or 4 entries. None: guess.

    Returns
    -------
    numpy.ndarray
        New C-contiguous ``uint8`` array of shape ``(H, W, 3)``; it never shares memory with
        ``image``.

    Raises
    ------
    ImageError
        For an image that cannot be read as one 2D plane (wrong number of dimensions, empty,
        complex, a 3D stack without channel axis, more than 3 channels without ``channels``)
        or inconsistent settings (channel index out of range, bad limits or percentiles).

    Notes
    -----
    **Which axis holds the channels** of a 3D array, unless ``channel_axis`` is given:

    1. ``rgb=True``: the last axis, which must have 3 (RGB) or 4 (RGBA) entries.
    2. ``rgb=None`` and the last axis has 3 or 4 entries: the last axis, read as RGB(A).
    3. the first axis has at most 8 entries: the first axis (``(C, H, W)``, as in many TIFFs).
    4. the last axis has at most 8 entries: the last axis (``(H, W, C)``).
    5. otherwise the array looks like a 3D stack (``(Z, H, W)``) and :class:`ImageError` asks
       for one 2D plane, or for ``channel_axis``.

    The alpha channel is dropped only when the last axis is read as RGBA (rules 1 and 2); an
    explicit ``channel_axis`` gives plain channels.

    **Intensities**, per selected channel, by method (``"auto"`` picks ``"contrast_limits"``
    when limits are given, otherwise ``"none"`` for ``uint8``/``bool`` images, so 8-bit photos
    pass through unchanged, and ``"percentile"`` for everything else):

    - ``"contrast_limits"``: ``(v - lo) / (hi - lo) * 255``, clipped to 0..255 and rounded.
    - ``"percentile"``: the same with ``lo, hi`` the percentiles of the channel's finite
      values; if they coincide (a mostly constant channel) the finite minimum and maximum
      are used instead; a constant channel gives zeros.
    - ``"none"``: values clipped to 0..255 and rounded; ``bool`` gives 0 and 255.

    NaN gives 0, +inf 255 and -inf 0 under every method, and non-finite values are ignored by
    percentiles: an all-NaN channel gives zeros.
    """
    arr = np.asarray(image)
    planes, is_rgb = _channels_last(arr, channel_axis=channel_axis, rgb=rgb)
    height, width, n_channels = planes.shape
    if is_rgb and n_channels == 4:
        planes = planes[..., :3]
        n_channels = 3

    selected = _select_channels(channels, n_channels, rgb=is_rgb)
    concrete = resolve_method(method, arr.dtype, contrast_limits)
    limits = (
        _parse_contrast_limits(contrast_limits, len(selected))
        if concrete == "contrast_limits"
        else None
    )
    if concrete == "percentile":
        _check_percentiles(percentiles)

    out = np.empty((height, width, 3), dtype=np.uint8)
    for slot, index in enumerate(selected):
        lo_hi = limits[slot] if limits is not None else None
        _plane_to_uint8(planes[..., index], concrete, lo_hi, percentiles, out[..., slot])
    if len(selected) == 1:
        out[..., 1] = out[..., 0]
        out[..., 2] = out[..., 0]
    elif len(selected) == 2:
        out[..., 2] = 0
    return out


def _channels_last(
    arr: np.ndarray, *, channel_axis: int | None, rgb: bool | None
) -> tuple[np.ndarray, bool]:
    """Validate ``arr`` and return a ``(H, W, C)`` view of it and whether C is RGB(A)."""
    if np.iscomplexobj(arr):
        raise ImageError(
            f"Cannot use a complex image (dtype {arr.dtype}): pass its magnitude (np.abs) "
            "or its real part."
        )
    if arr.dtype.kind not in "biuf":  # bool, signed, unsigned, float
        raise ImageError(f"Cannot use an image of dtype {arr.dtype}: expected numbers.")
    if arr.ndim not in (2, 3):
        raise ImageError(
            f"Expected one 2D image, grey (H, W) or with channels (H, W, C) / (C, H, W), "
            f"but got an array of shape {arr.shape} ({arr.ndim}D). Pass a single 2D plane, "
            "e.g. image[z] or image[t, z]."
        )
    if arr.size == 0:
        raise ImageError(f"The image is empty (shape {arr.shape}).")

    if arr.ndim == 2:
        if channel_axis is not None:
            raise ImageError(
                f"channel_axis={channel_axis} was given but the image is 2D (shape "
                f"{arr.shape}) and has no channel axis."
            )
        if rgb:
            raise ImageError(
                f"rgb=True but the image is 2D (shape {arr.shape}); an RGB image has shape "
                "(H, W, 3)."
            )
        return arr[:, :, np.newaxis], False

    if channel_axis is not None:
        if not -3 <= channel_axis <= 2:
            raise ImageError(
                f"channel_axis={channel_axis} is out of range for a 3D image of shape "
                f"{arr.shape}: use 0, 1, 2 (or -3, -2, -1)."
            )
        if rgb and channel_axis % 3 != 2:
            raise ImageError(
                f"rgb=True means the last axis holds the colours, but channel_axis="
                f"{channel_axis} was given (image shape {arr.shape})."
            )
        return np.moveaxis(arr, channel_axis, -1), bool(rgb)

    first, last = arr.shape[0], arr.shape[-1]
    if rgb:
        if last not in (3, 4):
            raise ImageError(
                f"rgb=True but the last axis of the image (shape {arr.shape}) has {last} "
                "entries; RGB needs 3 and RGBA 4."
            )
        return arr, True
    if rgb is None and last in (3, 4):
        return arr, True
    if first <= MAX_CHANNELS_GUESSED:
        return np.moveaxis(arr, 0, -1), False
    if last <= MAX_CHANNELS_GUESSED:
        return arr, False
    raise ImageError(
        f"The image of shape {arr.shape} looks like a 3D stack, but prepare_image takes one "
        "2D plane: pass a single plane (e.g. image[z]), or pass channel_axis= for a "
        "multi-channel image."
    )


def _select_channels(channels: Sequence[int] | None, n_channels: int, *, rgb: bool) -> list[int]:
    """Return the list of channel indices to use, validated."""
    kind = "colour channels (alpha excluded)" if rgb else "channels"
    if channels is None:
        if n_channels > 3:
            raise ImageError(
                f"The image has {n_channels} channels but SAM takes at most 3: choose up to 3 "
                f"of them with channels=[...] (indices 0 to {n_channels - 1})."
            )
        return list(range(n_channels))
    selected = [_as_index(c) for c in channels]
    if not 1 <= len(selected) <= 3:
        raise ImageError(f"Choose 1 to 3 channels, not {len(selected)} ({list(channels)}).")
    for index in selected:
        if not 0 <= index < n_channels:
            if n_channels == 1:
                what = f"the image has 1 {kind[:-1]}, the only valid index is 0"
            else:
                what = (
                    f"the image has {n_channels} {kind}, valid indices are 0 to {n_channels - 1}"
                )
            raise ImageError(f"Channel {index} does not exist: {what}.")
    return selected


def _as_index(value: Any) -> int:
    """Return ``value`` as a Python int if it is an integer (not a bool), else raise."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise ImageError(f"Channel indices must be integers, got {value!r}.")
    return int(value)


def _parse_contrast_limits(contrast_limits: Any, n_selected: int) -> list[tuple[float, float]]:
    """Return one ``(lo, hi)`` pair per selected channel, validated."""
    try:
        values = np.asarray(contrast_limits, dtype=np.float64)
    except (TypeError, ValueError):
        values = None
    if values is None or not (values.shape == (2,) or (values.ndim == 2 and values.shape[1] == 2)):
        raise ImageError(
            f"contrast_limits must be a pair (lo, hi) or one pair per selected channel, got "
            f"{contrast_limits!r}."
        )
    pairs = [values] * n_selected if values.ndim == 1 else list(values)
    if len(pairs) != n_selected:
        raise ImageError(
            f"{len(pairs)} pairs of contrast limits were given for {n_selected} selected "
            "channel(s): give one pair for all, or one per channel."
        )
    result = []
    for lo, hi in pairs:
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ImageError(f"Contrast limits must be finite numbers, got ({lo}, {hi}).")
        if lo > hi:
            raise ImageError(f"Contrast limits must satisfy lo <= hi, got ({lo:g}, {hi:g}).")
        result.append((float(lo), float(hi)))
    return result


def _check_percentiles(percentiles: Any) -> None:
    """Raise ImageError unless ``percentiles`` is ``(low, high)`` with 0 <= low < high <= 100."""
    try:
        low, high = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise ImageError(f"percentiles must be a pair (low, high), got {percentiles!r}.") from None
    if not 0.0 <= low < high <= 100.0:
        raise ImageError(
            f"percentiles must satisfy 0 <= low < high <= 100, got ({low:g}, {high:g})."
        )


#: Elements of a channel converted to float64 at a time: the scratch memory stays near 1 MiB
#: whatever the image size (2**16 float64 values are 512 KiB).
_BLOCK_ELEMENTS = 1 << 16


def _plane_to_uint8(
    plane: np.ndarray,
    method: str,
    limits: tuple[float, float] | None,
    percentiles: tuple[float, float],
    out: np.ndarray,
) -> None:
    """Map one 2D channel into the 2D uint8 view ``out`` with the concrete ``method``."""
    if method == "none" and plane.dtype == np.uint8:
        out[...] = plane
        return
    if plane.dtype == np.bool_:
        plane = plane.view(np.uint8)
        if method == "none":
            limits = (0.0, 1.0)
    if method == "percentile":
        frame = _percentile_frame(plane, percentiles)
    else:
        lo, hi = limits if limits is not None else (0.0, 255.0)
        frame = _Frame.between(plane.dtype, lo, hi)
    rows = max(1, _BLOCK_ELEMENTS // max(plane.shape[1], 1))
    for r in range(0, plane.shape[0], rows):
        frame.scale_into(plane[r : r + rows], out[r : r + rows])


def _is_wide_int(dtype: np.dtype) -> bool:
    """Whether float64 cannot hold every value of the integer ``dtype`` (64-bit integers)."""
    return dtype.kind in "iu" and dtype.itemsize > 4


@dataclass(frozen=True)
class _Frame:
    """Intensities measured from ``base``: ``lo`` -> 0 and ``hi`` -> 255 are offsets from it.

    Offsets are computed exactly in float64 for every dtype: integers of up to 32 bits and
    floats convert to float64 exactly (``base`` is 0); 64-bit integers are first subtracted
    from an integer ``base`` near the range in the integer domain, so that uint64 values near
    1.8e19 a few units apart stay apart.
    """

    base: int
    lo: float
    hi: float

    @classmethod
    def between(cls, dtype: np.dtype, lo: float, hi: float) -> _Frame:
        """The frame mapping ``lo`` -> 0 and ``hi`` -> 255 for values of ``dtype``."""
        if not _is_wide_int(dtype):
            return cls(0, lo, hi)
        info = np.iinfo(dtype)
        base = min(max(math.floor(lo), int(info.min)), int(info.max))
        return cls(base, lo - base, hi - base)

    def offsets(self, block: np.ndarray) -> np.ndarray:
        """``block - base`` as a new float64 array (values below ``base`` give 0 for ints)."""
        if not _is_wide_int(block.dtype):
            return block.astype(np.float64)
        # Clip to base, then subtract modulo 2**64: the true difference (0 .. 2**64 - 1).
        clipped = np.maximum(block, block.dtype.type(self.base))
        diff = clipped.astype(np.uint64, copy=False)
        diff -= np.uint64(self.base % 2**64)
        return diff.astype(np.float64)

    def scale_into(self, block: np.ndarray, out: np.ndarray) -> None:
        """Write ``block`` mapped to 0..255 (NaN -> 0, rounded) into the uint8 ``out``."""
        with np.errstate(over="ignore"):  # +-1e308 - lo is +-inf, and is clipped below
            values = self.offsets(block)
            width = self.hi - self.lo
            if not width > 0:  # degenerate limits: a step at ``lo`` (NaN compares False: 0)
                np.greater(values, self.lo, out=out, casting="unsafe")
                out *= 255
                return
            values -= self.lo
            # fmax/fmin rather than clip + nan_to_num (which allocates masks): NaN -> 0.
            np.fmax(values, 0.0, out=values)
            np.fmin(values, width, out=values)
            # Multiply, then divide: exact halves stay exact (100 of 0..200 is 127.5 -> 128),
            # and a subnormal width needs no special case (255 / width would be inf).
            values *= 255.0
            values /= width
        np.rint(values, out=values)
        out[...] = values


def _percentile_frame(plane: np.ndarray, percentiles: tuple[float, float]) -> _Frame:
    """The frame mapping the percentiles of the finite values of ``plane`` to 0 and 255.

    If the percentiles coincide (a mostly constant channel) the finite minimum and maximum
    are used instead. The only full-size copy is the one the percentiles need (in the
    plane's own dtype; float32 for float16; offsets from the minimum for 64-bit integers).
    """
    base = 0
    values, own = plane, False
    if plane.dtype.kind == "f":
        if plane.dtype.itemsize < 4:
            values, own = plane.astype(np.float32), True
        mask = np.isfinite(values)
        if not mask.all():
            values, own = values[mask], True
        del mask
    elif _is_wide_int(plane.dtype):
        base = int(plane.min())
        values, own = plane.astype(np.uint64), True  # offsets from the minimum, exact
        values -= np.uint64(base % 2**64)
    if values.size == 0:
        return _Frame(0, 0.0, 0.0)
    lo, hi = (float(p) for p in np.percentile(values, percentiles, overwrite_input=own))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    return _Frame(base, lo, hi)


@dataclass(frozen=True)
class Normalization:
    """A stored choice of :func:`prepare_image` settings, for widgets, CLI and provenance.

    Attributes
    ----------
    method : {"auto", "percentile", "contrast_limits", "none"}
        Intensity mapping (see :func:`prepare_image`).
    contrast_limits : tuple or None
        ``(lo, hi)`` for all channels, or a tuple of such pairs, one per selected channel.
    percentiles : (float, float)
        Low and high percentiles of the ``"percentile"`` method.
    channel_axis : int or None
        Channel axis of a 3D image; None to guess.
    channels : tuple of int or None
        Channels to use (1 to 3); None for all (at most 3).

    Examples
    --------
    >>> Normalization(contrast_limits=(0, 4095)).describe()
    'contrast limits 0-4095'
    """

    method: Method = "auto"
    contrast_limits: tuple[float, float] | tuple[tuple[float, float], ...] | None = None
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    channel_axis: int | None = None
    channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        # Store sequences as tuples so that instances stay immutable and hashable.
        limits = self.contrast_limits
        if limits is not None:
            arr = np.asarray(limits, dtype=np.float64)
            frozen = (
                tuple(float(v) for v in arr)
                if arr.ndim == 1
                else tuple(tuple(float(v) for v in pair) for pair in arr)
            )
            object.__setattr__(self, "contrast_limits", frozen)
        object.__setattr__(self, "percentiles", tuple(float(p) for p in self.percentiles))
        if self.channels is not None:
            object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        resolve_method(self.method, np.float32, self.contrast_limits)  # validate early

    def apply(self, image: ArrayLike, *, rgb: bool | None = None) -> np.ndarray:
        """Return :func:`prepare_image` of ``image`` with these settings.

        Parameters
        ----------
        image : array-like
            One 2D image plane, see :func:`prepare_image`.
        rgb : bool, optional
            Whether the last axis is RGB(A) (e.g. napari's ``layer.rgb``); None to guess.

        Returns
        -------
        numpy.ndarray
            uint8 array of shape ``(H, W, 3)``.
        """
        return prepare_image(
            image,
            method=self.method,
            channel_axis=self.channel_axis,
            channels=self.channels,
            contrast_limits=self.contrast_limits,
            percentiles=self.percentiles,
            rgb=rgb,
        )

    def describe(self, dtype: DTypeLike | None = None) -> str:
        """Return a short human description, e.g. ``"percentile 1-99.8"``.

        Parameters
        ----------
        dtype : numpy dtype-like, optional
            dtype of the image the settings were applied to: ``"auto"`` is then described by
            the method it stood for.

        Returns
        -------
        str
            E.g. ``"contrast limits 0-4095"``, ``"percentile 1-99.8; channels 4, 0"``.
        """
        method: str = self.method
        if method == "auto" and (dtype is not None or self.contrast_limits is not None):
            method = resolve_method(
                "auto", np.float32 if dtype is None else dtype, self.contrast_limits
            )
        if method == "contrast_limits":
            pairs = np.asarray(self.contrast_limits, dtype=np.float64).reshape(-1, 2)
            text = "contrast limits " + ", ".join(_pair(lo, hi) for lo, hi in pairs)
        elif method == "percentile":
            text = "percentile " + _pair(*self.percentiles)
        elif method == "none":
            text = "none (values as they are)"
        else:
            text = f"auto (uint8 as is, else percentile {_pair(*self.percentiles)})"
        if self.channel_axis is not None:
            text += f"; channel axis {self.channel_axis}"
        if self.channels is not None:
            text += "; channels " + ", ".join(str(c) for c in self.channels)
        return text


def _pair(lo: float, hi: float) -> str:
    """Format a ``(lo, hi)`` pair compactly: ``"0-4095"``, ``"-1000 to 1000"``."""
    sep = "-" if lo >= 0 and hi >= 0 else " to "
    return f"{lo:g}{sep}{hi:g}"
