"""Read images and write label images, with one clear :class:`ImageError` line on failure.

tifffile and imageio are imported when first needed, so importing this module stays cheap.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np

from .errors import ImageError

__all__ = ["LABEL_SUFFIXES", "READ_SUFFIXES", "read_image", "write_labels"]

_TIFF = (".tif", ".tiff")
_PICTURE = (".png", ".jpg", ".jpeg", ".bmp")
READ_SUFFIXES: tuple[str, ...] = (*_TIFF, *_PICTURE, ".npy")
"""File name extensions :func:`read_image` understands (compared case-insensitively)."""

LABEL_SUFFIXES: tuple[str, ...] = (*_TIFF, ".png", ".npy")
"""File name extensions :func:`write_labels` can write (compared case-insensitively)."""

_INT32_MAX = int(np.iinfo(np.int32).max)
_UINT16_MAX = int(np.iinfo(np.uint16).max)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file into a NumPy array, as stored (no conversion).

    Parameters
    ----------
    path : str or os.PathLike
        A TIFF (``.tif``, ``.tiff``, read with tifffile: the first series, so a multi-page
        file gives a stack), PNG, JPEG or BMP (read with imageio) or NumPy ``.npy`` file
        (read without pickles).

    Returns
    -------
    numpy.ndarray
        The pixel data, e.g. ``(H, W)``, ``(H, W, 3)`` or ``(C, H, W)``.

    Raises
    ------
    ImageError
        If the file is missing, is not a file, has an unsupported extension or cannot be
        decoded. The message names the path and the reason in one line.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READ_SUFFIXES:
        raise ImageError(
            f"Cannot read image {path}: unsupported file type {suffix or '(no extension)'!r} "
            f"(supported: {', '.join(READ_SUFFIXES)})."
        )
    if not path.exists():
        raise ImageError(f"Cannot read image {path}: file not found.")
    if not path.is_file():
        raise ImageError(f"Cannot read image {path}: not a file.")
    try:
        if suffix in _TIFF:
            import tifffile

            data = tifffile.imread(path)
        elif suffix == ".npy":
            data = _load_npy(path)
        else:
            import imageio.v3 as iio

            data = iio.imread(path)
    except ImageError:
        raise
    except Exception as exc:  # readers raise many types; all mean "cannot decode this file"
        reason = _reason(exc)
        if suffix in _PICTURE and "backend" in reason:  # imageio's wording for "no decoder"
            reason = f"not a readable {suffix[1:].upper()} image (corrupt or unsupported variant)."
        raise ImageError(f"Cannot read image {path}: {reason}") from exc
    return np.asarray(data)


def _load_npy(path: Path) -> np.ndarray:
    """Load a ``.npy`` file without pickles, with clear errors for other content."""
    with path.open("rb") as file:
        magic = file.read(6)
    if magic != b"\x93NUMPY":
        raise ImageError(f"Cannot read image {path}: not a NumPy .npy file.")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ImageError(
                f"Cannot read image {path}: it holds Python objects (pickled data), which are "
                "not loaded for safety; save a numeric array instead."
            ) from exc
        raise


def write_labels(path: str | os.PathLike[str], labels: np.ndarray) -> Path:
    """Write a label image atomically (a temporary file in the same folder, then a rename).

    Parameters
    ----------
    path : str or os.PathLike
        Destination. ``.tif``/``.tiff``: int32, zlib-compressed TIFF; ``.npy``: int32 NumPy
        file; ``.png``: uint16 PNG (2D labels from 0 to 65535 only). An existing file is
        replaced; the folder must exist.
    labels : numpy.ndarray
        2D (or, except for PNG, 3D) integer or bool array of label values, which must fit in
        int32.

    Returns
    -------
    pathlib.Path
        ``path`` as a Path.

    Raises
    ------
    ImageError
        For an unsupported extension, a missing folder, labels that are not integers or do
        not fit the file type, or a failed write (no partial file is left behind).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LABEL_SUFFIXES:
        raise ImageError(
            f"Cannot write labels to {path}: unsupported file type "
            f"{suffix or '(no extension)'!r} (supported: {', '.join(LABEL_SUFFIXES)})."
        )
    data = _label_array(path, labels, png=suffix == ".png")
    folder = path.parent
    if not folder.is_dir():
        raise ImageError(f"Cannot write labels to {path}: folder {folder} does not exist.")

    tmp = folder / f".{path.stem}.{secrets.token_hex(4)}.partial{suffix}"
    try:
        # O_EXCL: never clobber another file; mode 0o666 lets the umask decide, as open() does.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        if suffix in _TIFF:
            import tifffile

            tifffile.imwrite(tmp, data, compression="zlib")
        elif suffix == ".npy":
            np.save(tmp, data, allow_pickle=False)
        else:
            import imageio.v3 as iio

            iio.imwrite(tmp, data, extension=".png")
        os.replace(tmp, path)
    except Exception as exc:
        raise ImageError(f"Cannot write labels to {path}: {_reason(exc)}") from exc
    finally:  # also on KeyboardInterrupt; after a successful replace ``tmp`` is gone
        tmp.unlink(missing_ok=True)
    return path


def _label_array(path: Path, labels: np.ndarray, *, png: bool) -> np.ndarray:
    """Return ``labels`` as the array to store (int32, or uint16 for PNG), validated."""
    arr = np.asarray(labels)
    if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.integer):
        raise ImageError(
            f"Cannot write labels to {path}: labels must be integers, not {arr.dtype}."
        )
    if arr.ndim != 2 and (png or arr.ndim != 3):
        allowed = "2D" if png else "2D or 3D"
        raise ImageError(
            f"Cannot write labels to {path}: expected {allowed} labels, got shape {arr.shape}."
        )
    if arr.size == 0:
        raise ImageError(f"Cannot write labels to {path}: the labels are empty ({arr.shape}).")
    low, high = int(arr.min()), int(arr.max())
    if png:
        if low < 0 or high > _UINT16_MAX:
            raise ImageError(
                f"Cannot write labels to {path}: PNG holds labels 0 to {_UINT16_MAX}, these "
                f"range from {low} to {high}; use .tif or .npy."
            )
        return arr.astype(np.uint16, copy=False)
    if low < -_INT32_MAX - 1 or high > _INT32_MAX:
        raise ImageError(
            f"Cannot write labels to {path}: labels range from {low} to {high}, beyond int32."
        )
    return arr.astype(np.int32, copy=False)


def _reason(exc: BaseException) -> str:
    """One line describing ``exc``: its first message line, or its type name."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
