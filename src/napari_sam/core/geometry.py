"""Where the voxels of an image sit in space: spacing, origin, direction cosines and units.

Everything here is in **array order**, the order of the axes of the NumPy array (slowest
first: ``(z, row, col)`` for a volume, as SimpleITK's ``GetArrayFromImage`` gives it, or
``(t, z, row, col)``). SimpleITK and the file formats use the reverse order ``(x, y, z)``; the
conversion happens in :meth:`VolumeGeometry.from_itk` and :meth:`VolumeGeometry.apply_to_itk`
only, by reversing tuples and the rows and columns of the direction matrix (no arithmetic, so
a read-write round trip keeps every value bit for bit).

The physical position (in ``units``, LPS patient coordinates for medical scans, reversed to
array order) of the voxel with array index ``i`` is::

    origin + direction @ (spacing * i)

**Direction cosines.** When ``direction`` is diagonal with entries +1 or -1 (the scan's axes
are the patient's axes, possibly mirrored: by far the most common case, e.g. NIfTI files
stored "RAS" have the row and column axes mirrored), napari can show it exactly by a negative
``scale`` on the mirrored axes: :meth:`VolumeGeometry.napari_scale`. The array itself is never
flipped, so voxel indices (napari's data coordinates, the CLI's prompt coordinates) are those
of the file. Any other direction (axes swapped or oblique) cannot be shown by scale and
translate alone; the view then shows the voxel grid as stored and :attr:`notice` says so.
Labels are always written on the scan's own voxel grid with its direction, so they overlay
exactly in other tools either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DIRECTION_TOLERANCE", "VolumeGeometry", "normalize_unit"]

DIRECTION_TOLERANCE = 1e-5
"""Largest deviation of a direction entry from 0 or +-1 still called axis-aligned (NIfTI
quaternions stored in float32 put directions off by ~1e-7)."""

_UNIT_ALIASES = {
    "mm": "mm",
    "millimeter": "mm",
    "millimetre": "mm",
    "um": "um",
    "µm": "um",
    "μm": "um",
    "\\u00b5m": "um",
    "micron": "um",
    "microns": "um",
    "micrometer": "um",
    "micrometre": "um",
    "nm": "nm",
    "nanometer": "nm",
    "nanometre": "nm",
    "cm": "cm",
    "centimeter": "cm",
    "m": "m",
    "meter": "m",
    "s": "s",
    "sec": "s",
    "second": "s",
    "seconds": "s",
    "ms": "ms",
    "min": "min",
    "pixel": "",
    "pixels": "",
    "": "",
}

_TO_MM = {"mm": 1.0, "um": 1e-3, "nm": 1e-6, "cm": 10.0, "m": 1000.0}


def normalize_unit(unit: str | None) -> str:
    """Return the short name of a length or time unit (``"micron"`` -> ``"um"``).

    Parameters
    ----------
    unit : str or None
        A unit as written in file metadata (ImageJ, OME, DICOM), in any case.

    Returns
    -------
    str
        ``"mm"``, ``"um"``, ``"nm"``, ``"cm"``, ``"m"``, ``"s"``, ``"ms"``, ``"min"``, ``""``
        (unknown, i.e. pixels) or the input, stripped, when it is not recognised.
    """
    text = (unit or "").strip()
    return _UNIT_ALIASES.get(text.lower(), text)


@dataclass(frozen=True)
class VolumeGeometry:
    """Voxel grid of an image: shape, spacing, origin, direction and units, in array order.

    Attributes
    ----------
    axes : str
        One letter per axis: ``"yx"`` (2D), ``"zyx"`` (a volume), ``"tyx"`` (a 2D time
        series), ``"tzyx"`` (a volume over time). Channels are not part of the geometry.
    shape : tuple of int
        Size along each axis.
    spacing : tuple of float
        Distance between voxel centres along each axis, in ``units``.
    origin : tuple of float
        Physical position of the centre of voxel ``(0, 0, ...)``.
    direction : tuple of tuple of float
        Square matrix; column ``j`` is the unit vector of array axis ``j`` in physical
        coordinates (array order). The identity for images without orientation.
    units : tuple of str
        Unit of each axis (see :func:`normalize_unit`): ``"mm"`` for medical scans, ``""``
        when unknown (pixels).
    """

    axes: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[tuple[float, ...], ...]
    units: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.axes)
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        object.__setattr__(
            self, "direction", tuple(tuple(float(v) for v in row) for row in self.direction)
        )
        object.__setattr__(self, "units", tuple(normalize_unit(u) for u in self.units))
        sizes = {len(self.shape), len(self.spacing), len(self.origin), len(self.units)}
        if sizes != {n} or len(self.direction) != n or any(len(r) != n for r in self.direction):
            raise ValueError(f"inconsistent geometry for axes {self.axes!r}: {self}")

    @classmethod
    def default(cls, shape: tuple[int, ...], axes: str | None = None) -> VolumeGeometry:
        """Geometry of an array without metadata: unit spacing, zero origin, no units.

        Parameters
        ----------
        shape : tuple of int
            The array's shape (channels excluded).
        axes : str, optional
            Axis letters; by default the last ``len(shape)`` letters of ``"tzyx"``.
        """
        n = len(shape)
        return cls(
            axes=axes or "tzyx"[-n:],
            shape=shape,
            spacing=(1.0,) * n,
            origin=(0.0,) * n,
            direction=tuple(tuple(float(i == j) for j in range(n)) for i in range(n)),
            units=("",) * n,
        )

    @property
    def ndim(self) -> int:
        """Number of axes (channels excluded)."""
        return len(self.axes)

    @property
    def affine(self) -> np.ndarray:
        """``(ndim + 1, ndim + 1)`` matrix taking array indices to physical coordinates."""
        n = self.ndim
        out = np.eye(n + 1)
        out[:n, :n] = np.asarray(self.direction) * np.asarray(self.spacing)[np.newaxis, :]
        out[:n, n] = self.origin
        return out

    @property
    def axis_signs(self) -> tuple[int, ...] | None:
        """+1/-1 per axis when ``direction`` is diagonal up to signs (axis-aligned), else None."""
        d = np.asarray(self.direction)
        diag = np.diag(d)
        off = d - np.diag(diag)
        if np.abs(off).max(initial=0.0) > DIRECTION_TOLERANCE:
            return None
        if np.abs(np.abs(diag) - 1.0).max(initial=0.0) > DIRECTION_TOLERANCE:
            return None
        return tuple(1 if v > 0 else -1 for v in diag)

    @property
    def notice(self) -> str | None:
        """A sentence for the user when napari cannot show the scan in patient orientation."""
        if self.axis_signs is not None:
            return None
        return (
            "this scan's axes are rotated or swapped relative to the patient axes (direction "
            f"{_matrix_text(self.direction)}); napari shows its voxel grid as stored, so the "
            "view may look rotated or mirrored compared with a radiology viewer and the mm "
            "coordinates napari shows run along the grid, not the patient axes. Saved labels "
            "keep the scan's own geometry and overlay it exactly in other tools."
        )

    def napari_scale(self) -> tuple[float, ...]:
        """napari ``scale``: the spacing, negative along mirrored axes when axis-aligned.

        With :attr:`origin` as ``translate`` napari's world coordinates are then the physical
        coordinates (patient coordinates for scans) and the view has the patient orientation,
        while the data (and every voxel index) stays as stored.
        """
        signs = self.axis_signs or (1,) * self.ndim
        return tuple(s * sp for s, sp in zip(signs, self.spacing, strict=True))

    def spacing_in_mm(self) -> tuple[float, ...]:
        """Spacing with lengths converted to mm (unknown units and time kept as they are)."""
        return tuple(
            sp * _TO_MM.get(u, 1.0) for sp, u in zip(self.spacing, self.units, strict=True)
        )

    def origin_in_mm(self) -> tuple[float, ...]:
        """Origin with lengths converted to mm (unknown units and time kept as they are)."""
        return tuple(o * _TO_MM.get(u, 1.0) for o, u in zip(self.origin, self.units, strict=True))

    def describe(self) -> str:
        """Short text: ``"25 x 256 x 256 voxels of 6.5 x 0.781 x 0.781 mm"``, or ``"64 x 96"``
        for an image without spacing."""
        size = " x ".join(str(s) for s in self.shape)
        if not any(self.units) and all(s == 1.0 for s in self.spacing):
            return size
        unit = self.units[-1] if len(set(self.units)) == 1 else ""
        spacing = " x ".join(f"{s:.3g}" for s in self.spacing)
        what = "pixels" if self.ndim == 2 else "voxels"
        return f"{size} {what} of {spacing}{' ' + unit if unit else ''}"

    # --- SimpleITK (x, y, z) order <-> array order ---------------------------------------

    @classmethod
    def from_itk(cls, image: Any, axes: str | None = None) -> VolumeGeometry:
        """Geometry of a SimpleITK image, in array order, units mm.

        Parameters
        ----------
        image : SimpleITK.Image
            Any scalar image (2D to 4D).
        axes : str, optional
            Axis letters; by default ``"yx"``, ``"zyx"`` or ``"tzyx"`` by dimension.
        """
        n = image.GetDimension()
        flat = image.GetDirection()
        itk_dir = [flat[i * n : (i + 1) * n] for i in range(n)]
        axes = axes or "tzyx"[-n:]
        return cls(
            axes=axes,
            shape=tuple(reversed(image.GetSize())),
            spacing=tuple(reversed(image.GetSpacing())),
            origin=tuple(reversed(image.GetOrigin())),
            direction=tuple(tuple(reversed(row)) for row in reversed(itk_dir)),
            # The formats store lengths in mm; a 4th (time) axis has no unit we could trust.
            units=tuple("" if a == "t" else "mm" for a in axes),
        )

    def apply_to_itk(self, image: Any) -> None:
        """Give the SimpleITK ``image`` (made from an array of :attr:`shape`) this geometry.

        Lengths are converted to mm, the unit of the medical file formats.
        """
        if image.GetDimension() != self.ndim:
            raise ValueError(f"a {image.GetDimension()}D image cannot take geometry {self}")
        image.SetSpacing(tuple(reversed(self.spacing_in_mm())))
        image.SetOrigin(tuple(reversed(self.origin_in_mm())))
        rows = [tuple(reversed(row)) for row in reversed(self.direction)]
        image.SetDirection(tuple(v for row in rows for v in row))


def _matrix_text(matrix: tuple[tuple[float, ...], ...]) -> str:
    return "[" + "; ".join(" ".join(f"{v:.3g}" for v in row) for row in matrix) + "]"
