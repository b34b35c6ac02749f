"""Official segment_anything vs napari-sam's fast path, in one process, alternating runs.

Run from a checkout with napari-sam installed::

    python benchmarks/bench_sam.py --quick        # a few minutes on 2 cores
    python benchmarks/bench_sam.py                # more repeats, 32x32 automatic grid

Every measurement alternates the official code and ours on the same network (the modules are
switched in place between the official classes and napari-sam's faster subclasses, same
weights), so that other load on the machine hits both alike; the table gives medians and the
ratio ours / official (below 1 is faster). ViT-B has random weights (no download): speed does
not depend on the weights, but the masks and so the post-processing work do, which is why the
automatic segmentation is also run with the bundled tiny model when it is present.

Rows
----
embedding
    Official: ``SamPredictor.set_image``. Ours: ``compute_embedding`` at fp32 and at bf16.
click
    Official: ``SamPredictor.predict`` with one point (the masks it returns, all three
    candidates, at the image's resolution). Ours: ``SamEngine.predict`` plus ``mask()`` of the
    best candidate (the other candidates are only upsampled when asked for). Same cached
    embedding for both.
automatic
    Official: ``SamAutomaticMaskGenerator`` (through napari-sam's labels), embedding cached.
    Ours: the fast path of ``segment_automatically``. The matched-mask rate (IoU >= 0.95) is
    printed with it.
peak RSS
    One ViT-B embedding at 1024 x 1024 in a fresh subprocess each, official and ours alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL_IMAGE = ROOT / "tests" / "data" / "real" / "08275a5b1c_image.png"


#: (official modules, fast modules), same weights.
Pair = tuple[Any, Any]
#: Automatic segmentation keeping every candidate, duplicates included (a stress test of the
#: post-processing, and many masks to compare).
LENIENT = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model, cores, torch version and threads."""
    import torch

    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
        flags = next((ln for ln in out.splitlines() if ln.startswith("Flags:")), "")
        extras = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags.split()]
    except OSError:  # pragma: no cover - no lscpu
        extras = []
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "cpu_features": extras,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_avg_start": os.getloadavg(),
    }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def alternate(
    variants: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Run each variant in turn, ``repeats`` rounds (after ``warmup`` untimed rounds)."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(warmup + repeats):
        for name, fn in variants.items():
            dt, _ = timed(fn)
            if r >= warmup:
                times[name].append(dt)
    return times


def real_rgb() -> np.ndarray:
    import imageio.v3 as iio

    from napari_sam.core.normalize import prepare_image

    return prepare_image(iio.imread(REAL_IMAGE))


def synthetic_rgb(size: int, seed: int = 0) -> np.ndarray:
    from napari_sam.core.normalize import prepare_image
    from napari_sam.core.synthetic import make_cells

    scale = max(1, size // 512)
    img = make_cells((size, size), seed=seed, radius_range=(8.0 * scale, 40.0 * scale))
    return prepare_image(img.image)


class Rows:
    """Collects table rows: (task, variant, median seconds, official median)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, task: str, times: dict[str, list[float]], note: str = "") -> None:
        base = statistics.median(times["official"])
        for name, ts in times.items():
            med = statistics.median(ts)
            self.rows.append(
                {
                    "task": task,
                    "variant": name,
                    "median_s": med,
                    "n": len(ts),
                    "ratio": med / base,
                    "note": note if name != "official" else "",
                }
            )
            print(f"  {task:32s} {name:14s} {fmt_s(med):>10s}  x{med / base:.3f}", flush=True)

    def markdown(self) -> str:
        lines = [
            "| task | variant | median | runs | ours / official | note |",
            "|---|---|---:|---:|---:|---|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r['task']} | {r['variant']} | {fmt_s(r['median_s'])} | {r['n']} | "
                f"{r['ratio']:.3f} | {r['note']} |"
            )
        return "\n".join(lines)


def fmt_s(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


# --------------------------------------------------------------------------------------------
# benchmarks
# --------------------------------------------------------------------------------------------


def bench_embedding(pair: Pair, rows: Rows, rgb: np.ndarray, label: str, repeats: int) -> None:
    import torch
    from segment_anything import SamPredictor

    from napari_sam.core.acceleration import configure
    from napari_sam.core.embedding import compute_embedding

    official_model, fast_model = pair
    out: dict[str, Any] = {}

    def official() -> None:
        p = SamPredictor(official_model.sam)
        with torch.inference_mode():
            p.set_image(rgb)
        out["official"] = p.features

    def ours(precision: str) -> Callable[[], None]:
        def run() -> None:
            configure(fast_model, precision=precision)
            out[precision] = compute_embedding(fast_model, rgb).features

        return run

    times = alternate(
        {"official": official, "ours fp32": ours("fp32"), "ours bf16": ours("bf16")},
        repeats,
        warmup=0,
    )
    configure(fast_model, precision="fp32")
    ref = out["official"]
    notes = {}
    for p in ("fp32", "bf16"):
        d = (out[p] - ref).abs()
        notes[p] = f"max abs err {d.max():.2e}, rel {float(d.norm() / ref.norm()):.1e}"
    rows.add(f"embedding {label}", times)
    for r in rows.rows[-2:]:
        r["note"] = notes[r["variant"].split()[-1]]


def bench_click(pair: Pair, rows: Rows, size: int, repeats: int) -> None:
    import torch
    from segment_anything import SamPredictor

    from napari_sam.core.embedding import compute_embedding
    from napari_sam.core.engine import SamEngine

    official_model, fast_model = pair
    rgb = synthetic_rgb(size)
    emb = compute_embedding(fast_model, rgb)
    engine = SamEngine(fast_model)
    predictor = SamPredictor(official_model.sam)
    predictor.features = emb.features
    predictor.original_size = emb.original_size
    predictor.input_size = emb.input_size
    predictor.is_image_set = True
    point = np.array([[size * 0.4, size * 0.45]])  # (x, y) for SAM, (row, col) for us
    # napari-sam puts pixel centres at integers, SAM at +0.5: the same prompt for both.
    sam_point = point + 0.5
    masks: dict[str, np.ndarray] = {}
    logits: dict[str, Any] = {}

    def official() -> None:
        with torch.inference_mode():
            m, s, low = predictor.predict(sam_point, np.array([1]), multimask_output=True)
        masks["official"] = m[int(np.argmax(s))]
        logits["official"] = low

    def ours() -> None:
        pred = engine.predict(emb, points=point[:, ::-1])
        masks["ours"] = pred.mask()
        logits["ours"] = pred.low_res_logits[0].numpy()

    times = alternate({"official": official, "ours": ours}, repeats, warmup=2)
    diff = int((masks["official"] != masks["ours"]).sum())
    frac = float(masks["ours"].mean())
    err = float(np.abs(logits["official"] - logits["ours"]).max())
    rows.add(
        f"click {size}x{size}",
        times,
        note=f"mask covers {frac:.0%} of the image, {diff} pixels differ "
        f"(low-res logits differ by <= {err:.1e})",
    )


def bench_auto(
    pair: Pair, rows: Rows, rgb: np.ndarray, label: str, pps: int, repeats: int, **kw: Any
) -> None:
    from napari_sam.core.automatic import AutoParams, _make_generator, segment_automatically
    from napari_sam.core.engine import SamEngine

    params = AutoParams(points_per_side=pps, **kw)
    engines = {fast: SamEngine(model) for fast, model in zip((False, True), pair, strict=True)}
    emb = engines[True].embed(rgb)  # cached in both: only the prompts -> masks work is timed
    engines[False].cache.put(emb)
    results: dict[bool, Any] = {}

    def run(fast: bool) -> Callable[[], None]:
        def go() -> None:
            results[fast] = segment_automatically(engines[fast], rgb, params, fast=fast)

        return go

    times = alternate({"official": run(False), "ours": run(True)}, repeats, warmup=0)
    # The masks themselves (before they become labels), from one more run of each.
    records = {
        fast: _make_generator(engines[fast], params, None, None, fast=fast).generate(rgb)
        for fast in (False, True)
    }
    official = [r["segmentation"] for r in records[False]]
    ours = [r["segmentation"].full(rgb.shape[:2]) for r in records[True]]
    matched = matched_masks(official, ours)
    extra = ", ".join(f"{k}={v}" for k, v in kw.items())
    rows.add(
        f"automatic {label} pps={pps}" + (f" ({extra})" if extra else ""),
        times,
        note=f"{len(official)} vs {len(ours)} masks, {matched}/{len(official)} matched "
        f"(IoU >= 0.95); {results[True].n_objects} labels",
    )


def matched_masks(a: list[np.ndarray], b: list[np.ndarray], thresh: float = 0.95) -> int:
    """How many masks of ``a`` have a mask in ``b`` with IoU >= thresh.

    The same position in ``b`` is tried first (both generators list masks in the same order
    when they agree), then every mask whose area allows it.
    """
    areas_b = [int(m.sum()) for m in b]

    def close(m: np.ndarray, area: int, j: int) -> bool:
        if min(area, areas_b[j]) < thresh * max(area, areas_b[j]):
            return False  # IoU <= smaller area / larger area
        inter = int(np.count_nonzero(m & b[j]))
        return inter >= thresh * (area + areas_b[j] - inter)

    found = 0
    for i, m in enumerate(a):
        area = int(m.sum())
        if (i < len(b) and close(m, area, i)) or any(close(m, area, j) for j in range(len(b))):
            found += 1
    return found


def tiny_equivalence(rgb: np.ndarray) -> list[str]:
    """Errors of the fast path against the official modules on the trained tiny model."""
    from napari_sam.core.acceleration import configure
    from napari_sam.core.checkpoints import load_model
    from napari_sam.core.embedding import compute_embedding
    from napari_sam.core.engine import SamEngine
    from napari_sam.core.metrics import iou

    model = load_model("tiny", device="cpu", fast=False, precision="fp32")
    engine = SamEngine(model)
    rng = np.random.default_rng(0)
    clicks = rng.integers(0, min(rgb.shape[:2]), (40, 2))
    results = {}
    for name, fast, precision in (
        ("official", False, "fp32"),
        ("ours fp32", True, "fp32"),
        ("ours bf16", True, "bf16"),
    ):
        configure(model, fast=fast, precision=precision)
        emb = compute_embedding(model, rgb)
        masks = [engine.predict(emb, points=[c]).mask() for c in clicks]
        results[name] = (emb.features, masks)
    ref_f, ref_m = results["official"]
    lines = [
        "| tiny model vs official | max abs err | rel err (L2) | click masks: min IoU | "
        "identical masks |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("ours fp32", "ours bf16"):
        f, m = results[name]
        d = (f - ref_f).abs()
        ious = [
            1.0 if a.sum() == b.sum() == 0 else iou(a, b) for a, b in zip(ref_m, m, strict=True)
        ]
        same = sum(np.array_equal(a, b) for a, b in zip(ref_m, m, strict=True))
        lines.append(
            f"| {name} | {float(d.max()):.2e} | {float(d.norm() / ref_f.norm()):.1e} | "
            f"{min(ious):.4f} | {same}/{len(m)} |"
        )
        print("  tiny", lines[-1], flush=True)
    return lines


RSS_CHILD = """
import sys, numpy as np, torch

def peak():  # bytes; VmHWM, reset below (ru_maxrss would include the forking parent's)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

from napari_sam.core.checkpoints import random_model
fast, precision = sys.argv[1] == "ours", sys.argv[2]
m = random_model("vit_b", fast=fast, precision=precision)
rgb = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
reset_peak()
before = peak()
if fast:
    from napari_sam.core.embedding import compute_embedding
    compute_embedding(m, rgb)
else:
    from segment_anything import SamPredictor
    with torch.inference_mode():
        SamPredictor(m.sam).set_image(rgb)
print(before, peak())
"""


def bench_rss(repeats: int) -> list[str]:
    variants = [("official", "fp32"), ("ours", "fp32"), ("ours", "bf16")]
    peaks: dict[tuple[str, str], list[tuple[int, int]]] = {v: [] for v in variants}
    for _ in range(repeats):
        for v in variants:
            out = subprocess.run(
                [sys.executable, "-c", RSS_CHILD, *v],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            peaks[v].append((int(out[0]), int(out[1])))
    lines = [
        "| peak RSS, one ViT-B embedding 1024x1024 | model loaded | peak | peak - loaded |",
        "|---|---:|---:|---:|",
    ]
    for v, vals in peaks.items():
        before = statistics.median(b for b, _ in vals) / 2**20
        after = statistics.median(a for _, a in vals) / 2**20
        lines.append(
            f"| {v[0]} {v[1]} | {before:.0f} MiB | {after:.0f} MiB | {after - before:.0f} MiB |"
        )
        print(f"  RSS {v[0]} {v[1]}: loaded {before:.0f} MiB, peak {after:.0f} MiB", flush=True)
    return lines


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, 16x16 grid")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=None, help="runs per variant (all rows)")
    ap.add_argument(
        "--only", nargs="*", default=None, help="subset of: embedding click auto rss tiny"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)

    import torch

    from napari_sam.core.checkpoints import random_model

    if args.threads:
        torch.set_num_threads(args.threads)
    only = set(args.only or ["embedding", "click", "auto", "rss", "tiny"])
    emb_repeats, click_repeats, auto_repeats, rss_repeats = (
        (3, 15, 2, 2) if args.quick else (5, 30, 3, 3)
    )
    if args.repeats:
        emb_repeats = click_repeats = auto_repeats = rss_repeats = args.repeats
    pps = 16 if args.quick else 32
    info = machine()
    print(json.dumps(info), flush=True)
    rows = Rows()
    # Two copies of the same network (same seed: same weights), one with the official
    # modules and one with the fast ones, so that neither loses its caches between runs.
    pair = (
        random_model("vit_b", fast=False, precision="fp32"),
        random_model("vit_b", fast=True, precision="fp32"),
    )
    rgb = real_rgb()

    if "embedding" in only:
        bench_embedding(pair, rows, synthetic_rgb(1024), "ViT-B 1024x1024 synthetic", emb_repeats)
        bench_embedding(pair, rows, rgb, f"ViT-B real {rgb.shape[1]}x{rgb.shape[0]}", emb_repeats)
    if "click" in only:
        for size in (512, 1024, 4096):
            bench_click(pair, rows, size, click_repeats)
    if "auto" in only:
        bench_auto(pair, rows, rgb, "ViT-B real", pps, auto_repeats)
        # Random weights keep no mask at SAM's thresholds: also with every candidate kept.
        bench_auto(pair, rows, rgb, "ViT-B real", 16, auto_repeats, **LENIENT)
        try:
            from napari_sam.core.checkpoints import load_model

            tiny_pair = tuple(
                load_model("tiny", device="cpu", fast=fast, precision="fp32")
                for fast in (False, True)
            )
        except Exception as e:  # the tiny model is optional here
            print(f"  (tiny model not available: {e})")
        else:
            bench_auto(tiny_pair, rows, rgb, "tiny real", pps, auto_repeats)
    rss_lines = bench_rss(rss_repeats) if "rss" in only else []
    tiny_lines: list[str] = []
    if "tiny" in only:
        try:
            tiny_lines = tiny_equivalence(rgb)
        except Exception as e:  # the tiny model is optional here
            print(f"  (tiny model not available: {e})")

    info["load_avg_end"] = os.getloadavg()
    print()
    print(f"machine: {info}")
    print()
    print(rows.markdown())
    for lines in (rss_lines, tiny_lines):
        if lines:
            print()
            print("\n".join(lines))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": info, "rows": rows.rows, "rss": rss_lines, "tiny": tiny_lines},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
