"""The command line's argument parser: every subcommand, its options and their types.

Kept apart from :mod:`napari_sam.cli` (which runs the commands) so that each stays readable;
``napari-sam --help`` imports only this and nothing heavy.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__

_OUTPUT_HELP = (
    "labels file: .tif, .npy, .png (2D), or .nii.gz, .nii, .nrrd, .mha, which keep the "
    "image's spacing, origin and direction"
)
_BATCH_OUTPUT = "; in a batch, the output folder (made if missing)"


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
    """2 to 4 numbers: whether a 3rd is a label or a column depends on the image (2D or not)."""
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if len(parts) not in (2, 3, 4):
        raise argparse.ArgumentTypeError(
            f"point {text!r}: expected 2 or 3 comma-separated numbers (ROW,COL[,LABEL]) for an "
            "image, 3 or 4 (Z,ROW,COL[,LABEL]) for a volume"
        )
    v = _floats(text, (len(parts),), "point")
    if len(v) == 4 and v[3] not in (0, 1):
        raise argparse.ArgumentTypeError(f"point {text!r}: label must be 1 (positive) or 0")
    return v


def _box(text: str) -> list[float]:
    return _floats(text, (4, 5), "box")


def _window(text: str) -> tuple[float, float]:
    from .core.errors import ImageError
    from .core.windows import parse_window

    try:
        return parse_window(text)
    except ImageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pair(text: str) -> tuple[float, float]:
    lo, hi = _floats(text, (2,), "range")
    return lo, hi


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None


def _precision(text: str) -> str:
    """``auto`` or a precision plan (``bf16``, ``linear=bf16,attention=fp32``), checked."""
    from .core.acceleration import parse_precision
    from .core.errors import NapariSamError

    try:
        plan = parse_precision(text)
    except NapariSamError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return "auto" if plan is None else plan.name


def _parser() -> argparse.ArgumentParser:
    """The ``napari-sam`` parser with all its subcommands."""
    from .core.acceleration import PRECISIONS

    common = _common_options(PRECISIONS)
    p = argparse.ArgumentParser(
        prog="napari-sam",
        description="Segment Anything (SAM) for microscopy and medical images.",
        epilog="Coordinates are (row, col) pixel indices, as napari shows them; in a volume "
        "(z, row, col) voxel indices in the file's array order.",
    )
    p.add_argument("--version", action="version", version=f"napari-sam-kit {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    a = _add_auto_parser(sub, common)
    s = _add_segment_parser(sub, common)
    e = sub.add_parser("embed", parents=[common], help="precompute image embeddings")
    e.add_argument("images", type=Path, nargs="+", help="images or volumes (every slice)")
    from ._cli_tiling import add_tiling_arguments

    for command in (a, s, e):
        add_tiling_arguments(command)
    from ._cli_batch import add_batch_arguments

    add_batch_arguments(a, prompts=False)
    add_batch_arguments(s, prompts=True)
    _add_replay_parser(sub, PRECISIONS)
    from ._cli_evaluate import add_evaluate_parser

    add_evaluate_parser(sub, common)
    from ._cli_info import add_info_parser

    add_info_parser(sub)

    m = sub.add_parser("models", help="list the models by domain: size, downloaded or not, path")
    m.add_argument(
        "-v", "--verbose", action="store_true", help="also the speed class and a description"
    )
    return p


def _common_options(precisions: Sequence[str]) -> argparse.ArgumentParser:
    """Model and normalisation options, shared by the commands that run SAM."""
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
        type=_precision,
        metavar="{" + ",".join(precisions) + ",OP=FMT,...}",
        default=None,
        help="image-encoder precision, for all of it or per operation (e.g. "
        "linear=bf16,attention=fp32; operations linear, attention, neck; int8 for linear on "
        "the CPU). Default: $NAPARI_SAM_PRECISION or auto = per operation what a one-time "
        "calibration measured faster on this CPU, fp32 on GPUs ('napari-sam info' shows it); "
        "fp16 on CUDA only",
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
    n.add_argument(
        "--window",
        type=_window,
        metavar="NAME|WIDTH,LEVEL",
        help="CT window as contrast limits: soft-tissue (400,40), lung (1500,-600), bone "
        "(1800,400), brain (80,40), liver, mediastinum, stroke, or WIDTH,LEVEL in HU",
    )
    n.add_argument("--channel-axis", type=int, help="axis holding channels of a 3D array")
    n.add_argument("--channels", type=_ints, metavar="I[,J[,K]]", help="channels to use (1-3)")
    n.add_argument("--rgb", action="store_true", help="the last axis is RGB(A)")
    return common


def _add_auto_parser(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    a = sub.add_parser("auto", parents=[common], help="segment every object into instance labels")
    a.add_argument(
        "images",
        type=Path,
        nargs="+",
        metavar="IMAGE",
        help="image or volume (volumes: slice by slice); several images, or a folder of them, "
        "run as a batch into the folder -o (docs/batch.md)",
    )
    a.add_argument("-o", "--output", type=Path, required=True, help=_OUTPUT_HELP + _BATCH_OUTPUT)
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
    a.add_argument(
        "--3d",
        dest="three_d",
        action="store_true",
        help="volumes: link the objects of all slices into 3D objects (tracks over time)",
    )
    return a


def _add_segment_parser(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    s = sub.add_parser("segment", parents=[common], help="segment objects from points and boxes")
    s.add_argument(
        "images",
        type=Path,
        nargs="+",
        metavar="IMAGE",
        help="image or volume; several images (with --prompts FILE) run as a batch into the "
        "folder -o (docs/batch.md)",
    )
    s.add_argument(
        "--point",
        type=_point,
        action="append",
        default=[],
        metavar="[Z,]ROW,COL[,LABEL]",
        help="a click; LABEL 1 = object (default), 0 = not the object; Z (volumes) is the "
        "slice. Repeatable",
    )
    s.add_argument(
        "--box",
        type=_box,
        action="append",
        default=[],
        metavar="[Z,]ROW0,COL0,ROW1,COL1",
        help="a box around one object; several boxes give several objects; Z (volumes) is "
        "the slice. Repeatable",
    )
    s.add_argument(
        "--propagate",
        action="store_true",
        help="volumes: carry every object from its prompted slices through the volume",
    )
    s.add_argument(
        "--min-score",
        type=float,
        default=None,
        help="with --propagate: stop where SAM's predicted IoU falls below this (default: "
        "see docs/volumes.md; lower it for models whose scores run low)",
    )
    s.add_argument("-o", "--output", type=Path, required=True, help=_OUTPUT_HELP + _BATCH_OUTPUT)
    return s


def _add_replay_parser(sub, precisions: Sequence[str]) -> None:
    r = sub.add_parser(
        "replay",
        help="recreate the labels of a saved napari session by running SAM again",
        description="Re-run SAM on every prompt of a session file with its recorded model, "
        "precision and normalisation, write the labels, and report per object whether the "
        "mask is identical to the recorded one (else its IoU).",
    )
    r.add_argument("session", type=Path, help="session file (.json) saved in napari")
    r.add_argument("-o", "--output", type=Path, required=True, help="labels file (.tif/.png/.npy)")
    r.add_argument(
        "--image", type=Path, help="the image file (default: the path recorded in the session)"
    )
    r.add_argument("--target", help="labels layer to recreate, when the session wrote to several")
    r.add_argument(
        "--allow-other-image",
        action="store_true",
        help="replay even if the image's content differs from the recorded one (same shape)",
    )
    r.add_argument(
        "--checkpoint", type=Path, help="use this checkpoint instead of the recorded model"
    )
    r.add_argument("--device", default=None, help="default: the recorded device")
    r.add_argument(
        "--precision",
        type=_precision,
        metavar="{" + ",".join(precisions) + ",OP=FMT,...}",
        default=None,
        help="default: the recorded precision",
    )
