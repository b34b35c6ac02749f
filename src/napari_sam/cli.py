"""``napari-sam``: SAM segmentation from the command line, on the Qt-free core.

Examples
--------
::

    napari-sam auto cells.tif -o labels.tif
    napari-sam segment cells.tif --point 120,88 --point 40,60,0 -o one_cell.tif
    napari-sam segment cells.tif --box 10,10,60,70 --box 100,20,150,90 -o two_cells.tif
    napari-sam embed cells.tif          # precompute; later commands reuse it
    napari-sam models                   # the models, and which are downloaded
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _floats(text: str, n: tuple[int, ...], what: str) -> list[float]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} {text!r}: expected numbers") from None
    if len(values) not in n:
        raise argparse.ArgumentTypeError(
            f"{what} {text!r}: expected {' or '.join(map(str, n))} comma-separated numbers"
        )
    return values


def _point(text: str) -> list[float]:
    v = _floats(text, (2, 3), "point")
    if len(v) == 3 and v[2] not in (0, 1):
        raise argparse.ArgumentTypeError(f"point {text!r}: label must be 1 (positive) or 0")
    return v if len(v) == 3 else [*v, 1.0]


def _box(text: str) -> list[float]:
    return _floats(text, (4,), "box")


def _pair(text: str) -> tuple[float, float]:
    lo, hi = _floats(text, (2,), "range")
    return lo, hi


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None


def _parser() -> argparse.ArgumentParser:
    from .core.acceleration import PRECISIONS
    from .core.registry import DEFAULT_MODEL, MODELS

    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        help=f"registry model: {', '.join(MODELS)} (default {DEFAULT_MODEL}; see 'napari-sam "
        "models'; with --checkpoint, the type is read from the file and this, if given, must "
        "match)",
    )
    g.add_argument(
        "--checkpoint", type=Path, help="a SAM checkpoint file (official or fine-tuned)"
    )
    g.add_argument(
        "--skip-pickled-objects",
        action="store_true",
        help="read a checkpoint that also holds pickled Python objects (e.g. a training "
        "checkpoint), replacing them by inert stand-ins: nothing in the file runs. Only for "
        "files from a source you trust",
    )
    g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda[:N], mps")
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="image-encoder precision (default: $NAPARI_SAM_PRECISION or auto = bf16 on CPUs "
        "with AMX-BF16, else fp32; fp16 on CUDA only)",
    )
    g.add_argument(
        "--no-fast",
        action="store_true",
        help="run Meta's original modules instead of napari-sam's faster ones (same masks)",
    )
    g.add_argument(
        "--embeddings",
        type=Path,
        default=None,
        help="folder of precomputed embeddings (default: the user cache; see 'embed')",
    )
    g.add_argument(
        "--no-embedding-cache",
        action="store_true",
        help="neither read nor write embeddings on disk",
    )
    n = common.add_argument_group("image normalisation")
    n.add_argument(
        "--normalization",
        choices=["auto", "percentile", "contrast_limits", "none"],
        default="auto",
        help="auto: uint8 as is, other dtypes by percentiles (default)",
    )
    n.add_argument("--contrast-limits", type=_pair, metavar="LO,HI", help="map LO..HI to 0..255")
    n.add_argument(
        "--percentiles", type=_pair, metavar="LO,HI", default=(1.0, 99.8), help="default 1,99.8"
    )
    n.add_argument("--channel-axis", type=int, help="axis holding channels of a 3D array")
    n.add_argument("--channels", type=_ints, metavar="I[,J[,K]]", help="channels to use (1-3)")
    n.add_argument("--rgb", action="store_true", help="the last axis is RGB(A)")

    p = argparse.ArgumentParser(
        prog="napari-sam",
        description="Segment Anything (SAM) for microscopy and medical images.",
        epilog="Coordinates are (row, col) pixel indices, as napari shows them.",
    )
    p.add_argument("--version", action="version", version=f"napari-sam-kit {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("auto", parents=[common], help="segment every object into instance labels")
    a.add_argument("image", type=Path)
    a.add_argument("-o", "--output", type=Path, required=True, help="labels file (.tif/.png/.npy)")
    a.add_argument("--table", type=Path, help="also write per-object scores as CSV")
    from .core.automatic import AutoParams

    d = AutoParams()
    a.add_argument("--points-per-side", type=int, default=d.points_per_side)
    a.add_argument("--points-per-batch", type=int, default=d.points_per_batch)
    a.add_argument("--pred-iou-thresh", type=float, default=d.pred_iou_thresh)
    a.add_argument("--stability-score-thresh", type=float, default=d.stability_score_thresh)
    a.add_argument("--box-nms-thresh", type=float, default=d.box_nms_thresh)
    a.add_argument("--crop-n-layers", type=int, default=d.crop_n_layers)
    a.add_argument("--min-size", type=int, default=d.min_size, help="drop smaller objects (px)")

    s = sub.add_parser("segment", parents=[common], help="segment objects from points and boxes")
    s.add_argument("image", type=Path)
    s.add_argument(
        "--point",
        type=_point,
        action="append",
        default=[],
        metavar="ROW,COL[,LABEL]",
        help="a click; LABEL 1 = object (default), 0 = not the object. Repeatable",
    )
    s.add_argument(
        "--box",
        type=_box,
        action="append",
        default=[],
        metavar="ROW0,COL0,ROW1,COL1",
        help="a box around one object; several boxes give several objects. Repeatable",
    )
    s.add_argument("-o", "--output", type=Path, required=True, help="labels file (.tif/.png/.npy)")

    e = sub.add_parser("embed", parents=[common], help="precompute image embeddings")
    e.add_argument("images", type=Path, nargs="+")

    m = sub.add_parser("models", help="list the models by domain: size, downloaded or not, path")
    m.add_argument(
        "-v", "--verbose", action="store_true", help="also the speed class and a description"
    )
    return p


def _prepare(args: argparse.Namespace, path: Path):
    from .core.io import read_image
    from .core.normalize import Normalization

    norm = Normalization(
        method=args.normalization,
        contrast_limits=args.contrast_limits,
        percentiles=args.percentiles,
        channel_axis=args.channel_axis,
        channels=args.channels,
    )
    image = read_image(path)
    return norm.apply(image, rgb=True if args.rgb else None), norm, image


def _engine(args: argparse.Namespace):
    from .core.checkpoints import checkpoints_dir, load_model
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
        store = EmbeddingStore(args.embeddings or checkpoints_dir().parent / "embeddings")
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
    from .core.errors import ImageError, NapariSamError
    from .core.io import LABEL_SUFFIXES, READ_SUFFIXES

    for image in args.images if args.command == "embed" else [args.image]:
        if image.suffix.lower() not in READ_SUFFIXES:
            raise ImageError(
                f"Cannot read image {image}: unsupported file type "
                f"{image.suffix.lower() or '(no extension)'!r} "
                f"(supported: {', '.join(READ_SUFFIXES)})."
            )
        if not image.is_file():
            what = "not a file" if image.exists() else "file not found"
            raise ImageError(f"Cannot read image {image}: {what}.")
    if args.command == "embed":
        return
    outputs = [("labels", args.output)]
    if args.command == "auto" and args.table is not None:
        outputs.append(("table", args.table))
    for what, out in outputs:
        if what == "labels" and out.suffix.lower() not in LABEL_SUFFIXES:
            raise NapariSamError(
                f"cannot write labels to {out}: unsupported file type "
                f"{out.suffix.lower() or '(no extension)'!r} "
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
    from .core.io import write_labels

    if args.command == "models":
        return _models(args)
    _check_paths(args)
    if args.command == "embed":
        engine = _engine(args)
        for path in args.images:
            rgb, _, _ = _prepare(args, path)
            _embed(engine, rgb)
            where = engine.store.path_for(engine.model_id, _key(rgb)) if engine.store else None
            print(f"{path}: embedding stored in {where}" if where else f"{path}: embedded")
        return EXIT_OK

    # Read the image (and check the prompts against it) before loading the model: mistakes in
    # the command line are reported at once, not after a download or a model load.
    rgb, _, _ = _prepare(args, args.image)
    if args.command == "segment":
        prompts = _prompts(args, rgb)
        return _segment(args, _engine(args), rgb, prompts, write_labels)
    return _auto(args, _engine(args), rgb, write_labels)


def _key(rgb):
    from .core.embedding import image_key

    return image_key(rgb)


def _prompts(args, rgb):
    import numpy as np

    from .core.errors import PromptError
    from .core.prompts import make_prompts

    if not args.point and not args.box:
        raise PromptError("give at least one --point ROW,COL or --box ROW0,COL0,ROW1,COL1")
    pts = np.array([p[:2] for p in args.point]) if args.point else None
    lbl = np.array([int(p[2]) for p in args.point]) if args.point else None
    return make_prompts(pts, lbl, args.box or None, image_shape=rgb.shape[:2])


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _segment(args, engine, rgb, prompts, write_labels) -> int:
    import numpy as np

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
    out = write_labels(args.output, labels)
    print(f"wrote {out} ({_plural(pred.n_objects, 'object')})")
    return EXIT_OK


def _auto(args, engine, rgb, write_labels) -> int:
    from .core.automatic import AutoParams, segment_automatically

    params = AutoParams(
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=args.box_nms_thresh,
        crop_n_layers=args.crop_n_layers,
        min_size=args.min_size,
    )
    _embed(engine, rgb)
    last = [-1]

    def progress(done: int, total: int) -> None:
        pct = int(100 * done / max(total, 1))
        if pct != last[0]:
            last[0] = pct
            print(f"\rautomatic segmentation: {pct:3d}%", end="", file=sys.stderr)

    t0 = time.perf_counter()
    result = segment_automatically(engine, rgb, params, progress=progress)
    print(f"\rautomatic segmentation: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    out = write_labels(args.output, result.labels)
    if args.table:
        with open(args.table, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(result.table)
            w.writerows(zip(*result.table.values(), strict=True))
    print(f"wrote {out} ({_plural(result.n_objects, 'object')})")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-sam`` command; returns the exit status."""
    from .core.errors import NapariSamError

    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except NapariSamError as exc:
        print(f"napari-sam: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("napari-sam: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # e.g. output folder missing or not writable
        print(f"napari-sam: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
