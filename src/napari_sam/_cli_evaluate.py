"""``napari-sam evaluate``: the interactive-segmentation benchmark on the user's own data.

::

    napari-sam evaluate IMAGE REFERENCE_LABELS [--clicks N] [--objects K] [--box-first]
                        [model options] [--json FILE]

Simulates a user who clicks each reference object until it is right (the protocol of
:mod:`napari_sam.core.clicks`), prints the mIoU after each click as a table on stdout and,
last, one line ``mIoU@1=X mIoU@N=Y NoC@85=A NoC@90=B objects=K`` that scripts can parse.
Progress and settings go to stderr. A volume's reference objects are evaluated slice by slice
(each label on each slice is one 2D object), as a 2D model segments them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._cli_common import EXIT_OK, _Input, _plural

__all__ = ["add_evaluate_parser", "run_evaluate"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def add_evaluate_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``evaluate`` subcommand (``common``: the model and normalisation options)."""
    v = sub.add_parser(
        "evaluate",
        parents=[common],
        help="measure how many clicks a model needs on your annotated image (mIoU, NoC)",
        description="Simulate clicks on every reference object (each next click at the centre "
        "of the largest error: positive where the object is missed, negative where background "
        "is included), print the mIoU after each click and a last line "
        "'mIoU@1=X mIoU@N=Y NoC@85=A NoC@90=B objects=K'. NoC@85/90: mean clicks to reach "
        "IoU 0.85/0.90, counting N+1 for an object that never does. See docs/evaluation.md.",
    )
    v.add_argument("image", type=Path, help="image or volume")
    v.add_argument(
        "reference",
        type=Path,
        metavar="REFERENCE_LABELS",
        help="instance labels of the same shape (0 = background); in a volume every label "
        "on every slice is one object",
    )
    v.add_argument("--clicks", type=_positive_int, default=10, metavar="N", help="default 10")
    v.add_argument(
        "--objects",
        type=_positive_int,
        metavar="K",
        help="evaluate K objects drawn at random (fixed by --seed); default: all",
    )
    v.add_argument(
        "--box-first",
        action="store_true",
        help="start each object with its bounding box (interaction 1) instead of a click",
    )
    v.add_argument(
        "--refinement",
        choices=["auto", "on", "off"],
        default="auto",
        help="pass the previous mask with each follow-up click, as SAM was trained (auto: "
        "the model's default, on for SAM and fine-tuned SAMs)",
    )
    v.add_argument(
        "--min-area", type=int, default=20, metavar="PX", help="skip smaller objects (default 20)"
    )
    v.add_argument("--seed", type=int, default=0, help="for --objects (default 0)")
    v.add_argument("--json", type=Path, metavar="FILE", help="also write every number as JSON")


def _reference(path: Path, inp: _Input) -> np.ndarray:
    """The reference labels as (planes, H, W) integers matching the image's planes."""
    from .core.errors import ImageError
    from .core.volume_io import read_volume

    volume = read_volume(path)
    ref = volume.data
    if volume.has_channels:
        raise ImageError(
            f"{path} has {ref.shape[-1]} channels (or colours): reference labels must be one "
            "integer label per pixel"
        )
    if ref.dtype.kind == "f" and np.array_equal(ref, np.round(ref)):
        ref = ref.astype(np.int64)
    if ref.dtype.kind not in "iub":
        raise ImageError(f"{path} holds {ref.dtype} values, not integer labels")
    planes = ref.reshape(-1, *ref.shape[-2:]) if ref.ndim >= 2 else ref
    if planes.shape != inp.planes.shape[:3]:
        shown = " x ".join(map(str, ref.shape))
        raise ImageError(
            f"reference labels {path} are {shown}, but the image {inp.path} is {inp.describe()}"
        )
    return planes.astype(np.int64, copy=False)


def _check_json_path(path: Path | None) -> None:
    from .core.errors import NapariSamError

    if path is None:
        return
    if path.is_dir():
        raise NapariSamError(f"cannot write JSON to {path}: it is a folder")
    if not path.parent.is_dir():
        raise NapariSamError(f"cannot write JSON to {path}: folder {path.parent} does not exist")


def _simulate(args, engine, inp: _Input, ref: np.ndarray, objects, refine: bool):
    """Simulate every object, embedding each plane once; progress on stderr."""
    from .core.clicks import ClickResults, simulate_object

    runs = []
    embedded: tuple[int, Any] | None = None
    for done, (z, label) in enumerate(objects, start=1):
        if embedded is None or embedded[0] != z:
            embedded = (z, engine.embed(inp.rgb_plane(z)))
        runs.append(
            simulate_object(
                engine,
                embedded[1],
                ref[z] == label,
                clicks=args.clicks,
                box_first=args.box_first,
                refine=refine,
            )
        )
        print(f"\robject {done}/{len(objects)}", end="", file=sys.stderr)
    print(file=sys.stderr)
    return ClickResults.from_runs(runs, objects, args.clicks)


def run_evaluate(
    args: argparse.Namespace,
    read: Callable[[argparse.Namespace, Path], _Input],
    make_engine: Callable[[argparse.Namespace], Any],
) -> int:
    """Run ``evaluate``: check everything, load the model, simulate, report.

    ``read`` and ``make_engine`` are the CLI's own image reader and model loader (so that
    the model and normalisation options mean what they mean for every other command).
    """
    from .core.clicks import reference_objects
    from .core.errors import NapariSamError
    from .core.refinement import uses_mask_prompts
    from .core.volume_io import check_readable

    check_readable(args.image)
    check_readable(args.reference)
    _check_json_path(args.json)
    inp = read(args, args.image)
    ref = _reference(args.reference, inp)
    objects = reference_objects(
        ref, min_area=args.min_area, max_objects=args.objects, seed=args.seed
    )
    if not objects:
        raise NapariSamError(
            f"{args.reference} holds no object of at least {args.min_area} pixels "
            "(labels > 0); lower --min-area or check the file"
        )
    engine = make_engine(args)
    refine = uses_mask_prompts(engine.model) if args.refinement == "auto" else (
        args.refinement == "on"
    )  # fmt: skip
    first = "box" if args.box_first else "click"
    print(
        f"evaluating {_plural(len(objects), 'object')} of {args.reference}: "
        f"{_plural(args.clicks, 'interaction')} each, first a {first}, refinement "
        f"{'on' if refine else 'off'}, model {engine.model_id}",
        file=sys.stderr,
    )
    results = _simulate(args, engine, inp, ref, objects, refine)
    for line in results.table():
        print(line)
    print(results.summary_line())
    if args.json is not None:
        report = {
            "image": str(args.image),
            "reference": str(args.reference),
            "model": engine.model_id,
            "clicks": args.clicks,
            "box_first": args.box_first,
            "refinement": refine,
            "min_area": args.min_area,
            "seed": args.seed,
            **results.to_dict(),
        }
        args.json.write_text(json.dumps(report, indent=1))
    return EXIT_OK
