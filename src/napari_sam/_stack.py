"""Stacks in napari, without Qt: the prompts on every slice, objects with key slices, and
writing a whole propagated or linked result into a labels layer as one undo step.

The core's :func:`napari_sam.core.propagation.propagate` works on slices ``0..n-1`` along one
axis, in each slice's (row, col) pixels. Here the napari side is mapped onto it: slice ``i``
is the current :class:`~napari_sam._layers.Plane` moved to index ``i`` along the axis the user
scrolls.

Which prompts make one object (the rule users see, also in docs/volumes.md):

- every box is an object; boxes on *different* slices whose rectangles overlap (IoU >= 0.1)
  are the same object seen on several key slices;
- points on a slice with boxes refine every box there; on a slice without boxes they are one
  more object, joined to an object whose key-slice box contains its first positive point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._layers import BOX_SHAPES, Plane, to_data_coords, wider_type_hint
from ._session import point_label
from .core.errors import PromptError
from .core.label_ids import highest_id, new_ids

#: Boxes on different slices overlapping at least this much are one object.
SAME_OBJECT_IOU = 0.1


def slice_plane(plane: Plane, axis: int, i: int) -> Plane:
    """``plane`` moved to index ``i`` along ``axis``."""
    index = list(plane.index)
    index[axis] = i
    return Plane(plane.axes, tuple(index), plane.shape)


@dataclass
class SliceInput:
    """The prompts on one slice, in its (row, col) pixels."""

    points: list[tuple[float, float]]
    labels: list[int]
    boxes: list[tuple[float, float, float, float]]


def prompts_by_slice(
    points_layer: Any | None,
    boxes_layer: Any | None,
    image: Any,
    plane: Plane,
    axis: int,
    world_point: Sequence[float],
) -> dict[int, SliceInput]:
    """Every prompt on the slices of ``plane``'s stack along ``axis``, grouped by slice.

    Prompts off the stack (another time point when ``axis`` is z, say) are left out.
    """
    found: dict[int, SliceInput] = {}
    n = image.data.shape[axis] if not getattr(image, "multiscale", False) else None

    def where(d: np.ndarray) -> int | None:
        for a, i in enumerate(plane.index):
            if a != axis and i is not None and round(float(d[a])) != i:
                return None  # on another plane of the other axes
        z = round(float(d[axis]))
        return z if n is None or 0 <= z < n else None

    def at(z: int) -> SliceInput:
        return found.setdefault(z, SliceInput([], [], []))

    if points_layer is not None and len(points_layer.data):
        feats = points_layer.features
        try:
            labels = (
                [point_label(v) for v in feats["label"]]
                if "label" in feats.columns
                else [1] * len(points_layer.data)
            )
        except ValueError as e:
            raise PromptError(f"{points_layer.name}: {e}") from None
        coords = to_data_coords(points_layer, points_layer.data, image, world_point)
        for d, label in zip(coords, labels, strict=True):
            z = where(d)
            if z is not None:
                at(z).points.append((d[plane.axes[0]], d[plane.axes[1]]))
                at(z).labels.append(label)
    if boxes_layer is not None and len(boxes_layer.data):
        for verts, kind in zip(boxes_layer.data, boxes_layer.shape_type, strict=True):
            if kind not in BOX_SHAPES:
                continue
            d = to_data_coords(boxes_layer, verts, image, world_point)
            zs = {where(v) for v in d}
            if len(zs) != 1 or None in zs:
                continue  # not flat on one slice of the stack
            rc = d[:, list(plane.axes)]
            at(zs.pop()).boxes.append((*rc.min(axis=0), *rc.max(axis=0)))
    return found


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    r0, c0 = max(a[0], b[0]), max(a[1], b[1])
    r1, c1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, r1 - r0) * max(0.0, c1 - c0)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0


def key_slice_objects(by_slice: dict[int, SliceInput]) -> dict[int, list[Any]]:
    """Objects (ids 1, 2, ...) with their key slices, by the rule in the module docstring.

    Returns the mapping :func:`napari_sam.core.propagation.propagate` takes.
    """
    from .core.propagation import SlicePrompt

    objects: dict[int, list[SlicePrompt]] = {}
    boxes_of: dict[int, list[tuple[int, tuple]]] = {}  # object -> (slice, box) of its keys
    for z in sorted(by_slice):
        s = by_slice[z]
        pts = list(zip(s.points, s.labels, strict=True))
        for box in s.boxes:
            match = next(
                (
                    k
                    for k, keys in boxes_of.items()
                    if all(kz != z for kz, _ in keys)
                    and any(_box_iou(box, kb) >= SAME_OBJECT_IOU for _, kb in keys)
                ),
                None,
            )
            k = match if match is not None else len(objects) + 1
            prompt = SlicePrompt(z, tuple(box), [p for p, _ in pts], [lb for _, lb in pts])
            objects.setdefault(k, []).append(prompt)
            boxes_of.setdefault(k, []).append((z, tuple(box)))
        if not s.boxes and pts:
            first = next((p for p, lb in pts if lb == 1), None)
            if first is None:
                raise PromptError(
                    f"slice {z} has only negative points: add a positive point or a box"
                )
            inside = next(
                (
                    k
                    for k, keys in boxes_of.items()
                    if any(
                        kb[0] <= first[0] <= kb[2] and kb[1] <= first[1] <= kb[3] for _, kb in keys
                    )
                ),
                None,
            )
            k = inside if inside is not None else len(objects) + 1
            prompt = SlicePrompt(z, None, [p for p, _ in pts], [lb for _, lb in pts])
            objects.setdefault(k, []).append(prompt)
    return objects


def write_stack(
    labels: Any,
    plane: Plane,
    axis: int,
    result: np.ndarray,
    *,
    overwrite: bool,
    highest: int | None = None,
) -> dict[int, int]:
    """Write a stack result (``(n, H, W)``, objects 1..K) into ``labels`` as new label ids,
    in one undo step; return {object: label id} for the objects that kept a voxel.

    Raises
    ------
    LabelIdError
        When the new ids do not fit the layer's type (nothing is written).
    """
    data = labels.data
    index_parts: list[list[np.ndarray]] = [[] for _ in range(data.ndim)]
    objects_parts = []
    for i in range(result.shape[0]):
        rows, cols = np.nonzero(result[i])
        if not len(rows):
            continue
        p = slice_plane(plane, axis, i)
        obj = result[i][rows, cols]
        if not overwrite:
            free = p.take(data)[rows, cols] == 0
            rows, cols, obj = rows[free], cols[free], obj[free]
        for part, idx in zip(index_parts, p.indices(rows, cols), strict=True):
            part.append(idx)
        objects_parts.append(obj)
    if not objects_parts:
        return {}
    objs = np.concatenate(objects_parts)
    present = np.unique(objs)
    if highest is None:
        highest = highest_id(data)
    ids = new_ids(
        data.dtype,
        highest,
        len(present),
        target=f"the labels layer {labels.name!r}",
        hint=wider_type_hint(highest + len(present)),
    )
    lut = np.zeros(int(result.max()) + 1, data.dtype)
    lut[present] = ids
    with labels.block_history():  # one Ctrl+Z removes the whole 3D write
        labels.data_setitem(tuple(np.concatenate(p) for p in index_parts), lut[objs])
    return {int(o): int(i) for o, i in zip(present, ids, strict=True)}
