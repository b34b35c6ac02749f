"""SimpleITK helpers shared by reading volumes and writing label files.

:mod:`napari_sam.core.io` (``write_labels``) and :mod:`napari_sam.core.volume_io`
(``read_volume``) both use them; they live here, below both, so neither imports the other
back. SimpleITK is imported when first needed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .geometry import VolumeGeometry

__all__ = ["ITK_WRITE_SUFFIXES", "itk_detail", "itk_quiet", "write_itk_labels"]

ITK_WRITE_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz", ".nrrd", ".mha")
"""Medical file types labels can be written to (single files, so they can be written
atomically)."""


@contextlib.contextmanager
def itk_quiet() -> Iterator[Any]:
    """SimpleITK with ITK's warnings off (they go to stderr, beside our one-line errors)."""
    import SimpleITK as sitk

    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield sitk
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)


def itk_detail(exc: RuntimeError) -> str:
    """The last line of a SimpleITK error (the first ones name C++ source files)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1].removeprefix("sitk::ERROR:").strip() if lines else type(exc).__name__


def write_itk_labels(path: Path, data: np.ndarray, geometry: VolumeGeometry | None) -> None:
    """Write an integer label array to a medical file with SimpleITK, with ``geometry``.

    Used by :func:`napari_sam.core.io.write_labels`, which validates ``data`` and makes the
    write atomic. The voxel type is the smallest that holds the labels (uint8, uint16 or
    int32), as label files usually are; the file is compressed.

    Parameters
    ----------
    path : pathlib.Path
        Destination with one of :data:`ITK_WRITE_SUFFIXES`.
    data : numpy.ndarray
        2D to 4D integer labels shaped ``geometry.shape``.
    geometry : VolumeGeometry or None
        Written into the file; None gives unit spacing, zero origin and no rotation.
    """
    low, high = int(data.min()), int(data.max())
    if low >= 0 and high <= np.iinfo(np.uint8).max:
        data = data.astype(np.uint8, copy=False)
    elif low >= 0 and high <= np.iinfo(np.uint16).max:
        data = data.astype(np.uint16, copy=False)
    else:
        data = data.astype(np.int32, copy=False)
    if geometry is None:
        geometry = VolumeGeometry.default(data.shape)
    with itk_quiet() as sitk:
        image = sitk.GetImageFromArray(np.ascontiguousarray(data), isVector=False)
        geometry.apply_to_itk(image)
        try:
            sitk.WriteImage(image, str(path), True)
        except RuntimeError as exc:  # e.g. disk full; write_labels reports it in one line
            raise OSError(itk_detail(exc)) from exc
