"""Intensity settings for scans: CT windows and one normalisation per volume.

SAM sees one 2D slice at a time. If every slice were stretched by its own percentiles,
neighbouring slices of one volume would look different to SAM (a slice through bright bone
darkens everything else) and masks would jump from slice to slice. :func:`volume_normalization`
therefore fixes the contrast limits **once per volume**: from a CT window (``W400/L40``:
level +- width / 2 in Hounsfield units), from limits the user gave, or from percentiles of
the whole volume, and every slice is then mapped with the same limits.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .errors import ImageError
from .lazy_arrays import is_on_disk, sample_values
from .normalize import Normalization, resolve_method

__all__ = [
    "CT_WINDOWS",
    "looks_like_ct",
    "parse_window",
    "volume_limits",
    "volume_normalization",
    "window_limits",
]

CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft-tissue": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
    "liver": (150.0, 30.0),
    "mediastinum": (350.0, 50.0),
    "stroke": (40.0, 40.0),
}
"""CT window presets: name -> (width, level) in Hounsfield units (common radiology values)."""

MAX_SAMPLES = 4_000_000
"""Volume percentiles are computed on at most this many voxels (an even stride through the
volume), which keeps them exact for small volumes and fast (< 0.5 s) for large ones."""


def parse_window(text: str) -> tuple[float, float]:
    """Read a CT window: a preset name (``"lung"``) or ``"WIDTH,LEVEL"`` (``"400,40"``).

    Parameters
    ----------
    text : str
        A key of :data:`CT_WINDOWS` (case and ``-``/``_``/space ignored, so
        ``"Soft_Tissue"`` works) or two numbers separated by a comma.

    Returns
    -------
    (float, float)
        Width and level.

    Raises
    ------
    ImageError
        For an unknown name, malformed numbers or a width that is not positive.
    """
    key = "-".join(text.strip().lower().replace("_", " ").replace("-", " ").split())
    if key in CT_WINDOWS:
        return CT_WINDOWS[key]
    parts = [p.strip() for p in text.split(",")]
    try:
        width, level = (float(p) for p in parts)
    except ValueError:
        raise ImageError(
            f"Unknown window {text!r}: give WIDTH,LEVEL (e.g. 400,40) or one of "
            f"{', '.join(CT_WINDOWS)}."
        ) from None
    if not (np.isfinite(width) and np.isfinite(level)) or width <= 0:
        raise ImageError(f"Window {text!r}: the width must be a positive number.")
    return width, level


def window_limits(width: float, level: float) -> tuple[float, float]:
    """Contrast limits ``(level - width / 2, level + width / 2)`` of a window."""
    return level - width / 2.0, level + width / 2.0


def looks_like_ct(data: np.ndarray, modality: str | None = None) -> bool:
    """Whether a volume holds CT Hounsfield units.

    True when the DICOM ``modality`` is ``"CT"``; otherwise when the values reach down to
    air (at most -900) and up to soft tissue (at least +100), which MRI, microscopy and
    label volumes never do. The range is taken from the same sample as :func:`volume_limits`.
    """
    if modality is not None:
        return modality.upper() == "CT"
    if data.dtype.kind not in "iuf" or data.size == 0:
        return False
    sample = _sample(data)
    finite = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample
    return finite.size > 0 and float(finite.min()) <= -900 and float(finite.max()) >= 100


def volume_limits(
    data: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.8)
) -> tuple[float, float]:
    """Percentile contrast limits of a whole volume (all its voxels together).

    Parameters
    ----------
    data : numpy.ndarray
        The volume (any number of axes), or one channel of it.
    percentiles : (float, float)
        Low and high percentiles (0..100).

    Returns
    -------
    (lo, hi)
        Percentiles of the finite values; their minimum and maximum if the percentiles
        coincide (a mostly constant volume), ``(0, 0)`` when there are no finite values.
    """
    sample = _sample(data).astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 0.0
    lo, hi = (float(v) for v in np.percentile(sample, percentiles))
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    return lo, hi


def _sample(data: np.ndarray) -> np.ndarray:
    """About :data:`MAX_SAMPLES` voxels (or fewer), evenly spread through ``data`` (1D)."""
    if is_on_disk(data):  # a mapped file: read the rows of the sample, not every page
        return sample_values(data, MAX_SAMPLES)
    if data.size > MAX_SAMPLES and data.ndim > 1 and not data.flags.c_contiguous:
        # Flattening a strided view (one channel of a volume) copies it: keep evenly spaced
        # slices first (at least 8, first and last included), then stride through those.
        per_slice = data[0].size
        keep = min(data.shape[0], max(8, -(-MAX_SAMPLES // per_slice)))
        data = data[np.linspace(0, data.shape[0] - 1, keep).round().astype(int)]
    step = max(1, -(-data.size // MAX_SAMPLES))
    return data.reshape(-1)[::step]


def volume_normalization(
    data: np.ndarray,
    base: Normalization,
    *,
    window: tuple[float, float] | None = None,
    channels_last: bool = False,
    rgb: bool = False,
) -> Normalization:
    """The normalisation to apply to every slice of ``data``, fixed once for the volume.

    Parameters
    ----------
    data : numpy.ndarray
        The whole volume (channels last if ``channels_last``).
    base : Normalization
        The settings chosen (CLI options, widget): method, contrast limits, percentiles,
        channels.
    window : (width, level), optional
        A CT window (:func:`parse_window`); it becomes the contrast limits.
    channels_last : bool
        The last axis of ``data`` holds channels: one limit pair per channel used.
    rgb : bool
        Those channels are RGB(A) colours: one pair for the colours together (alpha
        excluded), so that colours keep their balance.

    Returns
    -------
    Normalization
        ``base`` with ``method="contrast_limits"`` and limits from the window, or from the
        volume's percentiles when ``base`` would compute percentiles slice by slice
        (``"percentile"``, or ``"auto"`` on anything but uint8/bool). Other settings
        (``"none"``, uint8 with ``"auto"``, explicit limits) are the same for every slice
        already and are returned unchanged.

    Raises
    ------
    ImageError
        If a window is combined with contrast limits or with a method other than ``"auto"``
        or ``"contrast_limits"``.
    """
    if window is not None:
        if base.contrast_limits is not None or base.method not in ("auto", "contrast_limits"):
            raise ImageError(
                "A CT window sets the contrast limits: do not combine it with contrast "
                f"limits or with normalization {base.method!r}."
            )
        return replace(base, method="contrast_limits", contrast_limits=window_limits(*window))
    if resolve_method(base.method, data.dtype, base.contrast_limits) != "percentile":
        return base
    if not channels_last:
        limits: tuple = volume_limits(data, base.percentiles)
    elif rgb:
        limits = volume_limits(data[..., :3], base.percentiles)
    else:
        n = data.shape[-1]
        used = base.channels if base.channels is not None else range(n)
        if any(not 0 <= c < n for c in used):
            raise ImageError(f"Channels {list(used)}: the volume has {n} (0 to {n - 1}).")
        limits = tuple(volume_limits(data[..., c], base.percentiles) for c in used)
    return replace(base, method="contrast_limits", contrast_limits=limits)
