"""Medical files made inside the tests with SimpleITK: volumes, label files, DICOM series."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

#: Array order (z, row, col) shape of the test volumes: every axis has its own length.
SHAPE = (7, 9, 11)
#: SimpleITK (x, y, z) order: col spacing, row spacing, slice spacing (mm).
SPACING_XYZ = (0.7, 0.8, 2.5)
ORIGIN_XYZ = (10.5, -20.25, 33.0)
#: Mirrored x and y: how NIfTI files stored "RAS" look in ITK's LPS world.
FLIPPED_XYZ = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def rotated_xyz(degrees: float = 30.0) -> tuple[float, ...]:
    """A direction rotated about z (an oblique scan)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


def volume_data(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    """int16 values from -1000 to 1000 with a bright box at a known place."""
    rng = np.random.default_rng(seed)
    data = rng.integers(-1000, 1000, shape, dtype=np.int16)
    data[2:5, 3:6, 4:8] = 3000
    return data


def itk_image(data: np.ndarray, direction=FLIPPED_XYZ, spacing=SPACING_XYZ, origin=ORIGIN_XYZ):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(data, isVector=False)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def write_itk(path: Path, data: np.ndarray, **geometry) -> Path:
    import SimpleITK as sitk

    sitk.WriteImage(itk_image(data, **geometry), str(path), True)
    return path


def write_dicom_series(
    folder: Path, data: np.ndarray, *, series_uid: str, modality: str = "CT", prefix: str = "im"
) -> list[Path]:
    """One DICOM file per slice, as SimpleITK's own example does (position per slice)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    volume = itk_image(data, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    paths = []
    for z in range(data.shape[0]):
        plane = volume[:, :, z]
        position = volume.TransformIndexToPhysicalPoint((0, 0, z))
        for key, value in {
            "0008|0060": modality,
            "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
            "0020|000d": series_uid + ".0",
            "0020|000e": series_uid,
            "0020|0013": str(z + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": str(SPACING_XYZ[2]),
            "0008|0018": f"{series_uid}.{z + 1}",
        }.items():
            plane.SetMetaData(key, value)
        path = folder / f"{prefix}{z:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(plane)
        paths.append(path)
    return paths
