"""Interactive-segmentation benchmark of a model (by default the bundled tiny one), refinement
on and off: mIoU after each of N simulated clicks and NoC@85/90 (``napari_sam.core.clicks``).

Runs four settings per set of images: the first interaction a click or a box, and follow-up
clicks with or without the previous mask as a prompt (refinement). The numbers go into
docs/evaluation.md. Sets: held-out synthetic images (the seeds of evaluate_tiny_sam.py) and
the real 2D images of tests/data/real (copies of the development set in /work/shared/data).

Usage::

    OMP_NUM_THREADS=1 python scripts/evaluate_clicks.py [--model tiny] [--synthetic 8]
        [--max-objects 15] [--clicks 10] [--sets synthetic,real] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from napari_sam.core.clicks import ClickResults, evaluate_image
from napari_sam.core.engine import SamEngine
from napari_sam.core.normalize import prepare_image

sys.path.insert(0, str(Path(__file__).parent))
from evaluate_tiny_sam import HELD_OUT, TRAINED_ON, real_image, synthetic_set

SETTINGS = [(box, refine) for box in (False, True) for refine in (False, True)]


def _setting(box: bool, refine: bool) -> str:
    return f"{'box' if box else 'click'} first, refinement {'on' if refine else 'off'}"


def _merge(results: list[ClickResults]) -> ClickResults:
    return ClickResults(
        np.concatenate([r.ious for r in results]),
        [o for r in results for o in r.objects],
        [c for r in results for c in r.clicks],
    )


def _images(name: str, n_synthetic: int):
    if name == "synthetic":
        return list(synthetic_set(n_synthetic))
    if name == "set1":  # phase contrast, a uint16 TIFF (normalised by percentiles)
        real = Path(__file__).parents[1] / "tests" / "data" / "real"
        rgb = prepare_image(tifffile.imread(real / "set1_image_raw.tif"))
        return [(rgb, tifffile.imread(real / "set1_labels.tif").astype(np.int32))]
    return [real_image(name)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--synthetic", type=int, default=8, help="held-out synthetic images")
    ap.add_argument("--max-objects", type=int, default=15, help="per image (random, seed 0)")
    ap.add_argument("--clicks", type=int, default=10)
    ap.add_argument(
        "--sets",
        default="synthetic," + ",".join(HELD_OUT + TRAINED_ON + ["set1"]),
        help="comma-separated: synthetic and/or names of tests/data/real images",
    )
    ap.add_argument("--json", type=Path, help="write every number here")
    args = ap.parse_args()

    engine = SamEngine.from_name(
        args.model, checkpoint=args.checkpoint, device="cpu", precision=args.precision
    )
    report: dict = {"model": engine.model_id, "clicks": args.clicks, "sets": {}}
    ks = sorted({1, 2, 3, 5, args.clicks})
    print(f"| set | setting | objects | {' | '.join(f'mIoU@{k}' for k in ks)} | NoC@85 | NoC@90 |")
    print("|---|---|---|" + "---|" * (len(ks) + 2))
    for name in args.sets.split(","):
        t0 = time.time()
        images = _images(name, args.synthetic)
        rows = {}
        for box, refine in SETTINGS:
            kwargs = {"clicks": args.clicks, "box_first": box, "refine": refine}
            res = _merge(
                [
                    evaluate_image(engine, rgb, lab, max_objects=args.max_objects, **kwargs)
                    for rgb, lab in images
                ]
            )
            m = res.miou()
            rows[_setting(box, refine)] = {
                "objects": res.n_objects,
                "miou": [round(float(v), 4) for v in m],
                "noc85": round(res.noc(0.85), 3),
                "noc90": round(res.noc(0.90), 3),
            }
            print(
                f"| {name} | {_setting(box, refine)} | {res.n_objects} | "
                + " | ".join(f"{m[k - 1]:.3f}" for k in ks)
                + f" | {res.noc(0.85):.2f} | {res.noc(0.90):.2f} |",
                flush=True,
            )
        report["sets"][name] = rows | {"seconds": round(time.time() - t0, 1)}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
