"""The wait after moving one slice in the widget, with and without prefetching neighbours.

Needs a display (``xvfb-run -a python benchmarks/bench_slice_wait.py``)::

    python benchmarks/bench_slice_wait.py                     # vit_t, dwell 0 / 0.5 / 2 s
    python benchmarks/bench_slice_wait.py --model vit_b --moves 3
    python benchmarks/bench_slice_wait.py --smoke             # tiny model: checks the script

A stack of 1024 x 1024 slices (synthetic nuclei images, different per slice) is opened in a
napari viewer with the napari-sam widget, using a model with random weights (speed does not
depend on the weights). For each dwell time the user "looks at" a slice for that long after its
embedding arrived, then moves one slice on; the wait is the time from the move to the moment
the new slice's embedding is there (what a click would wait for). Prefetching embeds the
neighbouring slices in the background while the user looks; with prefetching off every move
waits for a full embedding.

Rows: model, prefetch on/off, dwell, median wait over ``--moves`` moves (each to a slice not
seen before).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_sam import fmt_s, machine, synthetic_rgb


def _spin(app, until, timeout: float = 300.0) -> float:
    """Process Qt events until ``until()``; seconds it took."""
    t0 = time.perf_counter()
    while not until():
        app.processEvents()
        time.sleep(0.002)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("the widget did not get there in time")
    return time.perf_counter() - t0


def _ready(widget, z: int) -> bool:
    """Whether the embedding of slice ``z`` is there (not the previous slice's, still shown
    until the widget's short debounce after a move has passed)."""
    embedder = widget.plane_embedder
    embedded = embedder.embedded
    return embedded is not None and embedded.key == embedder.key and embedded.plane.index[0] == z


def run(model_name: str, prefetch: bool, dwells: list[float], moves: int, size: int) -> list:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_sam.core.checkpoints import random_model
    from napari_sam.core.engine import SamEngine
    from napari_sam.widget import SamWidget
    from napari_sam.widget.plane_embedding import PlaneEmbedder

    if model_name == "tiny":
        from napari_sam.core.checkpoints import load_model

        model = load_model("tiny", device="cpu", precision="fp32")
    else:
        model = random_model(model_name, seed=0)
    original = PlaneEmbedder.prefetch
    if not prefetch:
        PlaneEmbedder.prefetch = lambda self: None  # the widget as it was before prefetching
    n = 2 + len(dwells) * moves
    stack = np.stack([synthetic_rgb(size, seed=z)[..., 1] for z in range(n)])
    viewer = napari.Viewer(show=False)
    app = QApplication.instance()
    widget = SamWidget(viewer, engine=SamEngine(model))
    rows = []
    try:
        viewer.add_image(stack, name="stack")
        viewer.dims.current_step = (0, 0, 0)
        _spin(app, lambda: _ready(widget, 0))
        z = 0
        for dwell in dwells:
            waits = []
            for _ in range(moves):
                t_end = time.perf_counter() + dwell
                _spin(app, lambda t_end=t_end: time.perf_counter() >= t_end)
                z += 1
                t0 = time.perf_counter()
                viewer.dims.current_step = (z, 0, 0)
                _spin(app, lambda z=z: _ready(widget, z))
                waits.append(time.perf_counter() - t0)
            rows.append((model_name, prefetch, dwell, statistics.median(waits), len(waits)))
            print(
                f"  {model_name:6s} prefetch {'on ' if prefetch else 'off'} dwell {dwell:4.1f} s: "
                f"wait {fmt_s(rows[-1][3])} (median of {len(waits)})",
                flush=True,
            )
    finally:
        widget.cancel()
        _spin(app, lambda: not widget.runner.busy, 60)
        widget.close()
        viewer.close()
        PlaneEmbedder.prefetch = original
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vit_t", help="vit_t, vit_b, ... (random weights) or tiny")
    ap.add_argument("--dwell", type=float, nargs="+", default=[0.0, 0.5, 2.0])
    ap.add_argument("--moves", type=int, default=3, help="moves per dwell time")
    ap.add_argument("--size", type=int, default=1024, help="slice height and width")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny model, 256 px, one move")
    args = ap.parse_args(argv)
    if args.smoke:
        args.model, args.size, args.moves, args.dwell = "tiny", 256, 1, [0.0, 0.5]
    if args.threads:
        os.environ["NAPARI_SAM_THREADS"] = str(args.threads)
    print(machine())
    rows = []
    for prefetch in (False, True):
        rows += run(args.model, prefetch, args.dwell, args.moves, args.size)
    print()
    print(f"| model | prefetch | dwell before moving | wait after one slice ({args.size} px) |")
    print("|---|---|---:|---:|")
    for model, prefetch, dwell, wait, _n in rows:
        print(f"| {model} | {'on' if prefetch else 'off'} | {dwell:.1f} s | {fmt_s(wait)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
