"""Batch throughput: images per minute, serially and on a local Dask cluster of 1 and 2 workers.

Run from a checkout with napari-sam installed, on an otherwise quiet machine::

    python benchmarks/bench_batch.py                          # 16 images, tiny model, auto
    python benchmarks/bench_batch.py --model vit_b --random-weights --images 8
    python benchmarks/bench_batch.py --command segment        # one box per object (up to 10)
    python benchmarks/bench_batch.py --images 2 --size 128 --points-per-side 4   # smoke run

Each mode is one ``napari-sam auto|segment IMAGES -o OUTDIR`` in a fresh process (``serial``;
``--workers 1``; ``--workers 2``), on the same synthetic ``SIZE x SIZE`` images of cells
(:func:`napari_sam.core.synthetic.make_cells`), with ``--no-embedding-cache`` and ``--force``
so that every image is embedded and segmented. The wall time includes starting Python, the
cluster and loading the model in every worker: it is what a user waits for. ``image s`` sums
the per-image seconds of the summary (without the model loads), so ``image s / wall`` shows
how busy the workers were. Serial runs torch on all cores; each of N workers gets
``cores // N`` threads (``NAPARI_SAM_THREADS`` overrides both). Random weights (``vit_b
--random-weights``: no download) cost as much as trained ones; the masks, and so the
automatic segmentation's post-processing, differ.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_images(folder: Path, n: int, size: int) -> dict[str, list[list[int]]]:
    """``n`` synthetic images as TIFFs; returns up to 10 boxes per image (its objects)."""
    import tifffile

    from napari_sam.core.synthetic import make_cells

    boxes: dict[str, list[list[int]]] = {}
    for i in range(n):
        s = make_cells((size, size), seed=i, colour=False, radius_range=(8, 30))
        name = f"cells{i:03d}.tif"
        tifffile.imwrite(folder / name, (s.image * 255).clip(0, 255).astype(np.uint8))
        boxes[name] = []
        for label in range(1, min(int(s.labels.max()), 10) + 1):
            rows, cols = np.nonzero(s.labels == label)
            if rows.size:
                boxes[name].append([rows.min(), cols.min(), rows.max(), cols.max()])
    return boxes


def write_prompts(path: Path, boxes: dict[str, list[list[int]]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "kind", "row0", "col0", "row1", "col1"])
        for name, items in boxes.items():
            w.writerows([name, "box", *map(int, b)] for b in items)


def run_mode(args: argparse.Namespace, folder: Path, out: Path, extra: list[str]) -> dict:
    model = f"random:{args.model}" if args.random_weights else args.model
    cmd = [
        sys.executable, "-m", "napari_sam.cli", args.command, str(folder), "-o", str(out),
        "--model", model, "--device", args.device, "--no-embedding-cache", "--force",
    ]  # fmt: skip
    if args.command == "auto":
        cmd += ["--points-per-side", str(args.points_per_side)]
    else:
        cmd += ["--prompts", str(folder.parent / "prompts.csv")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd + extra, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd + extra)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    with open(out / "napari-sam-summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        "wall": wall,
        "image_s": sum(float(r["seconds"]) for r in rows),
        "objects": sum(int(r["objects"]) for r in rows),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--size", type=int, default=1024, help="images are SIZE x SIZE px")
    p.add_argument("--model", default="tiny")
    p.add_argument("--random-weights", action="store_true", help="e.g. vit_b without download")
    p.add_argument("--device", default="cpu")
    p.add_argument("--command", choices=["auto", "segment"], default="auto")
    p.add_argument("--points-per-side", type=int, default=32, help="auto only (SAM's default)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="cluster sizes")
    args = p.parse_args()

    import torch

    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}; {args.images} images of {args.size} x {args.size}, model "
        f"{args.model}{' (random weights)' if args.random_weights else ''}, {args.command}"
        + (
            f" {args.points_per_side}x{args.points_per_side} points"
            if args.command == "auto"
            else ""
        )
    )
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        os.environ["NAPARI_SAM_CACHE"] = str(Path(tmp) / "cache")
        folder = Path(tmp) / "images"
        folder.mkdir()
        write_prompts(Path(tmp) / "prompts.csv", make_images(folder, args.images, args.size))
        modes = [("serial", [])] + [
            (f"{n} worker(s)", ["--workers", str(n)]) for n in args.workers
        ]
        print(f"{'mode':<12} {'wall s':>8} {'images/min':>11} {'image s':>8} {'objects':>8}")
        for i, (name, extra) in enumerate(modes):
            r = run_mode(args, folder, Path(tmp) / f"out{i}", extra)
            rate = 60 * args.images / r["wall"]
            print(
                f"{name:<12} {r['wall']:8.1f} {rate:11.2f} {r['image_s']:8.1f} {r['objects']:8d}",
                flush=True,
            )


if __name__ == "__main__":
    main()
