"""Peak memory of the widget's path on a big stack: open, embed, click, commit, auto segment.

A 10-slice 4096 x 4096 uint16 stack (320 MiB) goes through what a user does in napari, in a
real viewer (hidden) with the widget and the bundled tiny model on one CPU thread:

open
    the ImageJ TIFF read by napari-sam's reader (as File > Open does: uncompressed, 320
    MiB), or the same pixels in a zarr array on disk (chunks of 1 x 1024 x 1024), given to
    napari as the zarr array (``--input zarr``) or as a dask array (``--input dask``); the
    widget takes the new image and embeds its slice 0;
embed
    move to slice 5 and wait for its embedding;
click
    one positive point on a bright disc, and the preview (three candidates);
commit
    Shift+C: the object goes into a new "SAM labels" layer over the stack;
auto
    automatic segmentation of slice 5 (points per side 16) into a new layer.

Each input runs in a fresh process (``ru_maxrss`` cannot be reset). Per step the table gives
the resident set size (RSS) after the step, how much of it are pages of mapped files (the
libraries, and the image when it is memory-mapped: clean pages the kernel can drop), and the
peak of RSS during the step (sampled every 2 ms by a thread), in MiB; the last row is the
process's true peak (``ru_maxrss``).

Run it under a display, on an otherwise idle machine, one thread (never next to another
torch benchmark)::

    OMP_NUM_THREADS=1 xvfb-run -a python benchmarks/bench_memory.py    # 3 inputs, ~4 min
    OMP_NUM_THREADS=1 xvfb-run -a python benchmarks/bench_memory.py --input tiff --zarr-labels

``--zarr-labels`` makes the new label layers zarr arrays (as for stacks beyond
``DENSE_LABELS_BYTES``), to see what they cost against NumPy ones.

The code measured is the ``napari_sam`` that Python imports: put another checkout's ``src``
first on ``PYTHONPATH`` to measure it (the script prints which one it used).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SHAPE = (10, 4096, 4096)
SLICE = 5
CLICK = (2048, 2048)  # the centre of a bright disc on every slice


def make_stack() -> np.ndarray:
    """uint16 (10, 4096, 4096): noisy background with bright discs of radius 20-120 px."""
    rng = np.random.default_rng(0)
    plane = rng.normal(1000, 80, SHAPE[1:]).clip(0).astype(np.uint16)
    yy, xx = np.ogrid[: SHAPE[1], : SHAPE[2]]
    centres = [CLICK] + [tuple(int(v) for v in rng.integers(150, 3950, 2)) for _ in range(60)]
    for (y, x), r in zip(centres, [120, *rng.integers(20, 120, 60)], strict=True):
        box = (slice(max(0, y - r), y + r + 1), slice(max(0, x - r), x + r + 1))
        disc = (yy[box[0]] - y) ** 2 + (xx[:, box[1]] - x) ** 2 <= r * r
        plane[box][disc] = 3000 + int(r) * 10
    stack = np.empty(SHAPE, np.uint16)
    for z in range(SHAPE[0]):
        stack[z] = plane + np.uint16(z)
    return stack


class PeakSampler:
    """RSS now, and its peak since :meth:`reset`, sampled by a background thread."""

    def __init__(self, every: float = 0.002) -> None:
        import psutil

        self._process = psutil.Process()
        self._every = every
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def rss(self) -> int:
        return self._process.memory_info().rss

    @staticmethod
    def file_rss() -> int:
        """Bytes of RSS that are pages of mapped files (the rest is the process's own)."""
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssFile:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._peak = max(self._peak, self.rss())

    def reset(self) -> None:
        self._peak = self.rss()

    def peak(self) -> int:
        return max(self._peak, self.rss())


def wait_idle(app, widget, timeout: float = 600.0) -> None:
    """Run Qt's event loop until the widget has nothing running or scheduled."""
    end = time.monotonic() + timeout
    time.sleep(0.05)
    app.processEvents()
    while widget.busy:
        if time.monotonic() > end:
            raise TimeoutError(f"the widget is still busy: {widget.status.value}")
        app.processEvents()
        time.sleep(0.01)
    for _ in range(5):  # results are delivered by queued signals
        app.processEvents()
        time.sleep(0.01)


def child(tiff: Path, kind: str, zarr_labels: bool) -> dict:
    """Run the steps in this process; return the measurements."""
    import napari

    # segment-anything (torchvision, triton) before napari's OpenGL canvas: see _compat.
    import segment_anything  # noqa: F401
    import torch
    from qtpy.QtWidgets import QApplication

    import napari_sam
    from napari_sam._reader import read_layers
    from napari_sam.core.engine import SamEngine
    from napari_sam.widget import SamWidget

    torch.set_num_threads(1)
    if zarr_labels:  # as for a stack too large for NumPy labels
        from napari_sam.core import lazy_arrays

        lazy_arrays.DENSE_LABELS_BYTES = 0
    sampler = PeakSampler()
    rows: list[dict] = []
    mib = 2**20

    def step(name: str, fn) -> None:
        sampler.reset()
        t0 = time.perf_counter()
        fn()
        rows.append(
            {
                "step": name,
                "rss": sampler.rss() / mib,
                "file": sampler.file_rss() / mib,
                "peak": sampler.peak() / mib,
                "seconds": time.perf_counter() - t0,
            }
        )

    state: dict = {}

    def start() -> None:
        state["viewer"] = viewer = napari.Viewer(show=False)
        state["app"] = QApplication.instance()
        state["widget"] = SamWidget(viewer, engine=SamEngine.from_name("tiny", device="cpu"))

    def open_image() -> None:
        viewer = state["viewer"]
        if kind == "tiff":
            [(data, kwargs, _)] = read_layers(str(tiff))
            viewer.add_image(data, **kwargs)
        else:
            import zarr

            data = zarr.open_array(tiff.with_suffix(".zarr"), mode="r")
            if kind == "dask":
                import dask.array as da

                data = da.from_zarr(data)
            viewer.add_image(data, name="stack", contrast_limits=(0, 5000))
        wait_idle(state["app"], state["widget"])

    def embed() -> None:
        state["viewer"].dims.current_step = (SLICE, 0, 0)
        wait_idle(state["app"], state["widget"])
        assert state["widget"].embedding is not None, state["widget"].status.value

    def click() -> None:
        viewer = state["viewer"]
        points = next(x for x in viewer.layers if x.name == "SAM points")
        points.add([[SLICE, *CLICK]])
        wait_idle(state["app"], state["widget"])
        assert state["widget"].preview.n_candidates == 3

    def commit() -> None:
        state["widget"].commit()
        wait_idle(state["app"], state["widget"])
        labels = next(x for x in state["viewer"].layers if x.name == "SAM labels")
        state["committed"] = int(np.count_nonzero(np.asarray(labels.data[SLICE])))

    def auto() -> None:
        w = state["widget"]
        w.points_per_side.value = 16
        w.pred_iou_thresh.value = 0.5  # the tiny model's floors (docs/tiny-model.md)
        w.stability_score_thresh.value = 0.7
        w.auto_segment()
        wait_idle(state["app"], w)
        layer = next(x for x in state["viewer"].layers if x.name.endswith("SAM auto"))
        state["auto_objects"] = len(layer.features)

    step("viewer + widget + tiny model", start)
    step("open", open_image)
    step("embed one slice", embed)
    step("click (3 candidates)", click)
    step("commit", commit)
    step("auto segment one slice", auto)
    state["widget"].close()
    state["viewer"].close()
    return {
        "input": kind + (", zarr labels" if zarr_labels else ""),
        "napari_sam": str(Path(napari_sam.__file__).parent),
        "rows": rows,
        "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "committed_pixels": state["committed"],
        "auto_objects": state["auto_objects"],
    }


def commit_of(src: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", src, "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()[:70]
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", choices=("tiff", "zarr", "dask"), action="append")
    parser.add_argument(
        "--zarr-labels",
        action="store_true",
        help="new label layers as zarr arrays whatever their size (DENSE_LABELS_BYTES = 0)",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.input[0], args.zarr_labels)))
        return
    kinds = args.input or ["tiff", "zarr", "dask"]
    with tempfile.TemporaryDirectory() as tmp:
        import tifffile
        import zarr

        tiff = Path(tmp) / "stack.tif"
        stack = make_stack()
        tifffile.imwrite(tiff, stack, imagej=True, metadata={"axes": "ZYX"})
        store = zarr.open_array(
            tiff.with_suffix(".zarr"),
            mode="w",
            shape=SHAPE,
            chunks=(1, 1024, 1024),
            dtype=np.uint16,
        )
        store[...] = stack
        del stack
        results = []
        for kind in kinds:
            flags = ["--zarr-labels"] if args.zarr_labels else []
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(tiff), "--input", kind, *flags],
                capture_output=True,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            if out.returncode:
                sys.exit(f"{kind} failed:\n{out.stderr[-4000:]}")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    src = results[0]["napari_sam"]
    print(f"napari_sam from {src} ({commit_of(src)})")
    print(f"stack {SHAPE} uint16 ({np.prod(SHAPE) * 2 / 2**20:.0f} MiB), tiny model, 1 thread")
    for r in results:
        print(
            f"\ninput {r['input']}: committed {r['committed_pixels']} px, "
            f"auto {r['auto_objects']} objects"
        )
        print("| step | RSS after | file pages in it | peak in step | time (s) |")
        print("|---|---:|---:|---:|---:|")
        for row in r["rows"]:
            print(
                f"| {row['step']} | {row['rss']:.0f} | {row['file']:.0f} | {row['peak']:.0f} "
                f"| {row['seconds']:.1f} |"
            )
        print(f"| process peak (ru_maxrss) | | | {r['ru_maxrss']:.0f} | |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
