"""The volume forms of ``napari-sam segment`` and ``napari-sam auto`` (see :mod:`napari_sam.cli`).

Prompts address voxels as ``(z, row, col)``, the array order of the file (SimpleITK's
``GetArrayFromImage`` order for medical scans): ``--box Z,ROW0,COL0,ROW1,COL1`` and
``--point Z,ROW,COL[,LABEL]``. Each prompted slice is segmented as a 2D image is:

- every ``--box`` is one object; objects are numbered in the order the boxes are given;
- ``--point`` clicks on a slice refine every box on that slice; clicks on a slice without a
  box ask for one more object there (numbered after all boxes, by slice);

and the masks are written into a label volume of the input's shape and geometry. Slices
without prompts stay 0, unless ``--propagate`` carries every object from its prompted (key)
slices through the volume (:func:`napari_sam.core.propagation.propagate`). ``auto --3d``
links the per-slice objects into 3D objects
(:func:`napari_sam.core.linking.segment_volume_automatically`).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._cli_common import EXIT_OK, _auto_params, _coords, _Input, _plural, _write_table


@dataclass
class SlicePrompts:
    """Prompts of one slice: clicks shared by its boxes, and the label id of each object."""

    z: int
    points: list[tuple[float, float]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    prompts: Any = None  # napari_sam.core.prompts.Prompts, validated against the slice


def _slice_index(values: list[float], inp: _Input, what: str) -> int:
    from .core.errors import PromptError

    z, n = values[0], len(inp.planes)
    if not float(z).is_integer() or not 0 <= z < n:
        raise PromptError(
            f"{what} {_coords(values)}: slice {z:g} is not in the volume "
            f"({inp.describe()}: slices 0 to {n - 1})"
        )
    return int(z)


def _volume_prompts(args: argparse.Namespace, inp: _Input) -> dict[int, SlicePrompts]:
    """Group and validate the command line's prompts by slice (before the model loads)."""
    from .core.errors import PromptError
    from .core.prompts import make_prompts

    form = "--box Z,ROW0,COL0,ROW1,COL1 or --point Z,ROW,COL[,LABEL]"
    if not args.point and not args.box:
        raise PromptError(f"give at least one {form} ({inp.path} is a volume)")
    for v, what, n in [(p, "--point", 2) for p in args.point] + [
        (b, "--box", 4) for b in args.box
    ]:
        if len(v) == n:
            raise PromptError(
                f"{inp.path} is a volume ({inp.describe()}): {what} {_coords(v)} needs the "
                f"slice first: {form}"
            )
    by_slice: dict[int, SlicePrompts] = {}
    for label, box in enumerate(args.box, start=1):
        z = _slice_index(box, inp, "--box")
        s = by_slice.setdefault(z, SlicePrompts(z))
        s.boxes.append(tuple(box[1:]))
        s.ids.append(label)
    for point in args.point:
        z = _slice_index(point, inp, "--point")
        s = by_slice.setdefault(z, SlicePrompts(z))
        s.points.append((point[1], point[2]))
        s.point_labels.append(int(point[3]) if len(point) == 4 else 1)
    next_id = len(args.box) + 1
    for z in sorted(by_slice):
        s = by_slice[z]
        if not s.boxes:
            s.ids.append(next_id)
            next_id += 1
        try:
            s.prompts = make_prompts(
                s.points or None, s.point_labels or None, s.boxes or None,
                image_shape=inp.plane_shape,
            )  # fmt: skip
        except PromptError as exc:
            raise PromptError(f"slice {z}: {exc}") from None
    return by_slice


def _segment_volume(args, engine, inp: _Input, by_slice: dict[int, SlicePrompts]) -> int:
    """Segment the prompted slices into a label volume of the input's shape and geometry."""
    from .core.io import write_labels

    if getattr(args, "propagate", False):
        return _propagate_volume(args, engine, inp)
    labels = np.zeros(inp.planes.shape[:3], np.int32)
    n_objects = 0
    for z in sorted(by_slice):
        s = by_slice[z]
        t0 = time.perf_counter()
        rgb = inp.rgb_plane(z)
        cached = engine.cached_embedding(rgb)
        emb = cached or engine.embed(rgb)
        how = "reused" if cached is not None else f"computed in {time.perf_counter() - t0:.1f} s"
        print(f"slice {z}: embedding {how}", file=sys.stderr)
        pred = engine.predict(emb, s.prompts)
        for obj, label in enumerate(s.ids):
            labels[z][pred.mask(obj)] = label
            print(
                f"object {label} (slice {z}): {int((labels[z] == label).sum())} px, "
                f"predicted IoU {pred.score(obj):.3f}",
                file=sys.stderr,
            )
        n_objects += len(s.ids)
    out = write_labels(args.output, labels, geometry=inp.geometry)
    print(f"wrote {out} ({_plural(n_objects, 'object')})")
    return EXIT_OK


def _stack(inp: _Input) -> Any:
    from .core.stack import SliceStack

    return SliceStack(inp.rgb_plane, inp.planes.shape[:3], axis=0)


def _spacing(inp: _Input) -> tuple[float, ...] | None:
    g = inp.geometry
    return None if g is None else tuple(g.spacing_in_mm())[-3:]


def _progress(what: str) -> Any:
    def progress(done: int, total: int) -> None:
        print(f"\r{what}: {done}/{total}", end="", file=sys.stderr)

    return progress


def _propagate_volume(args, engine, inp: _Input) -> int:
    """``segment VOLUME --propagate``: every object carried from its key slices through the
    volume, slice by slice (each slice prompted from the previous one's mask)."""
    from .core.io import write_labels
    from .core.propagation import PropagationParams, objects_from_prompts, propagate

    t0 = time.perf_counter()
    objects = objects_from_prompts(boxes=args.box, points=args.point)
    result = propagate(
        engine,
        _stack(inp),
        objects,
        PropagationParams()
        if args.min_score is None
        else PropagationParams(min_score=args.min_score),
        spacing=_spacing(inp),
        progress=_progress("propagating"),
    )
    print(f"\rpropagated in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    table = result.table
    for i, label in enumerate(table["label"]):
        volume = table.get("volume")
        mm3 = "" if volume is None else f", {float(volume[i]):.1f} mm^3"
        print(
            f"object {int(label)}: slices {int(table['slice_first'][i])}-"
            f"{int(table['slice_last'][i])}, {int(table['voxels'][i])} voxels{mm3}",
            file=sys.stderr,
        )
    out = write_labels(args.output, result.labels, geometry=inp.geometry)
    print(f"wrote {out} ({_plural(len(table['label']), 'object')}, propagated)")
    return EXIT_OK


def _auto_volume(args, engine, inp: _Input) -> int:
    """Automatic segmentation of every slice; label ids are unique through the volume.

    Without ``--3d`` objects are not linked across slices (the same nucleus gets one id per
    slice); with it they are linked into 3D objects (tracks on a time series).
    """
    from .core.automatic import segment_automatically
    from .core.io import write_labels

    if getattr(args, "three_d", False):
        return _auto_volume_3d(args, engine, inp)

    params = _auto_params(args)
    n = len(inp.planes)
    labels = np.zeros(inp.planes.shape[:3], np.int32)
    tables = []
    t0 = time.perf_counter()
    for z in range(n):
        rgb = inp.rgb_plane(z)
        engine.embed(rgb)

        def progress(done: int, total: int, z: int = z) -> None:
            pct = int(100 * done / max(total, 1))
            print(
                f"\rautomatic segmentation: slice {z + 1}/{n} {pct:3d}%", end="", file=sys.stderr
            )

        result = segment_automatically(engine, rgb, params, progress=progress)
        offset = int(labels.max())
        labels[z] = np.where(result.labels > 0, result.labels + offset, 0)
        table = {"label": result.table["label"] + offset, "z": np.full(result.n_objects, z)}
        tables.append(table | {k: v for k, v in result.table.items() if k != "label"})
    print(
        f"\rautomatic segmentation: {n} slices done in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    out = write_labels(args.output, labels, geometry=inp.geometry)
    if args.table:
        _write_table(args.table, {k: np.concatenate([t[k] for t in tables]) for k in tables[0]})
    print(f"wrote {out} ({_plural(int(labels.max()), 'object')} on {_plural(n, 'slice')})")
    return EXIT_OK


def _auto_volume_3d(args, engine, inp: _Input) -> int:
    """``auto VOLUME --3d``: per-slice objects linked into 3D objects with one id each."""
    from .core.io import write_labels
    from .core.linking import segment_volume_automatically

    t0 = time.perf_counter()
    result = segment_volume_automatically(
        engine,
        _stack(inp),
        _auto_params(args),
        spacing=_spacing(inp),
        progress=_progress("automatic segmentation (3D)"),
    )
    n = len(inp.planes)
    print(
        f"\rautomatic segmentation (3D): {n} slices done in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    out = write_labels(args.output, result.labels, geometry=inp.geometry)
    if args.table:
        _write_table(args.table, result.table)
    n_obj = len(np.setdiff1d(np.unique(result.labels), [0]))
    print(f"wrote {out} ({_plural(n_obj, 'object')} linked through {_plural(n, 'slice')})")
    return EXIT_OK
