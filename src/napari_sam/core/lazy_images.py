"""Images opened without reading their pixels: OME-Zarr folders and large compressed TIFFs.

:func:`open_lazy_image` opens

- an **OME-Zarr** image: a folder (``X.ome.zarr``, ``X.zarr``) whose zarr group has OME-NGFF
  ``multiscales`` metadata, version 0.4 (zarr v2 layout, metadata in the group's attributes)
  or 0.5 (zarr v3, metadata under ``attributes["ome"]``); older versions (0.1 to 0.3) are
  read too, as is a ``bioformats2raw`` folder (its first image, ``0/``). Level 0 (the first
  dataset, full resolution) is used; the axes (``t``, ``c``, ``z``, ``y``, ``x``) and the
  pixel spacing, units and origin come from the ``coordinateTransformations`` of level 0 and
  of the multiscale;
- a **large TIFF** whose pixel data cannot be memory-mapped (compressed, tiled or stored in
  pieces, e.g. a deflate slide or a pyramidal OME-TIFF) and holds at least
  :data:`~napari_sam.core.lazy_arrays.MAP_BYTES`: tifffile's zarr view of its first series
  (level 0). Smaller files, and large ones stored plainly (which
  :func:`~napari_sam.core.lazy_arrays.tiff_pixels` maps), are not lazy images.

The other levels of a pyramid (OME-Zarr datasets, TIFF sub-resolutions) are opened too,
unread (:attr:`LazyImage.levels`): napari-sam's napari reader shows them as a multiscale image.

A :class:`LazyImage` of a 2D image (``yx``, with a channel axis or size-1 ``t``/``z`` axes)
gives :attr:`LazyImage.plane`, an array-like that reads only what it is sliced with: tiled
commands read one tile's region at a time. A volume (``z`` or ``t`` over 1) is read whole by
:meth:`LazyImage.read` (the volume commands need it in memory), which refuses, in one
line, a volume larger than half of the machine's memory.

zarr and tifffile are imported when a file is opened.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import lazy_arrays
from .errors import ImageError, exception_line
from .geometry import VolumeGeometry, normalize_unit
from .lazy_arrays import read_plane

__all__ = [
    "LazyImage",
    "SqueezedView",
    "is_zarr_folder",
    "looks_like_ome_zarr",
    "open_lazy_image",
    "open_ome_zarr",
    "volume_fits",
]

_TIFF = (".tif", ".tiff")
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zattrs", ".zarray")


@dataclass(frozen=True, eq=False)
class LazyImage:
    """An image or volume whose pixels stay in their file until sliced.

    Attributes
    ----------
    data : array-like
        Level 0 as stored (a zarr array), with axes of size 1 other than ``y``, ``x`` and a
        channel axis left out (:class:`SqueezedView`): ``(H, W)``, ``(C, H, W)`` or
        ``(H, W, C)`` for an image; for a volume its ``t``/``z`` axes come first.
    geometry : VolumeGeometry
        Axes (``"yx"``, ``"zyx"``, ``"tyx"``, ``"tzyx"``), shape, spacing, origin and units.
    channel_axis : int or None
        The axis of :attr:`data` holding channels; None for a grey image.
    rgb : bool
        The channels are RGB(A) colours (the last axis of a TIFF with 3 or 4 samples).
    source : pathlib.Path
        The folder or file opened.
    kind : str
        What was opened, for messages: ``"OME-Zarr 0.4 (level 0 of 3)"``,
        ``"TIFF (adobe_deflate, tiled 256 x 256, 4 levels)"``.
    levels : tuple of array-like
        Every level of the pyramid, full resolution first (``levels[0]`` is :attr:`data`),
        unread and with the axes of :attr:`data`: what napari shows as a multiscale image.
        Empty when only :attr:`data` is known.
    """

    data: Any
    geometry: VolumeGeometry
    channel_axis: int | None
    rgb: bool
    source: Path
    kind: str
    levels: tuple[Any, ...] = ()
    _keep: Any = field(default=None, repr=False)  # what the data reads from (an open TIFF)

    @property
    def is_volume(self) -> bool:
        """Whether there is more than one 2D plane (``z`` or ``t`` over 1)."""
        return self.geometry.ndim >= 3

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.data.shape)) * self.dtype.itemsize

    @property
    def plane(self) -> Any:
        """The 2D image, unread: ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)`` as
        :attr:`channel_axis` says. Slicing it reads only the slice's region of the file."""
        if self.is_volume:
            raise ImageError(
                f"{self.source} is a volume ({self.geometry.describe()}), not one 2D image."
            )
        return self.data

    def read(self) -> np.ndarray:
        """All the pixels in memory, shaped ``geometry.shape`` plus channels last.

        Raises
        ------
        ImageError
            If they would take more than half of this machine's memory.
        """
        if not volume_fits(self.nbytes):
            raise ImageError(
                f"Cannot read {self.source}: {self.geometry.describe()} "
                f"({self.nbytes / 2**30:.1f} GiB) is more than half of this machine's memory; "
                "napari-sam reads volumes whole (only 2D images are read tile by tile)."
            )
        whole = np.asarray(self.data[...])
        if self.channel_axis is not None:
            whole = np.moveaxis(whole, self.channel_axis, -1)
        return whole


def volume_fits(nbytes: int) -> bool:
    """Whether ``nbytes`` is at most half of the machine's physical memory (True when the
    system does not say how much it has)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return True
    return total <= 0 or nbytes <= total // 2


class SqueezedView:
    """``array[index]`` for a fixed index along some axes, without reading anything.

    zarr arrays read whatever they are indexed with; this view keeps fixed indices for the
    axes it drops (size-1 ``t``, ``z``, ...), so that slicing it reads only the slice's region.
    Converting it to NumPy (``np.asarray``) reads it region by region
    (:func:`~napari_sam.core.lazy_arrays.read_plane`).

    Parameters
    ----------
    array : array-like
        A zarr array (or anything indexable by ints and slices with ``shape`` and ``dtype``).
    fixed : dict of int to int
        Axis of ``array`` -> the index it is kept at.
    channel_axis : int, optional
        The view's axis holding channels: rows and columns are the last two other axes.
    """

    def __init__(
        self, array: Any, fixed: dict[int, int] | None = None, channel_axis: int | None = None
    ) -> None:
        self.array = array
        self.fixed = dict(fixed or {})
        self.channel_axis = channel_axis
        self._free = [a for a in range(len(array.shape)) if a not in self.fixed]
        self.shape = tuple(int(array.shape[a]) for a in self._free)
        self.dtype = np.dtype(array.dtype)
        chunks = getattr(array, "chunks", None)
        if isinstance(chunks, tuple) and len(chunks) == len(array.shape):
            self.chunks = tuple(int(chunks[a]) for a in self._free)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, axis: int, index: int) -> SqueezedView:
        """This view with its axis ``axis`` kept at ``index`` (one channel), reading nothing."""
        axis = axis % self.ndim
        if not -self.shape[axis] <= index < self.shape[axis]:
            raise IndexError(f"index {index} is out of range for axis {axis} of {self.shape}")
        fixed = {**self.fixed, self._free[axis]: index % self.shape[axis]}
        channel = self.channel_axis
        if channel is not None:
            channel = channel % self.ndim
            channel = None if channel == axis else channel - (channel > axis)
        return SqueezedView(self.array, fixed, channel)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = _expand_key(key, self.ndim)
        free = iter(key)
        full = tuple(
            self.fixed[a] if a in self.fixed else next(free) for a in range(len(self.array.shape))
        )
        return np.asarray(self.array[full])

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        # Region by region over rows and columns: never a second full-size copy (read_plane).
        c = None if self.channel_axis is None else self.channel_axis % self.ndim
        rows_cols = [a for a in range(self.ndim) if a != c][-2:]
        out = read_plane(self, [slice(None)] * self.ndim, rows_cols)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"SqueezedView({self.shape}, {self.dtype}, fixed={self.fixed})"


def _expand_key(key: Any, ndim: int) -> tuple[int | slice, ...]:
    """``key`` as one int or slice per axis (an Ellipsis and missing axes become slices)."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = (*key[:i], *[slice(None)] * (ndim - len(key) + 1), *key[i + 1 :])
    for k in key:
        if not isinstance(k, int | np.integer | slice):
            raise TypeError(f"SqueezedView takes ints and slices, not {type(k).__name__}")
    if len(key) > ndim:
        raise IndexError(f"too many indices ({len(key)}) for {ndim} axes")
    return (*key, *[slice(None)] * (ndim - len(key)))


def is_zarr_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder named ``*.zarr`` or holding zarr metadata files."""
    path = Path(path)
    if not path.is_dir():
        return False
    return path.name.lower().endswith(".zarr") or any((path / m).is_file() for m in _ZARR_MARKERS)


def looks_like_ome_zarr(path: str | os.PathLike[str]) -> bool:
    """Whether folder ``path`` says it is an OME-Zarr: by its name (``*.ome.zarr``) or by the
    OME-NGFF keys (``multiscales``, ``bioformats2raw.layout``, ``plate``, ``well``) of its
    root metadata. Only that metadata file is read; other zarr folders (plain arrays) and
    DICOM folders are not OME-Zarr."""
    path = Path(path)
    if not path.is_dir():
        return False
    if path.name.lower().endswith(".ome.zarr"):
        return True
    for name in ("zarr.json", ".zattrs"):  # zarr v3 (OME-NGFF 0.5), zarr v2 (0.4 and older)
        try:
            meta = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        attrs = meta.get("attributes", {}) if name == "zarr.json" else meta
        if isinstance(attrs, dict) and isinstance(attrs.get("ome"), dict):
            attrs = attrs["ome"]
        if isinstance(attrs, dict) and any(key in attrs for key in _OME_KEYS):
            return True
    return False


_OME_KEYS = ("multiscales", "bioformats2raw.layout", "plate", "well")


def open_lazy_image(path: str | os.PathLike[str]) -> LazyImage | None:
    """Open an OME-Zarr folder or a large TIFF that cannot be mapped, reading no pixels.

    Parameters
    ----------
    path : str or os.PathLike
        Any image path.

    Returns
    -------
    LazyImage or None
        None for every other input (smaller or plainly stored TIFFs, other formats, folders
        that hold no zarr data): those are read as before.

    Raises
    ------
    ImageError
        One line, for a zarr folder that is not an OME-Zarr image (no ``multiscales``,
        missing level 0, axes that do not fit the array, ...) or a TIFF that cannot be
        decoded.
    """
    path = Path(path)
    if is_zarr_folder(path):
        return open_ome_zarr(path)
    if path.suffix.lower() in _TIFF and path.is_file():
        return _open_large_tiff(path)
    return None


# --------------------------------------------------------------------------------------------
# OME-Zarr
# --------------------------------------------------------------------------------------------


def open_ome_zarr(path: str | os.PathLike[str]) -> LazyImage:
    """Open the OME-Zarr image in folder ``path`` (level 0), reading no pixels.

    Raises
    ------
    ImageError
        One line, for a folder that is not an OME-Zarr image: not a zarr group, no
        ``multiscales`` metadata, a missing or unreadable level 0, axes that do not fit it.
    """
    import zarr

    path = Path(path)

    def fail(reason: str) -> ImageError:
        return ImageError(f"Cannot read OME-Zarr image {path}: {reason}")

    try:
        group = zarr.open_group(store=str(path), mode="r")
    except Exception as exc:  # zarr raises many types; all mean "no zarr group here"
        raise fail(f"not a zarr group ({exception_line(exc)}).") from exc
    meta = _ome_metadata(group)
    if not meta.get("multiscales") and "bioformats2raw.layout" in meta and "0" in group:
        group = group["0"]  # bioformats2raw: the images are groups 0, 1, ...
        meta = _ome_metadata(group)
    multiscales = meta.get("multiscales")
    for kind, example in (("plate", "A/1/0"), ("well", "0")):
        if not multiscales and kind in meta:
            raise fail(
                f"it is an HCS {kind}; give the folder of one image in it (e.g. {example})."
            )
    if (
        not isinstance(multiscales, list)
        or not multiscales
        or not isinstance(multiscales[0], dict)
    ):
        raise fail("its group has no OME-NGFF 'multiscales' metadata (not an OME-Zarr image).")
    ms = multiscales[0]
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets or "path" not in datasets[0]:
        raise fail("its 'multiscales' metadata lists no datasets (levels).")
    level = str(datasets[0]["path"])
    try:
        array = group[level]
    except Exception as exc:  # KeyError, or zarr's errors for damaged metadata
        raise fail(f"the level 0 array {level!r} is missing or unreadable.") from exc
    if not isinstance(array, zarr.Array):
        raise fail(f"{level!r} (level 0) is a group, not an array.")
    names, kinds, units = _axes(ms.get("axes"), array.ndim, fail)
    scale, offset = _transforms(datasets[0], ms, array.ndim, fail)
    version = meta.get("version") or ms.get("version") or "?"
    kind = f"OME-Zarr {version} (level 0 of {len(datasets)})"
    levels = _lower_levels(group, datasets, array, kinds, fail)
    return _layout(path, levels, names, kinds, (scale, offset, units), kind, fail)


def _lower_levels(group: Any, datasets: list, level0: Any, kinds: list[str], fail: Any) -> list:
    """Level 0 and the arrays of the other datasets, checked to fit it (unread): the same
    axes, no axis longer than level 0's, the same channels."""
    import zarr

    arrays = [level0]
    for i, dataset in enumerate(datasets[1:], start=1):
        where = str(dataset.get("path")) if isinstance(dataset, dict) else "?"
        try:
            array = group[where]
        except Exception as exc:  # KeyError, or zarr's errors for damaged metadata
            raise fail(f"level {i} ({where!r}) is missing or unreadable.") from exc
        if not isinstance(array, zarr.Array) or array.ndim != level0.ndim:
            raise fail(f"level {i} ({where!r}) is not an array with the axes of level 0.")
        for a, kind in enumerate(kinds):
            n, n0 = int(array.shape[a]), int(level0.shape[a])
            if not 1 <= n <= n0 or (kind == "channel" and n != n0):
                shapes = f"shape {tuple(array.shape)}, level 0 {tuple(level0.shape)}"
                raise fail(f"level {i} ({where!r}) does not fit level 0 ({shapes}).")
        arrays.append(array)
    return arrays


def _ome_metadata(group: Any) -> dict:
    """The OME-NGFF metadata of a group: ``attributes["ome"]`` (0.5) or the attributes."""
    attrs = dict(group.attrs)
    ome = attrs.get("ome")
    return dict(ome) if isinstance(ome, dict) else attrs


def _axes(axes: Any, ndim: int, fail: Any) -> tuple[list[str], list[str], list[str]]:
    """Names, types and units of the axes (0.1/0.2 have none: the last of ``tczyx``)."""
    if axes is None:
        if ndim > 5:
            raise fail(f"it has {ndim} axes and no 'axes' metadata.")
        names = list("tczyx"[5 - ndim :])
        axes = names
    if not isinstance(axes, list) or len(axes) != ndim:
        raise fail(f"its 'axes' metadata does not fit the level 0 array ({ndim} axes).")
    names, kinds, units = [], [], []
    for a in axes:
        entry = a if isinstance(a, dict) else {"name": a}
        name = str(entry.get("name", "")).lower()
        kind = str(entry.get("type") or _AXIS_TYPES.get(name, "")).lower()
        names.append(name)
        kinds.append(kind)
        units.append(normalize_unit(entry.get("unit")))
    return names, kinds, units


_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def _transforms(dataset: dict, ms: dict, ndim: int, fail: Any) -> tuple[np.ndarray, np.ndarray]:
    """Scale and translation of level 0 in physical units: the dataset's transformations,
    then the multiscale's (``x = s_ms * (s_0 * i + t_0) + t_ms``)."""
    scale, offset = np.ones(ndim), np.zeros(ndim)
    for transforms in (
        dataset.get("coordinateTransformations"),
        ms.get("coordinateTransformations"),
    ):
        s, t = np.ones(ndim), np.zeros(ndim)
        for tr in transforms or []:
            values = tr.get(tr.get("type", ""))
            if tr.get("type") not in ("scale", "translation") or values is None:
                continue  # "identity", or a transformation given by a path: none here
            if len(values) != ndim:
                raise fail(f"its {tr['type']} has {len(values)} values for {ndim} axes.")
            if tr["type"] == "scale":
                s = np.asarray(values, float)
            else:
                t = np.asarray(values, float)
        scale, offset = scale * s, offset * s + t
    return scale, offset


def _layout(
    path: Path,
    levels: list,
    names: list[str],
    kinds: list[str],
    space: tuple[np.ndarray, np.ndarray, list[str]],
    kind: str,
    fail: Any,
) -> LazyImage:
    """The :class:`LazyImage` of the arrays ``levels`` (level 0 first) with axes ``names``
    (``t``, ``c``, ``z``, ``y``, ``x``; other size-1 axes are dropped)."""
    shape = tuple(int(s) for s in levels[0].shape)
    if names[-2:] != ["y", "x"]:
        raise fail(f"its last two axes are {names[-2:]}, expected y and x.")
    channels = [i for i, k in enumerate(kinds) if k == "channel"]
    if len(channels) > 1:
        raise fail(f"it has {len(channels)} channel axes ({names}).")
    letters: dict[int, str] = {}
    for i, (n, k) in enumerate(zip(names[:-2], kinds[:-2], strict=True)):
        if k == "time" or n == "t":
            letters[i] = "t"
        elif k == "space" or n == "z":
            letters[i] = "z"  # a third space axis, whatever its name
        elif k != "channel" and shape[i] != 1:
            raise fail(f"it has an axis {n!r} ({shape[i]} long) that is not t, c, z, y or x.")
    fixed = {i: 0 for i in range(len(shape) - 2) if shape[i] == 1}
    kept = [i for i in range(len(shape)) if i not in fixed]
    geo_axes = [i for i in kept if i in letters] + [len(shape) - 2, len(shape) - 1]
    axes = "".join(letters.get(i, "y" if i == len(shape) - 2 else "x") for i in geo_axes)
    if axes not in ("yx", "zyx", "tyx", "tzyx"):
        raise fail(f"its axes {names} (shape {shape}) are not in t, c, z, y, x order.")
    channel = kept.index(channels[0]) if channels and channels[0] in kept else None
    scale, offset, units = space
    base = VolumeGeometry.default(tuple(shape[i] for i in geo_axes), axes)
    geometry = VolumeGeometry(
        axes,
        base.shape,
        tuple(float(scale[i]) for i in geo_axes),
        tuple(float(offset[i]) for i in geo_axes),
        base.direction,
        tuple(units[i] for i in geo_axes),
    )
    views = tuple(SqueezedView(a, fixed, channel) for a in levels)
    return LazyImage(views[0], geometry, channel, False, path, kind, views)


# --------------------------------------------------------------------------------------------
# large TIFF
# --------------------------------------------------------------------------------------------


def _open_large_tiff(path: Path) -> LazyImage | None:
    """A zarr view of a large TIFF that cannot be mapped; None for any other TIFF."""
    import tifffile
    import zarr

    from .tiff_geometry import map_tiff_axes, tiff_spacing

    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises many types; all mean "cannot decode this file"
        raise ImageError(f"Cannot read image {path}: {exception_line(exc)}") from exc
    try:
        series = tif.series[0]
        dtype = np.dtype(series.dtype)
        # What tiff_pixels maps (plain, native byte order) is not a lazy image; nor is a
        # small file: both are read as before.
        if series.nbytes < lazy_arrays.MAP_BYTES or (
            series.dataoffset is not None and dtype.isnative
        ):
            tif.close()
            return None
        axes, shape = series.axes.upper(), tuple(int(s) for s in series.shape)
        _, letters, channel = map_tiff_axes(path, axes, shape)
        levels = _tiff_levels(series, zarr)
        array = levels[0]
        spacing = tiff_spacing(tif)
        page = series.pages[0] if series.pages else tif.pages[0]
        what = _tiff_kind(page, len(series.levels))
    except ImageError:
        tif.close()
        raise
    except Exception as exc:
        tif.close()
        raise ImageError(f"Cannot read image {path}: {exception_line(exc)}") from exc
    if tuple(array.shape) != shape:  # never seen; the axes below rely on it
        tif.close()
        return None
    c = axes.index(channel) if channel else None
    rgb = channel == "S" and c == len(shape) - 1 and shape[-1] in (3, 4)
    yx = tuple(shape[axes.index(a)] for a in "YX")
    plane_axes = "".join(a for a in axes if a in "YX" or a == channel)
    if letters != "yx" or plane_axes not in ("YX", f"{channel}YX", f"YX{channel}"):
        # A stack, or channels between rows and columns: read whole, as before.
        tif.close()
        return None
    geometry = VolumeGeometry(
        "yx",
        yx,
        tuple(spacing.get(a, (1.0, ""))[0] for a in "yx"),
        (0.0, 0.0),
        ((1.0, 0.0), (0.0, 1.0)),
        tuple(spacing.get(a, (1.0, ""))[1] for a in "yx"),
    )
    views = tuple(SqueezedView(a, None, c) for a in levels)
    return LazyImage(views[0], geometry, c, rgb, path, what, views, _keep=tif)


def _tiff_levels(series: Any, zarr: Any) -> list:
    """zarr views of the levels of a TIFF series, level 0 first; levels whose axes do not
    fit level 0's (other axes, or other channels) are left out with those after them."""
    levels = [zarr.open(series.aszarr(level=0), mode="r")]
    first = tuple(int(n) for n in levels[0].shape)
    for i, level in enumerate(series.levels[1:], start=1):
        shape = tuple(int(n) for n in level.shape)
        if level.axes != series.axes or any(n > n0 for n, n0 in zip(shape, first, strict=True)):
            break
        if any(n != n0 for a, n, n0 in zip(series.axes, shape, first, strict=True) if a in "CS"):
            break
        levels.append(zarr.open(series.aszarr(level=i), mode="r"))
    return levels


def _tiff_kind(page: Any, levels: int) -> str:
    """``"TIFF (zlib, tiled 256 x 256, 3 levels)"``: how the pixels are stored."""
    parts = [getattr(page.compression, "name", str(page.compression)).lower()]
    if getattr(page, "is_tiled", False):
        parts.append(f"tiled {page.tilelength} x {page.tilewidth}")
    if levels > 1:
        parts.append(f"{levels} levels")
    return f"TIFF ({', '.join(parts)})"
