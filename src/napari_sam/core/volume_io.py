"""Read images and volumes with their geometry; write label volumes that keep it.

:func:`read_volume` reads every format napari-sam understands and returns a :class:`Volume`:
the pixel array with its :class:`~napari_sam.core.geometry.VolumeGeometry`.

- **Medical formats** (NIfTI ``.nii``/``.nii.gz``, NRRD ``.nrrd``/``.nhdr``, MetaImage
  ``.mha``/``.mhd``, DICOM: a series folder or any file of it) are read with SimpleITK: one
  well-kept library that reads all of them (DICOM JPEG / JPEG 2000 transfer syntaxes included,
  through GDCM) and writes the label files back with the same geometry. The array is in
  SimpleITK's ``GetArrayFromImage`` order, ``(z, row, col)`` (``(t, z, row, col)`` in 4D),
  never reoriented; units are mm.
- **TIFF** is read with tifffile; axes and spacing come from ImageJ or OME metadata when the
  file has them (see :mod:`napari_sam.core.tiff_geometry`).
- **OME-Zarr** folders (OME-NGFF 0.4 and 0.5): level 0, with the spacing of its metadata
  (:mod:`napari_sam.core.lazy_images`; the command line reads 2D ones tile by tile).
- **PNG, JPEG, BMP, NumPy** files carry no geometry: unit spacing, axes guessed from the shape
  (:func:`guess_axes`).

SimpleITK, tifffile and imageio are imported when first needed.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ImageError
from .geometry import VolumeGeometry
from .io import READ_SUFFIXES, file_suffix, read_image
from .itk_io import ITK_WRITE_SUFFIXES, itk_detail, itk_quiet, write_itk_labels
from .lazy_arrays import is_on_disk, sample_values
from .lazy_images import is_zarr_folder, open_ome_zarr

__all__ = [
    "DICOM_SUFFIXES",
    "ITK_SUFFIXES",
    "ITK_WRITE_SUFFIXES",
    "READABLE_SUFFIXES",
    "VOLUME_SUFFIXES",
    "Volume",
    "check_readable",
    "guess_axes",
    "is_dicom_file",
    "looks_like_labels",
    "read_volume",
    "write_itk_labels",
]

ITK_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
"""Medical file types read with SimpleITK (besides DICOM)."""

DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".ima")
"""File types taken as DICOM (files without these extensions are recognised by content)."""

_TIFF = (".tif", ".tiff")
VOLUME_SUFFIXES: tuple[str, ...] = (*_TIFF, *ITK_SUFFIXES, *DICOM_SUFFIXES)
"""File types that can hold volumes (:func:`read_volume` also reads 2D pictures)."""

READABLE_SUFFIXES: tuple[str, ...] = (*READ_SUFFIXES, *ITK_SUFFIXES, *DICOM_SUFFIXES)
"""Every file type :func:`read_volume` reads (DICOM files are also recognised by content)."""

_FORMAT_NAMES = {
    ".nii": "NIfTI",
    ".nii.gz": "NIfTI",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
}

_LABEL_WORDS = ("label", "labels", "seg", "segmentation", "mask", "masks", "annotation", "gt")
MAX_LABEL_VALUES = 16
"""An integer image with at most this many distinct values (and none negative) is labels."""


@dataclass(frozen=True)
class Volume:
    """An image or volume as read from a file, with its geometry.

    Attributes
    ----------
    data : numpy.ndarray
        Pixel values, shaped ``geometry.shape``, plus a last axis of channels when
        :attr:`has_channels` (TIFF channels are moved there; RGB(A) already is).
    geometry : VolumeGeometry
        Axes, spacing, origin, direction and units of the non-channel axes.
    rgb : bool
        The last axis holds RGB or RGBA colours.
    modality : str or None
        The DICOM modality (``"CT"``, ``"MR"``, ...) when the file says it.
    source : pathlib.Path or None
        The file or DICOM folder read.
    """

    data: np.ndarray
    geometry: VolumeGeometry
    rgb: bool = False
    modality: str | None = None
    source: Path | None = None

    @property
    def has_channels(self) -> bool:
        """Whether :attr:`data` has a last axis of channels (colours included)."""
        return self.data.ndim == self.geometry.ndim + 1

    @property
    def is_volume(self) -> bool:
        """Whether there is more than one 2D plane axis (z and/or t)."""
        return self.geometry.ndim >= 3


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a file starting with the DICOM preamble and ``DICM`` marker."""
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def guess_axes(shape: tuple[int, ...]) -> tuple[str, bool, bool]:
    """Axes of an array that has no metadata, from its shape.

    Parameters
    ----------
    shape : tuple of int
        The array's shape.

    Returns
    -------
    axes : str
        Letters of the non-channel axes (``"yx"``, ``"zyx"`` or ``"tzyx"``).
    channels_last : bool
        The last axis holds channels.
    rgb : bool
        Those channels are RGB(A).

    Notes
    -----
    2D: ``(row, col)``. 3D: a last axis of 3 or 4 is RGB(A); a last axis of at most 8
    behind a longer first axis holds channels; otherwise ``(z, row, col)``. 4D: a last axis
    of 3 or 4 makes an RGB(A) volume, otherwise ``(t, z, row, col)``.
    """
    n = len(shape)
    if n == 2:
        return "yx", False, False
    if n == 3:
        if shape[-1] in (3, 4):
            return "yx", True, True
        if shape[-1] <= 8 < shape[0]:
            return "yx", True, False
        return "zyx", False, False
    if n == 4:
        if shape[-1] in (3, 4):
            return "zyx", True, True
        return "tzyx", False, False
    raise ImageError(
        f"Cannot use an array of shape {shape} ({n}D): expected 2D to 4D (t, z, row, col)."
    )


def read_volume(path: str | os.PathLike[str]) -> Volume:
    """Read an image or a volume with its geometry.

    Parameters
    ----------
    path : str or os.PathLike
        A NIfTI, NRRD, MetaImage, DICOM (a series folder, or any file of the series: the
        whole series is read), TIFF, PNG, JPEG, BMP or ``.npy`` file, or an OME-Zarr folder.

    Returns
    -------
    Volume
        The data and its geometry (see the module documentation).

    Raises
    ------
    ImageError
        One line naming the path and the reason: missing, unsupported, truncated or damaged
        file, a folder holding no or several DICOM series, a multi-component medical image,
        a zarr folder that is not an OME-Zarr image or too large a volume.
    """
    path = Path(path)
    if is_zarr_folder(path):
        image = open_ome_zarr(path)  # read whole here (the command line tiles 2D ones)
        return Volume(image.read(), image.geometry, rgb=image.rgb, source=path)
    if path.is_dir():
        return _read_dicom(path, None)
    check_readable(path)
    suffix = file_suffix(path)
    if suffix in DICOM_SUFFIXES or suffix not in READABLE_SUFFIXES:  # DICOM by content
        return _read_dicom(path.parent, path)
    if suffix in ITK_SUFFIXES:
        return _read_itk(path, suffix)
    if suffix in _TIFF:
        from .tiff_geometry import read_tiff_volume

        data, geometry, rgb = read_tiff_volume(path)
        return Volume(data, geometry, rgb=rgb, source=path)
    data = read_image(path)  # checks the extension and explains what is supported
    axes, _, rgb = guess_axes(data.shape)
    geometry = VolumeGeometry.default(data.shape[: len(axes)], axes)
    return Volume(data, geometry, rgb=rgb, source=path)


def check_readable(path: str | os.PathLike[str]) -> None:
    """Fail early, without decoding, on a path :func:`read_volume` would refuse at once.

    Raises
    ------
    ImageError
        If the file does not exist, is not a file or a folder, or has an extension that is
        not supported (and is not a DICOM file by content).
    """
    path = Path(path)
    if path.is_dir():
        return  # a DICOM folder: what it holds is checked when it is read
    if not path.exists():
        raise ImageError(f"Cannot read image {path}: file not found.")
    suffix = file_suffix(path)
    if suffix not in READABLE_SUFFIXES and not is_dicom_file(path):
        raise ImageError(
            f"Cannot read image {path}: unsupported file type {suffix or '(no extension)'!r} "
            f"(supported: {', '.join(READABLE_SUFFIXES)}, a DICOM folder or an OME-Zarr folder)."
        )
    if not path.is_file():
        raise ImageError(f"Cannot read image {path}: not a file.")


def _read_itk(path: Path, suffix: str) -> Volume:
    if not path.is_file():
        raise ImageError(f"Cannot read image {path}: not a file.")
    if suffix in (".nii", ".nii.gz"):
        _check_nifti_complete(path, gz=suffix == ".nii.gz")
    with itk_quiet() as sitk:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise ImageError(f"Cannot read image {path}: {_itk_reason(exc, suffix)}") from exc
        return _from_itk(sitk, image, path)


def _from_itk(sitk: Any, image: Any, path: Path, modality: str | None = None) -> Volume:
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise ImageError(
            f"Cannot read image {path}: it has {components} values per voxel (colour or "
            "vector data); napari-sam reads scalar (grey) images and volumes."
        )
    if image.GetDimension() not in (2, 3, 4):
        raise ImageError(
            f"Cannot read image {path}: it is {image.GetDimension()}D; expected 2D to 4D."
        )
    data = sitk.GetArrayFromImage(image)
    return Volume(data, VolumeGeometry.from_itk(image), modality=modality, source=path)


def _itk_reason(exc: RuntimeError, suffix: str) -> str:
    """One line for a failed SimpleITK read (its messages start with a C++ source location)."""
    fmt = _FORMAT_NAMES.get(suffix, "DICOM")
    detail = itk_detail(exc)
    if "Unable to determine ImageIO reader" in detail:
        return f"not a readable {fmt} file (damaged, empty or another format)."
    if "No such file" in detail:  # MetaImage's words for a data part that ended early
        detail = ""
    return f"damaged or truncated {fmt} file" + (f" ({detail})." if detail else ".")


def _check_nifti_complete(path: Path, *, gz: bool) -> None:
    """Raise ImageError if a NIfTI file holds fewer bytes than its header announces.

    ITK reads a truncated NIfTI file (plain or gzipped) without complaint and fills the
    missing voxels with zeros, so the check is ours: the gzip stream is decompressed once to
    its end (which also verifies its checksum) and its length compared with the header's.
    """
    opener = gzip.open if gz else open
    try:
        with opener(path, "rb") as f:
            header = f.read(540)
    except gzip.BadGzipFile:
        raise ImageError(
            f"Cannot read image {path}: not gzip-compressed, although its name ends in .gz."
        ) from None
    except (OSError, EOFError, zlib.error):
        raise ImageError(f"Cannot read image {path}: {_TRUNCATED_GZIP}") from None
    expected = _nifti_expected_bytes(header)
    if expected is None:
        return  # not a NIfTI header: ITK's own error will say so
    if gz:
        try:
            actual = _gzip_length(path)
        except (OSError, EOFError, zlib.error):
            raise ImageError(f"Cannot read image {path}: {_TRUNCATED_GZIP}") from None
    else:
        actual = path.stat().st_size
    if actual < expected:
        raise ImageError(
            f"Cannot read image {path}: the file is truncated ({actual} of the {expected} "
            "bytes its header announces)."
        )


_TRUNCATED_GZIP = (
    "the gzip data is truncated or corrupt (the file was cut short or damaged, e.g. by an "
    "interrupted copy or download)."
)


def _nifti_expected_bytes(header: bytes) -> int | None:
    """Size the NIfTI-1 or NIfTI-2 ``header`` announces for header plus voxels, or None."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or bitpix <= 0:
        return None
    voxels = int(np.prod([max(int(d), 1) for d in dims[1 : dims[0] + 1]]))
    return max(offset, 348) + voxels * bitpix // 8


def _gzip_length(path: Path) -> int:
    """Decompressed length of a gzip file; raises EOFError/OSError if it is cut short."""
    total = 0
    with gzip.open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            total += len(chunk)
    return total


def _read_dicom(folder: Path, file: Path | None) -> Volume:
    """Read the DICOM series in ``folder`` (the one ``file`` belongs to, if given)."""
    where = file or folder
    with itk_quiet() as sitk:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        uid = _series_of(sitk, file) if file is not None else None
        if file is not None and uid not in series:  # a lone file, or one GDCM cannot group
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(file))
            image = _execute(reader, file)
            return _from_itk(sitk, image, file, _tag(reader.HasMetaDataKey, reader.GetMetaData))
        if uid is None:
            uid = _only_series(sitk, folder, series)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        reader.MetaDataDictionaryArrayUpdateOn()
        image = _execute(reader, where)
        modality = _tag(
            lambda key: reader.HasMetaDataKey(0, key), lambda key: reader.GetMetaData(0, key)
        )
        return _from_itk(sitk, image, where, modality)


def _only_series(sitk: Any, folder: Path, series: tuple[str, ...]) -> str:
    """The one series in ``folder``, or an ImageError naming the problem."""
    if not series:
        raise ImageError(f"Cannot read {folder}: the folder holds no DICOM series.")
    if len(series) > 1:
        listed = ", ".join(
            f"{s} ({len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s))} files)"
            for s in series
        )
        raise ImageError(
            f"Cannot read {folder}: the folder holds {len(series)} DICOM series ({listed}); "
            "open one file of the series you want, or put each series in its own folder."
        )
    return series[0]


def _execute(reader: Any, where: Path) -> Any:
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise ImageError(f"Cannot read image {where}: {_itk_reason(exc, '.dcm')}") from exc


def _tag(has: Any, get: Any, key: str = "0008|0060") -> str | None:
    """A DICOM tag's value (by default the modality, ``"CT"``, ``"MR"``...), or None."""
    return _clean(get(key)) if has(key) else None


def _series_of(sitk: Any, file: Path) -> str | None:
    """Series instance UID of a DICOM file, or None if it has none."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(file))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageError(f"Cannot read image {file}: {_itk_reason(exc, '.dcm')}") from exc
    return _tag(reader.HasMetaDataKey, reader.GetMetaData, "0020|000e")


def _clean(value: str | None) -> str | None:
    """DICOM strings are padded with spaces or NULs to an even length."""
    return (value.strip(" \x00") or None) if value is not None else None


def looks_like_labels(data: np.ndarray, name: str = "") -> bool:
    """Whether an image read from a file is a label image rather than intensities.

    The rule: the values are integers (or bool), none is negative, and either the file
    name has a word such as ``label``, ``seg``, ``mask`` or ``gt`` in it (words split at
    ``_ - . space`` and digits), or there are at most :data:`MAX_LABEL_VALUES` distinct
    values (a binary mask, a few organs). CT volumes (negative values), MRI and microscopy
    (hundreds of grey levels) are images.

    Parameters
    ----------
    data : numpy.ndarray
        The pixel values.
    name : str
        The file name (or path).

    Returns
    -------
    bool
    """
    if data.dtype != np.bool_ and not np.issubdtype(data.dtype, np.integer):
        return False
    if data.size == 0:
        return False
    # A cheap look at a sample first: most images show many values within a few thousand.
    # From a mapped file the sample is whole rows (a strided one would read all of it), and
    # negative values are looked for in the sample until the whole file must be read anyway.
    mapped = is_on_disk(data)
    if mapped:
        sample = sample_values(data, 100_000)
    else:
        flat = data.reshape(-1)
        sample = flat[:: max(1, flat.size // 100_000)]
    signed = data.dtype.kind == "i"
    if signed and int((sample if mapped else data).min()) < 0:
        return False
    words = "".join(c if c.isalpha() else " " for c in Path(name).name.lower()).split()
    if any(w in _LABEL_WORDS for w in words):
        return True
    if np.unique(sample).size > MAX_LABEL_VALUES:
        return False
    values = np.unique(data)
    return values.size <= MAX_LABEL_VALUES and not (signed and values[0] < 0)
