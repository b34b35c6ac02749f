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

**OME-Zarr folders and large TIFFs are not read** (:func:`lazy_layers`): what
:func:`napari_sam.core.lazy_images.open_lazy_image` opens (an OME-Zarr image; a compressed,
tiled or pyramidal 2D TIFF of at least :data:`~napari_sam.core.lazy_arrays.MAP_BYTES`)
becomes a layer whose data stays in the file: the list of pyramid levels (a multiscale
image) or the one level. napari reads what it displays; the widget reads the tiles it needs.
Size-1 axes (``t``, ``z``, ``c``) are left out as the command line leaves them out, and
channels become one layer each. Other TIFFs are read as before.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .core.geometry import VolumeGeometry
from .core.io import file_suffix
from .core.lazy_images import LazyImage, SqueezedView, looks_like_ome_zarr
from .core.volume_io import VOLUME_SUFFIXES, Volume, is_dicom_file, looks_like_labels

__all__ = [
    "GeometryNotice",
    "get_reader",
    "layer_data",
    "layer_name",
    "lazy_layers",
    "read_layers",
]

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
    an extension, folders holding DICOM files and OME-Zarr folders (by name or metadata:
    :func:`~napari_sam.core.lazy_images.looks_like_ome_zarr`) are accepted; other zarr
    folders are left to other readers.
    """
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(_readable(Path(p)) for p in paths):
        return None
    return read_layers


def _readable(path: Path) -> bool:
    if path.is_dir():
        if looks_like_ome_zarr(path):
            return True
        return any(is_dicom_file(p) for p in sorted(path.iterdir())[:50] if p.is_file())
    return file_suffix(path) in VOLUME_SUFFIXES or is_dicom_file(path)


def read_layers(path: PathOrPaths) -> list[LayerData]:
    """Read one file (or DICOM or OME-Zarr folder), or several, into napari layer data.

    OME-Zarr folders and large TIFFs are opened without reading their pixels
    (:func:`lazy_layers`); everything else is read whole.

    Raises
    ------
    NapariSamError
        With one line saying what is wrong with the file; napari shows it.
    """
    from .core.lazy_images import open_lazy_image
    from .core.volume_io import read_volume

    paths = [path] if isinstance(path, str) else list(path)
    layers: list[LayerData] = []
    for p in paths:
        lazy = open_lazy_image(p)
        layers.extend(lazy_layers(lazy) if lazy is not None else [layer_data(read_volume(p))])
    return layers


def layer_name(source: Path | None) -> str:
    """A layer name from a file name, without its extension (``scan.nii.gz`` -> ``scan``,
    ``cells.ome.zarr`` -> ``cells``)."""
    if source is None:
        return "image"
    suffix = file_suffix(source) if source.is_file() else ""
    lower = source.name.lower()
    if source.is_dir() and lower.endswith(".zarr"):
        suffix = source.name[-len(".ome.zarr") :] if lower.endswith(".ome.zarr") else ".zarr"
    return source.name[: len(source.name) - len(suffix)] or source.name


def _placed(name: str, g: VolumeGeometry, info: dict[str, Any]) -> dict[str, Any]:
    """Layer keyword arguments placing it in physical space, with napari-sam's metadata."""
    return {
        "name": name,
        "scale": g.napari_scale(),
        "translate": g.origin,
        "units": tuple(u if u in _NAPARI_UNITS else "pixel" for u in g.units),
        "metadata": {"napari_sam": info},
    }


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
    kwargs = _placed(name, g, info)
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


#: Colormaps of the channels of a lazy image, as napari gives them with ``channel_axis``.
_TWO_CHANNELS = ("magenta", "green")
_CHANNELS = ("cyan", "magenta", "yellow", "blue", "green", "red")


def lazy_layers(image: LazyImage, name: str | None = None) -> list[LayerData]:
    """napari layer data for an image opened without reading it: one layer per channel.

    Parameters
    ----------
    image : LazyImage
        What :func:`~napari_sam.core.lazy_images.open_lazy_image` returned.
    name : str, optional
        Layer name; by default the file or folder name without its extension. Channel
        ``i`` of several is named ``"{name} [i]"``.

    Returns
    -------
    list of (data, kwargs, layer_type)
        ``data`` is the list of the levels (``multiscale=True``) when there are several,
        else the one level: zarr arrays, or views of them without their size-1 axes or
        channel axis (:class:`~napari_sam.core.lazy_images.SqueezedView`). Nothing is read
        but a sample of the smallest level (contrast limits).
    """
    g = image.geometry
    name = name or layer_name(image.source)
    levels = image.levels or (image.data,)
    info: dict[str, Any] = {
        "geometry": g,
        "source": image.source,
        "modality": None,
        "kind": image.kind,
        "levels": [tuple(int(n) for n in level.shape) for level in levels],
    }
    kwargs = _placed(name, g, info)
    if len(levels) > 1:
        kwargs["multiscale"] = True
    if image.rgb or image.channel_axis is None:
        if image.rgb:
            kwargs["rgb"] = True
        else:
            kwargs.update(_lazy_contrast(levels[-1]))
        return [(_level_data(levels), kwargs, "image")]
    n = int(image.data.shape[image.channel_axis])
    colormaps = _TWO_CHANNELS if n == 2 else _CHANNELS
    layers = []
    for i in range(n):
        channel = tuple(level.take(image.channel_axis, i) for level in levels)
        meta = {"napari_sam": {**info, "channel": i}}
        layer = {**kwargs, "name": f"{name} [{i}]", "metadata": meta}
        layer["colormap"] = colormaps[i % len(colormaps)]
        layer["blending"] = "translucent_no_depth" if i == 0 else "additive"
        layers.append((_level_data(channel), {**layer, **_lazy_contrast(channel[-1])}, "image"))
    return layers


def _level_data(levels: tuple[Any, ...]) -> Any:
    """napari layer data of ``levels``: the list of them, or the one; a view that leaves no
    axis out is given as the zarr array it views."""
    plain = [
        v.array if isinstance(v, SqueezedView) and not v.fixed and v.ndim == v.array.ndim else v
        for v in levels
    ]
    return plain if len(plain) > 1 else plain[0]


def _lazy_contrast(smallest: Any) -> dict[str, Any]:
    """Contrast limits of a grey lazy image: the percentiles of a sample of its smallest
    level (read a few rows at a time; see :func:`napari_sam.core.windows.volume_limits`)."""
    from .core.windows import volume_limits

    if np.dtype(smallest.dtype) in (np.uint8, np.bool_) or 0 in smallest.shape:
        return {}
    lo, hi = volume_limits(smallest)
    return {"contrast_limits": (lo, hi)} if hi > lo else {}
