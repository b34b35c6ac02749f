"""Between napari layers and arrays: image planes, prompt coordinates, writing labels.

Everything here takes layers and plain values (the viewer's current world point and
displayed axes) and returns arrays, so the widget stays thin. Coordinates always go through
world space (``layer.data_to_world`` then ``image.world_to_data``): prompt layers may have
another scale, translation or dimensionality than the image they prompt.

Only napari's public layer API is used: plugin widgets get their viewer through napari's
``PublicOnlyProxy``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ._session import point_label
from .core.commits import commit_pixels, edit_pixels
from .core.errors import ImageError, PromptError
from .core.label_ids import highest_id, new_ids
from .core.lazy_arrays import read_plane

#: Shapes that stand for a box prompt in 3D work (their bounding box); lines are ignored.
BOX_SHAPES = ("rectangle", "ellipse", "polygon")
#: Shapes that prompt on a plane: boxes, and paths (a lasso drawn around an object).
PROMPT_SHAPES = (*BOX_SHAPES, "path")


@dataclass(frozen=True)
class Plane:
    """One 2D plane of a layer's data.

    Attributes
    ----------
    axes : tuple of int
        Data axes shown as rows and as columns (in that order; they may be reversed when the
        viewer's axis order was changed).
    index : tuple
        For every data axis, the index of the plane along it, or None for the two displayed
        axes.
    shape : tuple of int
        (H, W) of the plane, rows by columns.
    """

    axes: tuple[int, int]
    index: tuple[int | None, ...]
    shape: tuple[int, int]

    @property
    def ndim(self) -> int:
        """Dimensions of the data the plane belongs to."""
        return len(self.index)

    @property
    def is_stack(self) -> bool:
        """Whether the data has more than the two displayed dimensions."""
        return self.ndim > 2

    def slicer(self) -> tuple[int | slice, ...]:
        """Index selecting the plane from the data (rows/cols in data order)."""
        return tuple(slice(None) if i is None else i for i in self.index)

    def take(self, data: Any) -> np.ndarray:
        """The plane of ``data`` as an (H, W) or (H, W, C) NumPy array (a copy or a view).

        Extra trailing axes (RGB channels) are kept after rows and columns. Lazy data (dask,
        zarr, a level of a multiscale image) is read region by region
        (:func:`~napari_sam.core.lazy_arrays.read_plane`): only this plane, never more.
        """
        arr = read_plane(data, self.slicer(), self.axes)
        if self.axes[0] > self.axes[1]:
            arr = np.swapaxes(arr, 0, 1)
        return arr

    def indices(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, ...]:
        """Full nD index arrays (for ``labels.data_setitem``) of plane pixels (rows, cols)."""
        out = []
        for axis, i in enumerate(self.index):
            if axis == self.axes[0]:
                out.append(np.asarray(rows, np.intp))
            elif axis == self.axes[1]:
                out.append(np.asarray(cols, np.intp))
            else:
                out.append(np.full(len(rows), i, np.intp))
        return tuple(out)

    def put(self, full: np.ndarray, plane: np.ndarray) -> None:
        """Write an (H, W) array into the plane of the nD array ``full`` (NumPy or zarr)."""
        if self.axes[0] > self.axes[1]:
            plane = np.swapaxes(plane, 0, 1)
        full[self.slicer()] = plane  # an assignment: a zarr array's plane is not a view

    def describe(self, axis_labels: Sequence[str] | None = None) -> str:
        """Where the plane is, e.g. ``"z=3"`` (empty for 2D data)."""
        names = list(axis_labels) if axis_labels is not None else []
        parts = []
        for axis, i in enumerate(self.index):
            if i is not None:
                name = names[axis] if axis < len(names) else ""
                # napari's default labels are "-3", "-2", ...: say "axis 0" instead.
                if not name or name.lstrip("-").isdigit():
                    name = f"axis {axis}"
                parts.append(f"{name}={i}")
        return ", ".join(parts)


def level0(layer: Any) -> Any:
    """The full-resolution data of an image layer (the first level of a multiscale one).

    Nothing is read here: :meth:`Plane.take` reads one plane of it, region by region; the
    other levels of a pyramid are never read by napari-sam (napari reads them for display).
    """
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def spatial_shape(layer: Any) -> tuple[int, ...]:
    """Shape of an image layer without its RGB(A) axis: the shape of its labels."""
    return tuple(int(s) for s in level0(layer).shape[: layer.ndim])


def image_plane(
    image: Any, world_point: Sequence[float], displayed: Sequence[int], world_ndim: int
) -> Plane:
    """The plane of ``image`` the viewer shows.

    Parameters
    ----------
    image : napari.layers.Image
    world_point : sequence of float
        ``viewer.dims.point``.
    displayed : sequence of int
        ``viewer.dims.displayed``: world axes shown as rows and columns.
    world_ndim : int
        ``viewer.dims.ndim``.

    Raises
    ------
    ImageError
        In 3D display, when the image does not span the displayed axes, or when the current
        position lies outside the image.
    """
    if len(displayed) != 2:
        raise ImageError(
            "SAM segments 2D planes: switch the viewer to 2D display (Ctrl+Y) to annotate"
        )
    offset = world_ndim - image.ndim
    axes = (int(displayed[0]) - offset, int(displayed[1]) - offset)
    if min(axes) < 0:
        raise ImageError(
            f"the image {image.name!r} does not extend along the displayed axes; "
            "display two of its axes"
        )
    shape = spatial_shape(image)
    data_point = np.asarray(image.world_to_data(np.asarray(world_point, float)), float)
    index: list[int | None] = []
    for axis in range(image.ndim):
        if axis in axes:
            index.append(None)
            continue
        i = round(float(data_point[axis]))
        if not 0 <= i < shape[axis]:
            raise ImageError(
                f"the current position is outside the image {image.name!r} "
                f"(axis {axis}: {i} not in 0..{shape[axis] - 1}); move the slider onto it"
            )
        index.append(i)
    return Plane(axes=axes, index=tuple(index), shape=(shape[axes[0]], shape[axes[1]]))


def neighbour_planes(plane: Plane, shape: Sequence[int], axis: int, reach: int) -> list[Plane]:
    """Planes next to ``plane`` along ``axis``, nearest first (+1, -1, +2, -2, ...).

    For embedding ahead of the user (prefetch). ``shape`` is the data's spatial shape; planes
    outside it are left out, and so is everything when ``axis`` is a displayed axis.
    """
    if axis in plane.axes or not 0 <= axis < plane.ndim:
        return []
    here = plane.index[axis]
    out = []
    for step in range(1, reach + 1):
        for i in (here + step, here - step):
            if 0 <= i < shape[axis]:
                index = list(plane.index)
                index[axis] = i
                out.append(Plane(plane.axes, tuple(index), plane.shape))
    return out


def to_data_coords(
    layer: Any, coords: np.ndarray, image: Any, world_point: Sequence[float]
) -> np.ndarray:
    """(N, image.ndim) data coordinates in ``image`` of ``layer``'s data coordinates.

    A prompt layer with fewer dimensions than the world is broadcast along the missing ones
    (as napari draws it): the world point fills them.
    """
    world_ndim = len(world_point)
    out = np.zeros((len(coords), image.ndim), float)
    for n, p in enumerate(np.asarray(coords, float)):
        world = np.array(world_point, float)
        w = np.asarray(layer.data_to_world(p), float)
        world[world_ndim - len(w) :] = w
        out[n] = np.asarray(image.world_to_data(world), float)
    return out


def _to_image_plane(
    layer: Any,
    coords: np.ndarray,
    image: Any,
    plane: Plane,
    world_point: Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """Map ``layer`` data coordinates to (row, col) of ``plane``; flag those on the plane.

    A prompt layer with fewer dimensions than the world lies on every plane along the
    missing dimensions.
    """
    image_offset = len(world_point) - image.ndim
    first_layer_axis = len(world_point) - layer.ndim
    d = to_data_coords(layer, coords, image, world_point)
    rc = d[:, list(plane.axes)] if len(d) else np.zeros((0, 2))
    on = np.ones(len(coords), bool)
    for axis, i in enumerate(plane.index):
        if i is None or axis + image_offset < first_layer_axis:
            continue
        on &= np.round(d[:, axis]) == i
    return rc, on


class PlanePrompts(NamedTuple):
    """The prompts on one plane, in its (row, col) pixel coordinates (see :func:`plane_prompts`).

    Attributes
    ----------
    points : ndarray
        (N, 2) float.
    labels : ndarray
        (N,) int, 1 positive and 0 negative.
    boxes : ndarray
        (B, 4) float (row0, col0, row1, col1).
    elsewhere : int
        How many prompts lie on other planes (they are ignored).
    tilted : int
        How many rectangles are tilted against the image's pixel grid (their layer is rotated
        or sheared relative to the image): SAM gets their bounding box, which is larger.
    kinds : tuple of str
        The shape type of each box (``"rectangle"``, ``"ellipse"``, ``"polygon"``, ``"path"``).
    outlines : tuple of ndarray
        Each box's shape vertices, (N, 2) (row, col) on the plane (for shapes as masks).
    """

    points: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    elsewhere: int
    tilted: int
    kinds: tuple[str, ...] = ()
    outlines: tuple[np.ndarray, ...] = ()


#: A box whose corners map to within this many pixels of its bounding box is not tilted.
_TILT_TOLERANCE_PX = 0.5


def plane_prompts(
    points_layer: Any | None,
    boxes_layer: Any | None,
    image: Any,
    plane: Plane,
    world_point: Sequence[float],
) -> PlanePrompts:
    """The prompts on the current plane, in its (row, col) pixel coordinates.

    Parameters
    ----------
    points_layer : napari.layers.Points or None
        Points; a ``label`` feature says positive/negative (positive when absent).
    boxes_layer : napari.layers.Shapes or None
        Rectangles, ellipses, polygons and paths are boxes (by their bounding box); the
        shapes' outlines come along, for the widget to use them as mask prompts.
    image : napari.layers.Image
    plane : Plane
        From :func:`image_plane`.
    world_point : sequence of float
        ``viewer.dims.point``.

    Returns
    -------
    PlanePrompts

    Raises
    ------
    PromptError
        When a point's ``label`` is neither positive nor negative, or a box on the plane has
        no area (less than a pixel high or wide: a rectangle squashed flat, or one clicked
        without dragging while zoomed in).
    """
    points = np.zeros((0, 2))
    labels = np.zeros(0, int)
    boxes = np.zeros((0, 4))
    elsewhere = tilted = 0
    kinds: list[str] = []
    outlines: list[np.ndarray] = []
    if points_layer is not None and len(points_layer.data):
        rc, on = _to_image_plane(points_layer, points_layer.data, image, plane, world_point)
        feats = points_layer.features
        if "label" in feats.columns:
            try:
                all_labels = np.array([point_label(v) for v in feats["label"]], int)
            except ValueError as e:
                raise PromptError(f"{points_layer.name}: {e}") from None
        else:
            all_labels = np.ones(len(rc), int)
        points, labels = rc[on], all_labels[on]
        elsewhere += int((~on).sum())
    if boxes_layer is not None and len(boxes_layer.data):
        found = []
        for n, (verts, kind) in enumerate(
            zip(boxes_layer.data, boxes_layer.shape_type, strict=True)
        ):
            if kind not in PROMPT_SHAPES:
                continue
            rc, on = _to_image_plane(boxes_layer, verts, image, plane, world_point)
            if not on.all():
                elsewhere += 1
                continue
            lo, hi = rc.min(axis=0), rc.max(axis=0)
            _check_box_area(boxes_layer.name, n, hi - lo)
            tilted += kind == "rectangle" and _is_tilted(rc, lo, hi)
            found.append([*lo, *hi])
            kinds.append(str(kind))
            outlines.append(rc)
        if found:
            boxes = np.array(found, float)
    return PlanePrompts(points, labels, boxes, elsewhere, tilted, tuple(kinds), tuple(outlines))


def _check_box_area(layer_name: str, index: int, size: np.ndarray) -> None:
    """Refuse a box less than a pixel high or wide: SAM would segment a line."""
    if (size < 1).any():
        raise PromptError(
            f"shape {index + 1} of {layer_name!r} is {size[0]:.1f} x {size[1]:.1f} pixels: a "
            "box needs some height and width. Drag across the object to draw a box, or "
            "delete that shape"
        )


def _is_tilted(rc: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bool:
    """Whether some corner of a mapped rectangle lies off its bounding box's corners."""
    off = np.minimum(np.abs(rc - lo), np.abs(rc - hi))
    return bool((off > _TILT_TOLERANCE_PX).any())


def prompts_on_plane(
    layer: Any, image: Any, plane: Plane, world_point: Sequence[float]
) -> list[int]:
    """Indices of the points (or box shapes) of ``layer`` that lie on ``plane``."""
    if layer is None or not len(layer.data):
        return []
    if hasattr(layer, "shape_type"):
        return [
            i
            for i, verts in enumerate(layer.data)
            if _to_image_plane(layer, verts, image, plane, world_point)[1].all()
        ]
    _, on = _to_image_plane(layer, layer.data, image, plane, world_point)
    return np.flatnonzero(on).tolist()


# ------------------------------------------------------------------------------------------
# New layers that line up with an image
# ------------------------------------------------------------------------------------------


def _is_axis_aligned(image: Any) -> bool:
    nd = image.ndim
    return (
        np.allclose(image.rotate, np.eye(nd))
        and np.allclose(image.shear, 0)
        and np.allclose(image.affine.affine_matrix, np.eye(nd + 1))
    )


def geometry_like(image: Any) -> dict[str, Any]:
    """Keyword arguments giving a new layer the image's world placement and units."""
    kwargs: dict[str, Any] = {
        "scale": tuple(image.scale),
        "translate": tuple(image.translate),
        "units": tuple(image.units),
        "axis_labels": tuple(image.axis_labels),
    }
    if not _is_axis_aligned(image):
        kwargs.update(
            rotate=np.asarray(image.rotate),
            shear=np.asarray(image.shear),
            affine=np.asarray(image.affine.affine_matrix),
        )
    return kwargs


def preview_placement(image: Any, plane: Plane) -> tuple[tuple[int, ...], dict[str, Any]]:
    """Shape and placement of a preview layer that covers only the current plane.

    The preview of a stack is one plane thick, placed at the current slice, instead of a
    full copy of the volume (a 100-slice stack would cost 100 times the memory). Images with
    rotation, shear or an affine transform get a full-size preview, which is always right.
    """
    kwargs = geometry_like(image)
    full = spatial_shape(image)
    if not plane.is_stack or not _is_axis_aligned(image):
        return full, kwargs
    shape = tuple(full[a] if i is None else 1 for a, i in enumerate(plane.index))
    scale = np.asarray(image.scale, float)
    translate = np.asarray(image.translate, float).copy()
    for axis, i in enumerate(plane.index):
        if i is not None:
            translate[axis] += i * scale[axis]
    kwargs["translate"] = tuple(translate)
    return shape, kwargs


def preview_array(image: Any, plane: Plane, label_image: np.ndarray) -> np.ndarray:
    """The (H, W) preview labels as data for a layer placed by :func:`preview_placement`."""
    shape, _ = preview_placement(image, plane)
    out = np.zeros(shape, np.int32)
    # In a one-plane-thick preview the plane is at index 0 of every sliced axis.
    thin = Plane(
        plane.axes,
        tuple(
            None if i is None else (0 if shape[a] == 1 else i) for a, i in enumerate(plane.index)
        ),
        plane.shape,
    )
    thin.put(out, label_image)
    return out


# ------------------------------------------------------------------------------------------
# Writing labels
# ------------------------------------------------------------------------------------------


def check_target(labels: Any, image: Any) -> str | None:
    """Raise ImageError unless ``labels`` can receive masks of ``image``.

    Returns
    -------
    str or None
        A note for the user when the layers have the same shape but are placed differently
        in the world (another scale, translation, rotation, shear or affine): masks are
        written pixel for pixel, which is right for labels made for this image but opened
        without its scale, and the note says so and how to line the layers up.
    """
    if getattr(labels, "multiscale", False):
        raise ImageError(
            f"cannot write into the multiscale labels layer {labels.name!r} (napari cannot "
            "paint into it either); choose another target or a new layer"
        )
    want = spatial_shape(image)
    got = tuple(labels.data.shape)
    if got != want:
        raise ImageError(
            f"the labels layer {labels.name!r} has shape {got} but the image "
            f"{image.name!r} has shape {want}; choose another target or a new layer"
        )
    differ = [name for name in _PLACEMENT if not _same_placement(labels, image, name)]
    if not differ:
        return None
    return (
        f"{labels.name!r} and {image.name!r} differ in {', '.join(differ)}: the object was "
        f"written pixel for pixel, so it appears where {labels.name!r} places those pixels. "
        f"To line the layers up, right-click {image.name!r} in the layer list > Copy scale "
        f"and transforms > Copy all to clipboard, then right-click {labels.name!r} > Apply "
        "scale/transforms from Clipboard"
    )


#: Layer attributes that place data in the world.
_PLACEMENT = ("scale", "translate", "rotate", "shear", "affine")


def _same_placement(a: Any, b: Any, name: str) -> bool:
    va, vb = getattr(a, name), getattr(b, name)
    if name == "affine":
        va, vb = va.affine_matrix, vb.affine_matrix
    return np.allclose(np.asarray(va, float), np.asarray(vb, float))


@dataclass(frozen=True)
class Written:
    """One object written into a labels layer."""

    obj: int
    label: int
    pixels: int


def write_objects(
    labels: Any,
    plane: Plane,
    masks: Sequence[np.ndarray],
    *,
    overwrite: bool,
    highest: int | None = None,
) -> list[Written]:
    """Write masks into ``labels`` as new objects, as one undo step, or refuse.

    New ids never wrap around. When the layer's integer type cannot hold them (a uint8
    layer that already uses id 255), :class:`~napari_sam.core.errors.LabelIdError` is raised
    and nothing is written. The layer is deliberately not upcast for the user: its array may
    be backed by a file (memmap, zarr, dask) that a wider copy would silently detach from,
    a wider copy of a big volume costs memory the user did not agree to, the type is what
    their other tools expect when the layer is saved, and napari itself never paints ids
    outside a layer's type. The message names napari's own fix (Convert data type), one
    right-click away, so the user decides.

    Parameters
    ----------
    labels : napari.layers.Labels
    plane : Plane
        Where the (H, W) masks go.
    masks : sequence of ndarray
        Boolean (H, W) masks; where they overlap, smaller ones win (a nucleus inside its cell
        stays visible).
    overwrite : bool
        False: pixels that already carry a label keep it. True: the new objects replace them.
    highest : int, optional
        The largest id in the layer, when the caller keeps track of it (a cached value that
        it drops on every change of the layer's data, e.g. on its ``data`` and ``paint``
        events); it saves scanning the whole volume on every commit. None: scan. A value
        below an id found on ``plane`` is known to be stale and the layer is scanned instead.

    Returns
    -------
    list of Written
        The objects that kept at least one pixel, with their new label ids (consecutive,
        from the largest id in the layer + 1). Objects left without pixels get no id. The
        caller's new ``highest`` is the last one's label.

    Raises
    ------
    LabelIdError
        When the new ids do not fit the layer's type (nothing is written).
    """
    data = labels.data
    existing = plane.take(data)
    # The same pixels as a replayed commit (core.commits), so sessions replay exactly.
    rows, cols, objects = commit_pixels(existing, masks, overwrite=overwrite)
    visible = np.bincount(objects, minlength=len(masks))
    shown = np.flatnonzero(visible)
    if not len(shown):
        return []
    if highest is None or highest < highest_id(existing):
        highest = highest_id(data)
    ids = new_ids(
        data.dtype,
        highest,
        len(shown),
        target=f"the labels layer {labels.name!r}",
        hint=wider_type_hint(highest + len(shown)),
    )
    lut = np.zeros(len(masks), data.dtype)
    written = []
    for i, label in zip(shown, ids, strict=True):
        lut[i] = label
        written.append(Written(obj=int(i), label=label, pixels=int(visible[i])))
    # One block = one entry in the layer's undo history: Ctrl+Z removes the whole commit.
    with labels.block_history():
        labels.data_setitem(plane.indices(rows, cols), lut[objects])
    return written


def write_edit(labels: Any, plane: Plane, mask: np.ndarray, label: int, *, overwrite: bool) -> int:
    """Make ``label`` on ``plane`` exactly ``mask``, as one undo step; other labels stay.

    Pixels of ``label`` outside ``mask`` become 0, pixels of ``mask`` become ``label``
    (those of other labels only with ``overwrite``, as a commit does):
    :func:`napari_sam.core.commits.edit_pixels`, which session replay uses too. The plane is
    read now, so brush and eraser strokes made since the label was picked are kept.

    Returns
    -------
    int
        Pixels that carry ``label`` on the plane afterwards.
    """
    existing = plane.take(labels.data)
    rows, cols, values, pixels = edit_pixels(existing, mask, label, overwrite=overwrite)
    if len(rows):
        with labels.block_history():  # one Ctrl+Z restores the label as it was
            labels.data_setitem(plane.indices(rows, cols), values)
    return pixels


def wider_type_hint(largest: int) -> str:
    """What a GUI user can do when ids up to ``largest`` do not fit the target layer."""
    wider = "int32" if largest <= np.iinfo(np.int32).max else "int64"
    return (
        f"convert the layer to a wider type (right-click it in the layer list > Convert data "
        f"type > {wider}) or choose another target layer"
    )


def add_features(labels: Any, rows: list[dict[str, Any]]) -> None:
    """Add one feature row per new label (``index`` column = label id).

    Rows already present for the same ids (left over from an undone commit whose ids were
    given out again) are replaced.
    """
    if not rows:
        return
    new = pd.DataFrame(rows)
    old = labels.features
    if len(old) and "index" in old.columns:
        old = old[~old["index"].isin(new["index"])]
    table = new if not len(old) else pd.concat([old, new], ignore_index=True)
    labels.features = table.reset_index(drop=True)
