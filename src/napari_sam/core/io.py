"""Read images and write label images, with one clear :class:`ImageError` line on failure.

:func:`read_image` reads the pixels of 2D pictures and TIFF stacks as stored; volumes and
medical formats with their geometry are read by :func:`napari_sam.core.volume_io.read_volume`.
:func:`write_labels` writes every label format, medical ones with the image's geometry.

tifffile, imageio and SimpleITK are imported when first needed, so importing this module
stays cheap.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np

from .errors import ImageError, exception_line
from .geometry import VolumeGeometry
from .itk_io import ITK_WRITE_SUFFIXES, write_itk_labels
from .lazy_arrays import tiff_pixels

__all__ = ["LABEL_SUFFIXES", "READ_SUFFIXES", "file_suffix", "read_image", "write_labels"]

_TIFF = (".tif", ".tiff")
_PICTURE = (".png", ".jpg", ".jpeg", ".bmp")
READ_SUFFIXES: tuple[str, ...] = (*_TIFF, *_PICTURE, ".npy")
"""File name extensions :func:`read_image` understands (compared case-insensitively)."""

LABEL_SUFFIXES: tuple[str, ...] = (*_TIFF, ".png", ".npy", *ITK_WRITE_SUFFIXES)
"""File name extensions :func:`write_labels` can write (compared case-insensitively)."""

_INT32_MAX = int(np.iinfo(np.int32).max)
_UINT16_MAX = int(np.iinfo(np.uint16).max)


def file_suffix(path: str | os.PathLike[str]) -> str:
    """Lower-case extension of ``path``, with ``.nii.gz`` kept whole (``Path.suffix`` gives
    ``.gz``)."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file into a NumPy array, as stored (no conversion).

    Parameters
    ----------
    path : str or os.PathLike
        A TIFF (``.tif``, ``.tiff``, read with tifffile: the first series, so a multi-page
        file gives a stack; a large one stored uncompressed is memory-mapped, see
        :func:`~napari_sam.core.lazy_arrays.tiff_pixels`), PNG, JPEG or BMP (read with
        imageio) or NumPy ``.npy`` file (read without pickles).

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

            with tifffile.TiffFile(path) as tif:
                data = tiff_pixels(tif.series[0])  # large plain files are mapped, not read
        elif suffix == ".npy":
            data = _load_npy(path)
        else:
            import imageio.v3 as iio

            data = iio.imread(path)
    except ImageError:
        raise
    except Exception as exc:  # readers raise many types; all mean "cannot decode this file"
        reason = exception_line(exc)
        if suffix in _PICTURE and "backend" in reason:  # imageio's wording for "no decoder"
            reason = f"not a readable {suffix[1:].upper()} image (corrupt or unsupported variant)."
        raise ImageError(f"Cannot read image {path}: {reason}") from exc
    return data if isinstance(data, np.ndarray) else np.asarray(data)  # keeps a memmap


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


def write_labels(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    *,
    geometry: VolumeGeometry | None = None,
) -> Path:
    """Write a label image atomically (a temporary file in the same folder, then a rename).

    Parameters
    ----------
    path : str or os.PathLike
        Destination; the extension chooses the format. ``.tif``/``.tiff``: int32,
        zlib-compressed TIFF; ``.npy``: int32 NumPy file; ``.png``: uint16 PNG (2D labels
        from 0 to 65535 only); ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``: medical formats
        (written with SimpleITK, compressed, the smallest of uint8/uint16/int32 that holds
        the labels) carrying ``geometry``. An existing file is replaced; the folder must
        exist.
    labels : numpy.ndarray
        Integer or bool label values that fit in int32: 2D or 3D (2D to 4D for the medical
        formats, 2D for PNG).
    geometry : VolumeGeometry, optional
        The geometry of the image the labels belong to (``Volume.geometry`` from
        :func:`napari_sam.core.volume_io.read_volume`). Medical files get its spacing (in
        mm), origin and direction, so they overlay the image exactly in 3D Slicer, ITK-SNAP
        or nibabel; without it they get unit spacing. TIFF, PNG and NumPy files store no
        geometry. When given, the labels' shape must be ``geometry.shape``.

    Returns
    -------
    pathlib.Path
        ``path`` as a Path.

    Raises
    ------
    ImageError
        For an unsupported extension, a missing folder, labels that are not integers, do not
        fit the file type or do not match ``geometry``, or a failed write (no partial file
        is left behind).
    """
    path = Path(path)
    suffix = file_suffix(path)
    if suffix not in LABEL_SUFFIXES:
        raise ImageError(
            f"Cannot write labels to {path}: unsupported file type "
            f"{suffix or '(no extension)'!r} (supported: {', '.join(LABEL_SUFFIXES)})."
        )
    data = _label_array(path, labels, png=suffix == ".png", medical=suffix in ITK_WRITE_SUFFIXES)
    if geometry is not None and data.shape != geometry.shape:
        raise ImageError(
            f"Cannot write labels to {path}: the labels have shape {data.shape} but the image "
            f"they belong to has shape {geometry.shape}."
        )
    folder = path.parent
    if not folder.is_dir():
        raise ImageError(f"Cannot write labels to {path}: folder {folder} does not exist.")

    stem = path.name[: len(path.name) - len(suffix)]
    tmp = folder / f".{stem}.{secrets.token_hex(4)}.partial{suffix}"
    try:
        # O_EXCL: never clobber another file; mode 0o666 lets the umask decide, as open() does.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        if suffix in _TIFF:
            import tifffile

            tifffile.imwrite(tmp, data, compression="zlib")
        elif suffix == ".npy":
            np.save(tmp, data, allow_pickle=False)
        elif suffix in ITK_WRITE_SUFFIXES:
            write_itk_labels(tmp, data, geometry)
        else:
            import imageio.v3 as iio

            iio.imwrite(tmp, data, extension=".png")
        os.replace(tmp, path)
    except Exception as exc:
        raise ImageError(f"Cannot write labels to {path}: {exception_line(exc)}") from exc
    finally:  # also on KeyboardInterrupt; after a successful replace ``tmp`` is gone
        tmp.unlink(missing_ok=True)
    return path


def _label_array(path: Path, labels: np.ndarray, *, png: bool, medical: bool) -> np.ndarray:
    """Return ``labels`` as the array to store (int32, or uint16 for PNG), validated."""
    arr = np.asarray(labels)
    if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.integer):
        raise ImageError(
            f"Cannot write labels to {path}: labels must be integers, not {arr.dtype}."
        )
    allowed = "2D" if png else "2D to 4D" if medical else "2D or 3D"
    if arr.ndim != 2 and (png or arr.ndim not in ((3, 4) if medical else (3,))):
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
