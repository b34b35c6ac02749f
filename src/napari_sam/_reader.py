"""napari reader: scans and stacks open with their physical geometry.

The npe2 ``readers`` contribution in ``napari.yaml`` points at :func:`get_reader`. Files are
read by :func:`napari_sam.core.volume_io.read_volume`; this module only turns the result into
napari layer data:

- ``scale`` = the spacing and ``translate`` = the origin, so napari's world coordinates are
  physical (mm for scans; patient LPS coordinates in array order, ``(z, y, x)``), with
  ``units`` set. Axes the scan stores mirrored get a negative scale, so the view has the
  patient orientation while the data keeps the file's voxel order (see
  :mod:`napari_sam.core.geometry`); scans whose axes are swapped or oblique are shown as
  stored, with a notice.
- A label file opens as a Labels layer (rule: :func:`napari_sam.core.volume_io.looks_like_labels`).
- CT volumes open with a soft-tissue window (W400/L40) as contrast limits, other images with
  the 1st-99.8th percentiles of the whole volume.
- ``metadata["napari_sam"]`` holds the :class:`~napari_sam.core.geometry.VolumeGeometry`
  (``"geometry"``), the source path and the modality, so labels drawn on the layer can be
  written back with the scan's geometry (:func:`napari_sam.core.io.write_labels`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .core.io import file_suffix
from .core.volume_io import VOLUME_SUFFIXES, Volume, is_dicom_file, looks_like_labels

__all__ = ["GeometryNotice", "get_reader", "layer_data", "layer_name", "read_layers"]

LayerData = tuple[Any, dict[str, Any], str]
PathOrPaths = str | list[str]

_NAPARI_UNITS = frozenset({"mm", "um", "nm", "cm", "m", "s", "ms", "min"})
"""Units (as :func:`napari_sam.core.geometry.normalize_unit` names them) given to napari;
others (unknown or odd strings from file metadata, which napari's unit parser may reject)
show as pixels, while the geometry keeps them."""

DEFAULT_CT_WINDOW = "soft-tissue"
"""Window a CT volume opens with (the user changes contrast limits as usual)."""


class GeometryNotice(UserWarning):
    """napari shows this scan's voxel grid as stored, not in patient orientation."""


def get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerData]] | None:
    """Return :func:`read_layers` if napari-sam can read ``path``, else None.

    Files with a volume extension (NIfTI, NRRD, MetaImage, DICOM, TIFF), DICOM files without
    an extension, and folders holding DICOM files are accepted.
    """
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(_readable(Path(p)) for p in paths):
        return None
    return read_layers


def _readable(path: Path) -> bool:
    if path.is_dir():
        return any(is_dicom_file(p) for p in sorted(path.iterdir())[:50] if p.is_file())
    return file_suffix(path) in VOLUME_SUFFIXES or is_dicom_file(path)


def read_layers(path: PathOrPaths) -> list[LayerData]:
    """Read one file (or DICOM folder), or several, into napari layer data.

    Raises
    ------
    NapariSamError
        With one line saying what is wrong with the file; napari shows it.
    """
    from .core.volume_io import read_volume

    paths = [path] if isinstance(path, str) else list(path)
    return [layer_data(read_volume(p)) for p in paths]


def layer_name(source: Path | None) -> str:
    """A layer name from a file name, without its extension (``scan.nii.gz`` -> ``scan``)."""
    if source is None:
        return "image"
    suffix = file_suffix(source) if source.is_file() else ""
    return source.name[: len(source.name) - len(suffix)] or source.name


def layer_data(
    volume: Volume, name: str | None = None, *, labels: bool | None = None
) -> LayerData:
    """napari layer data for a :class:`~napari_sam.core.volume_io.Volume`.

    Parameters
    ----------
    volume : Volume
        What :func:`~napari_sam.core.volume_io.read_volume` returned.
    name : str, optional
        Layer name; by default the file name without its extension.
    labels : bool, optional
        Force a Labels (True) or Image (False) layer; by default the rule of
        :func:`~napari_sam.core.volume_io.looks_like_labels` decides.

    Returns
    -------
    (data, kwargs, layer_type)
        As napari readers and sample-data functions return them.
    """
    g = volume.geometry
    name = name or layer_name(volume.source)
    info: dict[str, Any] = {"geometry": g, "source": volume.source, "modality": volume.modality}
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": g.napari_scale(),
        "translate": g.origin,
        "units": tuple(u if u in _NAPARI_UNITS else "pixel" for u in g.units),
        "metadata": {"napari_sam": info},
    }
    if g.notice:
        info["notice"] = g.notice
        warnings.warn(f"{name}: {g.notice}", GeometryNotice, stacklevel=2)
    data = volume.data
    is_labels = (
        labels
        if labels is not None
        else (not volume.has_channels and looks_like_labels(data, str(volume.source or "")))
    )
    if is_labels:
        if data.dtype == np.bool_:
            data = data.astype(np.uint8)
        return data, kwargs, "labels"
    if volume.rgb:
        kwargs["rgb"] = True
    elif volume.has_channels:
        kwargs["channel_axis"] = -1
    else:
        kwargs.update(_contrast(volume, info))
    return data, kwargs, "image"


def _contrast(volume: Volume, info: dict[str, Any]) -> dict[str, Any]:
    """Contrast limits for a grey image: a CT window, or the volume's percentiles."""
    from .core.windows import CT_WINDOWS, looks_like_ct, volume_limits, window_limits

    data = volume.data
    if data.dtype in (np.uint8, np.bool_) or data.size == 0:
        return {}
    if looks_like_ct(data, volume.modality):
        info["window"] = DEFAULT_CT_WINDOW
        return {"contrast_limits": window_limits(*CT_WINDOWS[DEFAULT_CT_WINDOW])}
    lo, hi = volume_limits(data)
    return {"contrast_limits": (lo, hi)} if hi > lo else {}
