"""``napari-sam``: SAM segmentation from the command line, on the Qt-free core.

Examples
--------
::

    napari-sam auto cells.tif -o labels.tif
    napari-sam segment cells.tif --point 120,88 --point 40,60,0 -o one_cell.tif
    napari-sam segment cells.tif --box 10,10,60,70 --box 100,20,150,90 -o two_cells.tif
    napari-sam embed cells.tif          # precompute; later commands reuse it
    napari-sam embed slide.tif --tile 768,768 --halo 128,128   # a large image, tile by tile
    napari-sam replay session.json -o labels.tif   # recreate a napari session's labels
    napari-sam models                   # the models, and which are downloaded
    napari-sam evaluate cells.tif cells_labels.tif --clicks 10   # mIoU per click, NoC@85/90

    # Volumes (NIfTI, NRRD, MetaImage, DICOM, 3D TIFF): prompts are (z, row, col) voxels
    napari-sam segment scan.nii.gz --box 12,80,90,140,160 --window soft-tissue -o tumour.nii.gz
    napari-sam embed scan.nii.gz        # every slice
    napari-sam auto stack.tif -o nuclei.tif   # slice by slice

    # Many images into a folder: resumable, with a summary (docs/batch.md)
    napari-sam auto images/ -o results/ --workers 2        # on a local Dask cluster
    napari-sam segment images/*.tif -o masks/ --prompts boxes.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ._cli_common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    _auto_params,
    _coords,
    _embeddings_dir,
    _Input,
    _OnePlane,
    _plural,
    _write_table,
    known_error,
)
from ._cli_parser import _parser

if TYPE_CHECKING:  # imported when used, so that ``--version`` and ``--help`` stay fast
    from .core.engine import SamEngine
    from .core.lazy_images import LazyImage
    from .core.normalize import Normalization


def _read(args: argparse.Namespace, path: Path) -> _Input:
    """Read ``path`` and fix its normalisation (before any model is loaded)."""
    import numpy as np

    from .core.io import READ_SUFFIXES, file_suffix, read_image
    from .core.lazy_images import open_lazy_image
    from .core.normalize import Normalization
    from .core.volume_io import read_volume
    from .core.windows import volume_normalization

    base = Normalization(
        method=args.normalization,
        contrast_limits=args.contrast_limits,
        percentiles=args.percentiles,
        channel_axis=args.channel_axis,
        channels=args.channels,
    )
    rgb = True if args.rgb else None
    image = open_lazy_image(path)  # OME-Zarr, large compressed TIFF: no pixels read
    if image is not None and not image.is_volume:
        return _lazy_input(args, image, base)
    if args.channel_axis is not None and file_suffix(path) in READ_SUFFIXES:
        # --channel-axis counts the axes of the array as stored: one 2D plane, as always.
        data = read_image(path)
        norm = volume_normalization(data, base, window=args.window) if args.window else base
        # Rows and columns are the other two axes, also when the channels come first.
        one = data.ndim == 3 and -3 <= args.channel_axis < 3
        planes = _OnePlane(data, args.channel_axis) if one else data[np.newaxis]
        return _Input(path, planes, norm, rgb, None, is_volume=False)
    volume = read_volume(path)
    if volume.has_channels and not volume.rgb:
        base = replace(base, channel_axis=-1)  # the reader puts channels last
    rgb = True if (args.rgb or volume.rgb) else None
    g = volume.geometry
    if not volume.is_volume:
        norm = volume_normalization(volume.data, base, window=args.window) if args.window else base
        return _Input(path, volume.data[np.newaxis], norm, rgb, g, is_volume=False)
    norm = volume_normalization(
        volume.data,
        base,
        window=args.window,
        channels_last=volume.has_channels,
        rgb=volume.rgb,
    )
    planes = volume.data.reshape(-1, *volume.data.shape[g.ndim - 2 :])
    return _Input(path, planes, norm, rgb, g, is_volume=True)


def _lazy_input(args: argparse.Namespace, image: LazyImage, base: Normalization) -> _Input:
    """A 2D OME-Zarr or large TIFF, unread: tiled commands read it tile by tile."""
    from .core.lazy_images import is_zarr_folder
    from .core.windows import volume_normalization

    # The file says where the channels are; --channel-axis (the axes as stored) is for a
    # TIFF only, as it is for smaller ones. OME-Zarr axes are named by their metadata.
    if args.channel_axis is None or is_zarr_folder(image.source):
        base = replace(base, channel_axis=None if image.rgb else image.channel_axis)
    plane = image.plane
    norm = volume_normalization(plane, base, window=args.window) if args.window else base
    rgb = True if (args.rgb or image.rgb) else None
    planes = _OnePlane(plane, None if rgb else norm.channel_axis)
    return _Input(image.source, planes, norm, rgb, image.geometry, is_volume=False)


def _engine(args: argparse.Namespace):
    from .core.checkpoints import load_model
    from .core.embedding import EmbeddingStore
    from .core.engine import SamEngine
    from .core.registry import DEFAULT_MODEL

    model = args.model or ("auto" if args.checkpoint else DEFAULT_MODEL)

    def progress(done: int, total: int) -> None:
        if total:
            print(f"\rdownloading {model}: {100 * done / total:5.1f}%", end="", file=sys.stderr)
            if done >= total:
                print(file=sys.stderr)

    loaded = load_model(
        model,
        checkpoint=args.checkpoint,
        device=args.device,
        progress=progress,
        fast=False if args.no_fast else None,
        precision=args.precision,
        skip_pickled_objects=args.skip_pickled_objects,
    )
    store = None
    if not args.no_embedding_cache:
        store = EmbeddingStore(_embeddings_dir(args))
    return SamEngine(loaded, store=store)


def _embed(engine, rgb):
    t0 = time.perf_counter()
    cached = engine.cached_embedding(rgb)
    emb = cached or engine.embed(rgb)
    how = "reused" if cached is not None else f"computed in {time.perf_counter() - t0:.1f} s"
    m = engine.model
    print(f"embedding ({engine.model_id}, {m.device}, {m.precision}): {how}", file=sys.stderr)
    return emb


def _check_paths(args: argparse.Namespace) -> None:
    """Fail on missing inputs and unwritable outputs before any slow work (model, encoder)."""
    from .core.errors import NapariSamError
    from .core.io import LABEL_SUFFIXES, file_suffix
    from .core.volume_io import check_readable

    for image in args.images if args.command == "embed" else [args.image]:
        check_readable(image)
    if args.command == "embed":
        return
    outputs = [("labels", args.output)]
    if args.command == "auto" and args.table is not None:
        outputs.append(("table", args.table))
    for what, out in outputs:
        if what == "labels" and file_suffix(out) not in LABEL_SUFFIXES:
            raise NapariSamError(
                f"cannot write labels to {out}: unsupported file type "
                f"{file_suffix(out) or '(no extension)'!r} "
                f"(supported: {', '.join(LABEL_SUFFIXES)})"
            )
        folder = out.parent
        if not folder.is_dir():
            raise NapariSamError(
                f"cannot write {what} to {out}: folder {folder} does not exist"
                if not folder.exists()
                else f"cannot write {what} to {out}: {folder} is not a folder"
            )
        if out.is_dir():
            raise NapariSamError(f"cannot write {what} to {out}: it is a folder")


def _models(args: argparse.Namespace) -> int:
    """Print the registry grouped by domain: name, domain, size, cached, path."""
    from .core.downloads import list_models
    from .core.registry import format_size, models_by_domain

    statuses = {s.spec.name: s for s in list_models()}
    header = ["name", "domain", "size", "cached", "path"]
    if args.verbose:
        header[4:4] = ["speed", "description"]
    rows = [header]
    for domain, specs in models_by_domain(s.spec for s in statuses.values()).items():
        for spec in specs:
            status = statuses[spec.name]
            size = format_size(spec.size_bytes)
            if spec.size is None and spec.approx_size is not None:
                size = "~" + size  # micro-sam publishes no sizes: that of the architecture
            cached = "bundled" if spec.url is None else "yes" if status.cached else "no"
            row = [spec.name, domain, size, cached, str(status.path)]
            if args.verbose:
                row[4:4] = [spec.speed, spec.description]
            rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for r in rows:
        print("  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]))
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    if args.command == "replay":
        return _replay(args)
    if args.command == "models":
        return _models(args)
    if args.command == "info":
        from ._cli_info import run_info

        return run_info(args)
    if args.command == "evaluate":
        from ._cli_evaluate import run_evaluate

        return run_evaluate(args, _read, _engine)
    if args.command in ("auto", "segment"):
        from ._cli_batch import batch_mode, run_batch

        if batch_mode(args):
            return run_batch(args, _run_image, _engine)
        args.image = args.images[0]
    _check_paths(args)
    from ._cli_tiling import embed_tiles, tiling_for

    if args.command == "embed":
        # Read every input before the model loads: a bad file is reported at once.
        inputs = [_read(args, path) for path in args.images]
        grids = [tiling_for(args, inp) for inp in inputs]
        engine = _engine(args)
        for inp, grid in zip(inputs, grids, strict=True):
            if grid is None:
                _embed_all(engine, inp)
            else:
                embed_tiles(args, engine, inp, grid)
        return EXIT_OK
    return _run_image(args, lambda: _engine(args))


def _run_image(args: argparse.Namespace, engine: Callable[[], SamEngine]) -> int:
    """``segment`` or ``auto`` of ``args.image`` into ``args.output``; ``engine()`` gives the
    model, asked for only once the image and prompts have been checked."""
    from ._cli_batch import check_prompt_form
    from ._cli_tiling import auto_tiles, segment_tiles, tiling_for

    # Read the image (and check the prompts against it) before loading the model: mistakes in
    # the command line are reported at once, not after a download or a model load.
    inp = _read(args, args.image)
    _check_output_for(args, inp)
    check_prompt_form(args, inp)
    flag = "--propagate" if getattr(args, "propagate", False) else None
    flag = "--3d" if getattr(args, "three_d", False) else flag
    if flag and not inp.is_volume:
        from .core.errors import ImageError

        raise ImageError(f"{flag} needs a volume or a stack, but {inp.path} is one 2D image")
    grid = tiling_for(args, inp)
    from ._cli_volume import _auto_volume, _segment_volume, _volume_prompts

    if args.command == "segment":
        if inp.is_volume:
            by_slice = _volume_prompts(args, inp)
            return _segment_volume(args, engine(), inp, by_slice)
        prompts = _prompts(args, inp)
        if grid is not None:
            return segment_tiles(args, engine(), inp, prompts, grid)
        return _segment(args, engine(), inp, prompts)
    if inp.is_volume:
        return _auto_volume(args, engine(), inp)
    if grid is not None:
        return auto_tiles(args, engine(), inp, grid)
    return _auto(args, engine(), inp)


def _check_output_for(args: argparse.Namespace, inp: _Input) -> None:
    from .core.errors import ImageError
    from .core.io import file_suffix

    if not inp.is_volume:
        return
    g = inp.geometry
    if g is not None and g.ndim == 4:
        raise ImageError(
            f"{inp.path} is 4D ({' x '.join(map(str, g.shape))}, axes t, z, row, col); "
            f"'{args.command}' takes a 3D volume or a 2D time series: save one time point."
        )
    if file_suffix(args.output) == ".png":
        raise ImageError(
            f"cannot write the labels of a volume to {args.output}: PNG holds one 2D plane; "
            "use .nii.gz, .nrrd, .mha, .tif or .npy."
        )


def _key(rgb):
    from .core.embedding import image_key

    return image_key(rgb)


def _embed_all(engine, inp: _Input) -> None:
    """Embed every plane (slice) of ``inp``, reusing what is cached; report where."""
    if not inp.is_volume:
        rgb = inp.rgb_plane(0)
        _embed(engine, rgb)
        where = engine.store.path_for(engine.model_id, _key(rgb)) if engine.store else None
        print(f"{inp.path}: embedding stored in {where}" if where else f"{inp.path}: embedded")
        return
    n = len(inp.planes)
    reused = 0
    t0 = time.perf_counter()
    for i in range(n):
        rgb = inp.rgb_plane(i)
        if engine.cached_embedding(rgb) is not None:
            reused += 1
        else:
            engine.embed(rgb)
        print(f"\rembedding slices: {i + 1}/{n}", end="", file=sys.stderr)
    m = engine.model
    print(
        f"\rembedding slices ({engine.model_id}, {m.device}, {m.precision}): {n - reused} "
        f"computed, {reused} reused in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    where = f" in {engine.store.folder}" if engine.store else ""
    print(f"{inp.path}: {_plural(n, 'slice embedding')} stored{where}")


def _prompts(args, inp: _Input):
    import numpy as np

    from .core.errors import PromptError
    from .core.prompts import make_prompts

    if not args.point and not args.box:
        raise PromptError("give at least one --point ROW,COL or --box ROW0,COL0,ROW1,COL1")
    for p in args.point:
        if len(p) == 4 or (len(p) == 3 and p[2] not in (0, 1)):
            raise PromptError(
                f"{inp.path} is a 2D image ({inp.describe()}): --point takes ROW,COL[,LABEL] "
                f"with LABEL 1 or 0, not {_coords(p)}"
            )
    for b in args.box:
        if len(b) == 5:
            raise PromptError(
                f"{inp.path} is a 2D image ({inp.describe()}): --box takes ROW0,COL0,ROW1,COL1, "
                f"not {_coords(b)}"
            )
    pts = np.array([p[:2] for p in args.point]) if args.point else None
    lbl = np.array([int(p[2]) if len(p) == 3 else 1 for p in args.point]) if args.point else None
    return make_prompts(pts, lbl, args.box or None, image_shape=inp.plane_shape)


def _segment(args, engine, inp: _Input, prompts) -> int:
    import numpy as np

    from .core.io import write_labels

    rgb = inp.rgb_plane(0)
    emb = _embed(engine, rgb)
    pred = engine.predict(emb, prompts)
    labels = np.zeros(rgb.shape[:2], np.int32)
    for obj in range(pred.n_objects):
        labels[pred.mask(obj)] = obj + 1
        print(
            f"object {obj + 1}: {int((labels == obj + 1).sum())} px, "
            f"predicted IoU {pred.score(obj):.3f}",
            file=sys.stderr,
        )
    out = write_labels(args.output, labels, geometry=inp.geometry)
    print(f"wrote {out} ({_plural(pred.n_objects, 'object')})")
    return EXIT_OK


def _auto(args, engine, inp: _Input) -> int:
    from .core.automatic import segment_automatically
    from .core.io import write_labels

    rgb = inp.rgb_plane(0)
    _embed(engine, rgb)
    last = [-1]

    def progress(done: int, total: int) -> None:
        pct = int(100 * done / max(total, 1))
        if pct != last[0]:
            last[0] = pct
            print(f"\rautomatic segmentation: {pct:3d}%", end="", file=sys.stderr)

    t0 = time.perf_counter()
    result = segment_automatically(engine, rgb, _auto_params(args), progress=progress)
    print(f"\rautomatic segmentation: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    out = write_labels(args.output, result.labels, geometry=inp.geometry)
    if args.table:
        _write_table(args.table, result.table)
    print(f"wrote {out} ({_plural(result.n_objects, 'object')})")
    return EXIT_OK


def _replay(args: argparse.Namespace) -> int:
    from .core.errors import SessionError
    from .core.io import read_image, write_labels
    from .core.replay import replay_session
    from .core.session_record import SessionRecord

    record = SessionRecord.load(args.session)
    source = record.image.source
    image_path = args.image or (Path(source) if source else None)
    if image_path is None:
        raise SessionError(
            f"{args.session} does not say which file its image came from",
            cli_hint="pass --image PATH",
        )
    # The same checks as for 'segment': readable image type, writable output, before work.
    _check_paths(argparse.Namespace(command="replay", image=image_path, output=args.output))
    image = read_image(image_path)
    result = replay_session(
        record,
        image,
        target=args.target,
        allow_other_image=args.allow_other_image,
        device=args.device,
        precision=args.precision,
        checkpoint=None if args.checkpoint is None else str(args.checkpoint),
    )
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for line in [
        *(o.describe() for o in result.objects),
        *(a.describe() for a in result.auto_runs),
    ]:
        print(line)
    out = write_labels(args.output, result.labels)
    verdict = "identical to the session" if result.identical else "not identical"
    print(f"wrote {out} ({result.target!r}: {result.summary()}; {verdict})")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-sam`` command; returns the exit status."""
    from .core.errors import NapariSamError

    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("napari-sam: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (NapariSamError, OSError, MemoryError, RuntimeError) as exc:
        message = known_error(exc)
        if message is None:  # a bug: its traceback is what a report needs
            raise
        print(f"napari-sam: error: {message}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
