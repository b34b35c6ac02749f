"""Large images: time and peak memory of tiled automatic segmentation; ViT-B time per tile.

Run from a checkout with napari-sam installed, on an otherwise idle machine::

    python benchmarks/bench_tiling.py auto                       # tiny model, 2048..8192 px
    python benchmarks/bench_tiling.py auto --sizes 8192 --threads 2
    python benchmarks/bench_tiling.py lazy --size 20000          # one click, lazy vs eager
    python benchmarks/bench_tiling.py vitb --tiles 6             # ViT-B, random weights
    python benchmarks/bench_tiling.py vitb --device cuda

``auto``
    A synthetic montage (:func:`napari_sam.core.synthetic.make_montage`: 256 px pieces of
    small bright objects) of each size is segmented with the bundled tiny model by
    :func:`napari_sam.core.tiled_automatic.segment_tiled` in the default tiling (cores of at
    most 768 px, halo 128: 1024 px blocks), in a fresh process per size. Printed: tiles,
    seconds, seconds per tile (constant if the time grows linearly with the tiles), objects,
    and the process's peak RSS during the segmentation and over the whole run (image
    generation included). Thresholds as the tests use them for this under-trained model
    (``pred_iou_thresh`` 0.5, ``stability_score_thresh`` 0.7), ``--points-per-side`` squared
    prompts per tile (32 x 32 by default; 8 x 8 is one batch of the decoder, as many as
    ``points_per_batch``: the decoder's memory per batch is the same, the time much smaller).
``lazy``
    A click on a large plane on disk: a ``--size`` x ``--size`` uint16 plane in a zarr store
    (chunks of 1024 px, written to a temporary folder first), one box in one tile, the tiny
    model, contrast limits, in a fresh process per way of reading it: **eager** (the plane
    read into memory and converted whole, as the widget did before) and **lazy** (a
    :class:`~napari_sam.core.prepared_plane.PreparedPlane`: only the tile's block is read).
    Printed: seconds from opening to the mask, peak RSS, pixels read.
``vitb``
    ViT-B with random weights (no download; speed does not depend on the weights) embeds
    ``--tiles`` tiles of 1024 x 1024 of a 3072 x 3072 image through ``TiledEmbedding.ensure``;
    printed: seconds per tile (median), at fp32 and (CPU) the precision ``auto`` picks, or
    (CUDA) fp16.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

AUTO_CHILD = r"""
import json, sys, time
import numpy as np

def peak():  # bytes: VmHWM of this process (reset below)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

import torch
torch.set_num_threads(int(sys.argv[2]))
from napari_sam.core.automatic import AutoParams
from napari_sam.core.engine import SamEngine
from napari_sam.core.normalize import prepare_image
from napari_sam.core.synthetic import make_montage
from napari_sam.core.tiled_automatic import segment_tiled
from napari_sam.core.tiled_embedding import open_tiled
from napari_sam.core.tiling import TileGrid

size = int(sys.argv[1])
s = make_montage((size // 256, size // 256), (256, 256), seed=0)
rgb = prepare_image(s.image)
del s
engine = SamEngine.from_name("tiny", device="cpu")
grid = TileGrid(rgb.shape[:2])
params = AutoParams(points_per_side=int(sys.argv[3]), pred_iou_thresh=0.5,
                    stability_score_thresh=0.7, min_size=20)
before = peak()  # image generation and model loading
reset_peak()
t0 = time.perf_counter()
result = segment_tiled(engine, open_tiled(engine, rgb, grid, max_in_memory=4), params)
seconds = time.perf_counter() - t0
during = peak()
print(json.dumps({"size": size, "tiles": len(grid), "seconds": seconds,
                  "objects": result.n_objects, "peak_during": during,
                  "peak_run": max(before, during)}))
"""


LAZY_CHILD = r"""
import json, sys, time
import numpy as np

def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

import torch
torch.set_num_threads(int(sys.argv[3]))
import zarr
from napari_sam.core.engine import SamEngine
from napari_sam.core.normalize import Normalization
from napari_sam.core.prepared_plane import PreparedPlane
from napari_sam.core.tiled_embedding import open_tiled
from napari_sam.core.tiled_prompts import predict_tiled
from napari_sam.core.tiling import TileGrid

engine = SamEngine.from_name("tiny", device="cpu")
z = zarr.open_array(sys.argv[1], mode="r")
read = [0]

class Counted:  # counts the pixels read from the store
    shape, dtype = z.shape, z.dtype
    def __getitem__(self, key):
        out = z[key]
        read[0] += out.size
        return out

norm = Normalization(contrast_limits=(0, 4095))
before = peak()
t0 = time.perf_counter()
if sys.argv[2] == "eager":
    plane = np.asarray(Counted()[:, :])
    rgb = norm.apply(plane)
    del plane
else:
    rgb = PreparedPlane(Counted(), norm)
grid = TileGrid(rgb.shape[:2])
h, w = z.shape
box = [h // 2, w // 2, h // 2 + 40, w // 2 + 50]
pred = predict_tiled(engine, open_tiled(engine, rgb, grid), boxes=[box])
seconds = time.perf_counter() - t0
print(json.dumps({"way": sys.argv[2], "seconds": seconds, "tiles": len(grid),
                  "embedded": len(pred.tiles_of(0)), "peak": peak(), "before": before,
                  "read": read[0], "area": int(pred.mask(0).sum())}))
"""


def _child(code: str, *args: object) -> dict:
    """Run ``code`` in a fresh Python with ``args``; its last line of output is JSON."""
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _write_plane(path: str, size: int) -> None:
    """A size x size uint16 plane of noise and bright discs, chunk by chunk."""
    import numpy as np
    import zarr

    z = zarr.create_array(path, shape=(size, size), chunks=(1024, 1024), dtype="uint16")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:1024, :1024]
    for r in range(0, size, 1024):
        for c in range(0, size, 1024):
            h, w = min(1024, size - r), min(1024, size - c)
            block = rng.integers(0, 400, (h, w), dtype=np.uint16)
            for cy, cx in rng.integers(0, 1024, (20, 2)):
                disc = (yy[:h, :w] - cy) ** 2 + (xx[:h, :w] - cx) ** 2 < 12**2
                block[disc] += 3000
            z[r : r + h, c : c + w] = block


def bench_lazy(size: int, threads: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "plane.zarr")
        t0 = time.perf_counter()
        _write_plane(path, size)
        print(f"wrote a {size} x {size} uint16 zarr plane in {time.perf_counter() - t0:.0f} s")
        print("| plane | read | time to the mask | tiles embedded | peak RSS | pixels read |")
        print("|---|---|---:|---:|---:|---:|")
        for way in ("lazy", "eager"):
            r = _child(LAZY_CHILD, path, way, threads)
            print(
                f"| {size} x {size} uint16, {r['tiles']} tiles | {way} | {r['seconds']:.1f} s "
                f"| {r['embedded']} | {r['peak'] / 2**30:.2f} GiB "
                f"| {r['read'] / size**2:.2%} of the plane |",
                flush=True,
            )


def bench_auto(sizes: list[int], threads: int, points_per_side: int) -> None:
    print("| image | tiles | time | per tile | objects | peak RSS (segmenting) | peak RSS (run) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        r = _child(AUTO_CHILD, size, threads, points_per_side)
        print(
            f"| {size} x {size} | {r['tiles']} | {r['seconds']:.1f} s | "
            f"{r['seconds'] / r['tiles']:.2f} s | {r['objects']} | "
            f"{r['peak_during'] / 2**30:.2f} GiB | {r['peak_run'] / 2**30:.2f} GiB |",
            flush=True,
        )


def bench_vitb(n_tiles: int, device: str, threads: int) -> None:
    import numpy as np
    import torch

    from napari_sam.core.checkpoints import random_model
    from napari_sam.core.engine import SamEngine
    from napari_sam.core.tiled_embedding import open_tiled
    from napari_sam.core.tiling import TileGrid

    torch.set_num_threads(threads)
    rgb = np.random.default_rng(0).integers(0, 255, (3072, 3072, 3), dtype=np.uint8)
    grid = TileGrid(rgb.shape[:2])
    from napari_sam.core.acceleration import resolve_precision

    # CUDA: fp16 too; CPU: the plan "auto" picks on this machine when it is not fp32 (bf16 on
    # a CPU without bfloat16 units is many times slower: not worth minutes of benchmark).
    auto = resolve_precision("auto", device)
    precisions = ("fp32", "fp16") if device.startswith("cuda") else ("fp32", auto)
    precisions = tuple(dict.fromkeys(precisions))
    print("| ViT-B per tile (1024 x 1024 block) | device | median | runs |")
    print("|---|---|---:|---:|")
    for precision in precisions:
        engine = SamEngine(random_model("vit_b", device=device, precision=precision))
        tiled = open_tiled(engine, rgb, grid)
        times = []
        for i in range(n_tiles + 1):  # the first is a warm-up
            t0 = time.perf_counter()
            tiled.ensure(engine, [i])
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        print(
            f"| {precision} | {device} | {statistics.median(times[1:]):.2f} s | {n_tiles} |",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["auto", "lazy", "vitb"])
    ap.add_argument("--size", type=int, default=20000, help="lazy: plane size")
    ap.add_argument("--sizes", nargs="*", type=int, default=[2048, 4096, 8192])
    ap.add_argument("--tiles", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--points-per-side", type=int, default=32, help="auto: prompts per tile side (32: SAM's)"
    )
    args = ap.parse_args(argv)
    print(f"load average at start: {os.getloadavg()}; threads {args.threads}", flush=True)
    if args.what == "auto":
        bench_auto(args.sizes, args.threads, args.points_per_side)
    elif args.what == "lazy":
        bench_lazy(args.size, args.threads)
    else:
        bench_vitb(args.tiles, args.device, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
