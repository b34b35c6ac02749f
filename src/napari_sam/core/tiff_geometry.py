"""TIFF stacks and hyperstacks with the axes and spacing their ImageJ or OME metadata give.

tifffile names the axes of a file's first series (``T`` time, ``Z`` depth, ``C`` channel,
``S`` colour samples, ``Y``/``X``, and ``Q``/``I``/... for axes it cannot name). They are
mapped to napari-sam's ``(t, z, row, col[, channel])`` layout:

- ``C`` or ``S`` is the channel axis, moved last (``S`` with 3 or 4 entries last is RGB(A));
- one unnamed axis is ``z`` (or ``t`` when the file names a ``Z`` axis): a plain multi-page
  TIFF is a z-stack;
- the other axes are put in ``t, z, y, x`` order.

Spacing: ``X``/``Y`` from the resolution tags (pixels per unit: spacing = 1 / resolution),
with the unit from ImageJ's ``unit`` or the TIFF resolution unit (inch, cm); ``Z`` from
ImageJ's ``spacing``; ``T`` from ImageJ's ``finterval`` (seconds). OME-TIFF files give
``PhysicalSizeX/Y/Z`` (with their units, µm by default) and ``TimeIncrement``. The origin is
zero and there is no rotation. A file without such metadata gets unit spacing and no units.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ImageError, exception_line
from .geometry import VolumeGeometry, normalize_unit
from .lazy_arrays import tiff_pixels

__all__ = ["map_tiff_axes", "read_tiff_volume", "tiff_spacing"]

_UNNAMED = "QIERHAPLVM"  # tifffile's letters for sequences and other axes it cannot name


def read_tiff_volume(path: Path) -> tuple[np.ndarray, VolumeGeometry, bool]:
    """Read the first series of a TIFF file with its axes and spacing.

    Parameters
    ----------
    path : pathlib.Path
        An existing ``.tif``/``.tiff`` file.

    Returns
    -------
    data : numpy.ndarray
        Shaped ``geometry.shape`` plus a last channel axis if the file has channels; a
        copy-on-write ``numpy.memmap`` of the file when it is large and stored uncompressed
        (:func:`~napari_sam.core.lazy_arrays.tiff_pixels`).
    geometry : VolumeGeometry
        Axes (``"yx"``, ``"zyx"``, ``"tyx"`` or ``"tzyx"``), spacing and units.
    rgb : bool
        Whether the channel axis holds RGB(A) colours.

    Raises
    ------
    ImageError
        If the file cannot be decoded or its axes cannot be mapped to ``(t, z, row, col)``.
    """
    import tifffile

    if not path.is_file():
        raise ImageError(f"Cannot read image {path}: not a file.")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = tiff_pixels(series)  # large plain files are mapped, not read
            axes = series.axes.upper()
            meta = tiff_spacing(tif)
    except Exception as exc:  # tifffile raises many types; all mean "cannot decode this file"
        raise ImageError(f"Cannot read image {path}: {exception_line(exc)}") from exc
    if len(axes) != data.ndim:  # never seen, but the mapping below relies on it
        axes = "Q" * (data.ndim - 2) + "YX"
    order, letters, channel = map_tiff_axes(path, axes, data.shape)
    data = np.transpose(data, order)
    rgb = channel == "S" and data.shape[-1] in (3, 4)
    shape = data.shape[: len(letters)]
    spacing = tuple(meta.get(a, (1.0, ""))[0] for a in letters)
    units = tuple(meta.get(a, (1.0, ""))[1] for a in letters)
    base = VolumeGeometry.default(shape, letters)
    geometry = VolumeGeometry(letters, shape, spacing, base.origin, base.direction, units)
    return data, geometry, rgb


def map_tiff_axes(
    path: Path, axes: str, shape: tuple[int, ...]
) -> tuple[list[int], str, str | None]:
    """Transpose order, napari-sam axis letters and channel letter for tifffile's ``axes``."""
    channels = [i for i, a in enumerate(axes) if a in "CS"]
    unnamed = [i for i, a in enumerate(axes) if a in _UNNAMED]
    names = {i: a.lower() for i, a in enumerate(axes) if a in "TZYX"}
    problem = None
    if len(channels) > 1:
        problem = "it has more than one channel axis"
    elif "Y" not in axes or "X" not in axes:
        problem = "it has no Y and X axes"
    elif len(unnamed) > 1 or (unnamed and "Z" in axes and "T" in axes):
        problem = "it has axes that cannot be told apart as time or depth"
    elif len(axes) - len(channels) > 4:
        problem = "it has more than 4 axes besides channels"
    if problem:
        raise ImageError(
            f"Cannot read image {path}: {problem} (axes {axes!r}, shape {shape}); "
            "save it as (t, z, y, x) with channels last, or as ImageJ or OME-TIFF."
        )
    for i in unnamed:
        names[i] = "t" if "Z" in axes else "z"
    spatial = sorted(names, key=lambda i: "tzyx".index(names[i]))
    letters = "".join(names[i] for i in spatial)
    return spatial + channels, letters, axes[channels[0]] if channels else None


def tiff_spacing(tif: Any) -> dict[str, tuple[float, str]]:
    """Spacing and unit per axis letter (``"X"``, ``"Y"``, ``"Z"``, ``"T"``) found in ``tif``."""
    out: dict[str, tuple[float, str]] = {}
    if tif.is_ome and tif.ome_metadata:
        out.update(_ome_spacing(tif.ome_metadata))
        if out:
            return {k.lower(): v for k, v in out.items()}
    page = tif.pages[0]
    ij = tif.imagej_metadata or {}
    unit = normalize_unit(ij.get("unit")) if ij.get("unit") else ""
    tags = page.tags
    res_unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 1
    scale = 1.0
    if not unit and res_unit in (2, 3):  # inch, centimetre -> micrometres
        unit, scale = "um", 25400.0 if res_unit == 2 else 10000.0
    for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
        if tag in tags:
            num, den = tags[tag].value
            if (num > 0 and den > 0 and (num, den) != (1, 1)) or unit:
                out[axis] = (scale * den / num if num > 0 else 1.0, unit)
    if ij.get("spacing"):
        out["Z"] = (float(ij["spacing"]), unit)
    if ij.get("finterval"):
        out["T"] = (float(ij["finterval"]), "s")
    return {k.lower(): v for k, v in out.items()}


def _ome_spacing(xml: str) -> dict[str, tuple[float, str]]:
    """``PhysicalSizeX/Y/Z`` and ``TimeIncrement`` of the first OME ``Pixels`` element."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return {}
    out = {}
    for axis in "XYZ":
        value = pixels.get(f"PhysicalSize{axis}")
        if value is not None:
            out[axis] = (float(value), normalize_unit(pixels.get(f"PhysicalSize{axis}Unit", "um")))
    if pixels.get("TimeIncrement") is not None:
        unit = normalize_unit(pixels.get("TimeIncrementUnit", "s"))
        out["T"] = (float(pixels.get("TimeIncrement")), unit)
    return out
