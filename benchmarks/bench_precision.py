"""Precision per operation: ViT-B embedding time per plan, and what each plan does to masks.

Run from a checkout with napari-sam installed, on an otherwise idle machine::

    python benchmarks/bench_precision.py          # the plans this CPU runs in reasonable time
    python benchmarks/bench_precision.py --repeats 1 --plans "fp32;linear=int8"
    python benchmarks/bench_precision.py --all    # also plans the calibration says are slow

Table columns
-------------
plan
    The :class:`~napari_sam.core.precision_plan.PrecisionPlan` (``auto`` = what the calibration
    chose on this machine, named in the note).
ViT-B embedding
    Median seconds of ``compute_embedding`` of a 1024 x 1024 synthetic image, ViT-B with random
    weights (speed does not depend on the weights), fast modules.
x official
    Ratio to the official ``SamPredictor.set_image`` on the same network, measured in the same
    process, alternating with the plans (other load on the machine hits all alike).
rel. error
    ``|emb - emb_fp32| / |emb_fp32|`` of the ViT-B embedding.
tiny: min IoU, best changed
    The bundled tiny model, one point prompt per object on a synthetic and a real image (as
    ``tests/core/test_precision.py``): the least IoU of any candidate mask with float32's, and
    how many prompts chose another best candidate.
calibration
    The calibration's estimate for the plan (sum of its operations' seconds).

Plans the calibration estimates more than ``--slow`` times float32 are skipped unless
``--all`` (bf16 on CPUs without bfloat16 units takes minutes per embedding).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sam import alternate, machine, synthetic_rgb

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "tests" / "data" / "real"
PLANS = [
    "fp32",
    "bf16",
    "linear=bf16",
    "linear=bf16,attention=bf16",
    "attention=bf16",
    "linear=int8",
    "linear=int8,attention=bf16",
    "auto",
]


def estimate(plan: Any, seconds: dict[str, dict[str, float]]) -> float:
    """The calibration's seconds for ``plan`` (linear layers plus attention)."""
    return sum(seconds[op].get(getattr(plan, op), float("nan")) for op in seconds)


def tiny_agreement(plans: list[str]) -> dict[str, tuple[float, int]]:
    """Plan -> (least candidate-mask IoU with fp32, prompts whose best candidate changed)."""
    import imageio.v3 as iio
    import tifffile

    from napari_sam.core.acceleration import configure
    from napari_sam.core.checkpoints import load_model
    from napari_sam.core.engine import SamEngine
    from napari_sam.core.metrics import interior_point, iou
    from napari_sam.core.normalize import prepare_image
    from napari_sam.core.synthetic import make_cells

    cells = make_cells((192, 256), seed=7)
    images = [
        (cells.image, cells.labels),
        (
            iio.imread(REAL / "4d14a3629b_image.png"),
            tifffile.imread(REAL / "4d14a3629b_labels.tif").astype(np.int32),
        ),
    ]
    model = load_model("tiny", device="cpu", fast=True, precision="fp32")

    def predictions() -> list:
        engine = SamEngine(model)
        out = []
        for image, labels in images:
            emb = engine.embed(prepare_image(image))
            for i in [i for i in np.unique(labels) if i][:8]:
                out.append(engine.predict(emb, points=[interior_point(labels == i)]))
        return out

    ref = predictions()
    result = {}
    for name in plans:
        configure(model, precision=name)
        out = predictions()
        ious = [
            iou(a.mask(0, k), b.mask(0, k))
            for a, b in zip(ref, out, strict=True)
            for k in range(a.n_candidates)
            if a.mask(0, k).any() or b.mask(0, k).any()
        ]
        changed = sum(int(a.best[0] != b.best[0]) for a, b in zip(ref, out, strict=True))
        result[name] = (min(ious), changed)
    return result


def main() -> None:
    import torch
    from segment_anything import SamPredictor

    from napari_sam.core.acceleration import configure, resolve_plan
    from napari_sam.core.calibration import calibration
    from napari_sam.core.checkpoints import random_model
    from napari_sam.core.embedding import compute_embedding

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--plans", default=";".join(PLANS), help="';'-separated plans")
    ap.add_argument("--all", action="store_true", help="also plans estimated slow")
    ap.add_argument("--slow", type=float, default=3.0, help="skip plans estimated this x fp32")
    ap.add_argument("--no-tiny", action="store_true", help="skip the tiny model's masks")
    args = ap.parse_args()
    plans = [p.strip() for p in args.plans.split(";") if p.strip()]

    info = machine()
    print(f"machine: {info}", flush=True)
    t0 = time.perf_counter()
    cal = calibration(refresh=True)
    print(f"calibration: {time.perf_counter() - t0:.2f} s, chose {cal.plan.name}")
    print(f"  seconds (estimated ViT-B share): {cal.seconds}", flush=True)
    resolved = {p: resolve_plan(p, "cpu") for p in plans}
    base_est = estimate(resolved.get("fp32", cal.plan), cal.seconds)
    run, skipped = [], {}
    for p, plan in resolved.items():
        est = estimate(plan, cal.seconds)
        if not args.all and est > args.slow * base_est:
            skipped[p] = est
        else:
            run.append(p)

    official = random_model("vit_b", fast=False, precision="fp32")
    fast = random_model("vit_b", fast=True, precision="fp32")
    rgb = synthetic_rgb(1024)
    emb: dict[str, Any] = {}

    def official_run() -> None:
        predictor = SamPredictor(official.sam)
        with torch.inference_mode():
            predictor.set_image(rgb)

    def ours(p: str):
        def go() -> None:
            configure(fast, precision=p)
            emb[p] = compute_embedding(fast, rgb).features

        return go

    variants = {"official": official_run, **{p: ours(p) for p in run}}
    times = alternate(variants, args.repeats, warmup=0)
    if "fp32" not in emb:
        ours("fp32")()
    ref = emb["fp32"]
    tiny = {} if args.no_tiny else tiny_agreement(run)
    base = statistics.median(times["official"])

    print(
        "\n| plan | ViT-B embedding | x official | rel. error | tiny: min IoU, best changed "
        "| calibration estimate |"
    )
    print("|---|---:|---:|---:|---|---:|")
    print(f"| official | {base:.2f} s | 1.00 | | | |")
    for p in run:
        med = statistics.median(times[p])
        rel = float((emb[p] - ref).norm() / ref.norm())
        iou_min, changed = tiny.get(p, (float("nan"), -1))
        name = f"auto ({resolved[p].name})" if p == "auto" else resolved[p].name
        print(
            f"| {name} | {med:.2f} s | {med / base:.2f} | {rel:.1e} | {iou_min:.3f}, {changed} "
            f"| {estimate(resolved[p], cal.seconds):.1f} s |"
        )
    for p, est in skipped.items():
        print(f"| {resolved[p].name} | skipped | | | | {est:.1f} s |")
    print(f"\nthreads {torch.get_num_threads()}, load average {info['load_avg_start']} at start")


if __name__ == "__main__":
    main()
