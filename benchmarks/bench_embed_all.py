"""Embedding every slice of a stack: seconds per slice, the disk store's cost, and how long a
click waits while it runs.

Run from a checkout with napari-sam installed, on an otherwise idle machine::

    python benchmarks/bench_embed_all.py                  # ViT-B (random weights), 8 x 512^2
    python benchmarks/bench_embed_all.py --model tiny --slices 25
    python benchmarks/bench_embed_all.py --quick          # a smoke run (tiny, 3 small slices)

Prints, for one model:

- ``compute``: :func:`~napari_sam.core.stack.embed_slices` on a fresh engine with an on-disk
  store (encoder + writing each embedding), seconds per slice;
- ``from disk``: the same stack on a new engine (empty memory) with the same store: reading
  the stored embeddings, what a later napari session or a stack embedded by ``napari-sam
  embed`` costs;
- ``click wait``: while the slices are embedded as the widget does it (a background
  :class:`~napari_sam._tasks.Task` at the torch gate, preempted by more urgent work), a
  prediction is submitted every ``--click-every`` seconds; the time from submission until it
  holds the gate, median and max. Without preemption a click would wait for the rest of the
  slice being encoded (up to the per-slice time above). Each click costs the background job
  the slice it was encoding: clicks faster than one slice's encoding hold it back entirely
  (it carries on when they stop), so keep ``--click-every`` above the per-slice time.

ViT-B has random weights: the encoder's cost does not depend on them, nothing is downloaded.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time

import numpy as np


def _stack(n: int, size: int):
    from napari_sam.core.stack import SliceStack

    rng = np.random.default_rng(0)
    return SliceStack.from_volume(rng.random((n, size, size), dtype=np.float32))


def _engine(model: str, store):
    from napari_sam.core.checkpoints import random_model
    from napari_sam.core.engine import SamEngine

    if model == "tiny":
        return SamEngine.from_name("tiny", device="cpu", store=store)
    return SamEngine(random_model(model), store=store)


def click_waits(model: str, stack, every: float) -> list[float]:
    """Embed all slices as the widget's background task; time how long clicks wait."""
    from napari_sam._tasks import Task, TorchGate
    from napari_sam.core.stack import embed_slices

    engine, gate = _engine(model, None), TorchGate()
    background = Task("embed_all", "embedding all slices", gate=gate)

    def job(task: Task):
        return embed_slices(
            engine, stack, progress=task.progress, cancel=task.is_cancelled,
            preempt=task.outranked,
        )  # fmt: skip

    thread = threading.Thread(target=background.run, args=(job,))
    thread.start()
    waits = []
    while thread.is_alive():
        time.sleep(every)
        asked = time.perf_counter()
        ok, started = Task("predict", "preview", gate=gate).run(lambda t: time.perf_counter())
        if ok and thread.is_alive():
            waits.append(started - asked)
    thread.join()
    return waits


def main() -> None:
    import torch

    from napari_sam.core.embedding import EmbeddingStore
    from napari_sam.core.stack import embed_slices

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vit_b")
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--click-every",
        type=float,
        default=None,
        help="seconds between clicks (default: 1.5x the measured seconds per slice)",
    )
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.model, args.slices, args.size, args.click_every = "tiny", 3, 64, 1.0
    torch.set_num_threads(args.threads)
    stack = _stack(args.slices, args.size)
    with tempfile.TemporaryDirectory() as folder:
        store = EmbeddingStore(folder)
        done = embed_slices(_engine(args.model, store), stack)
        compute = done.seconds / args.slices
        again = embed_slices(_engine(args.model, store), stack)
        assert again.computed == 0, "the stored embeddings were not found"
        from_disk = again.seconds / args.slices
        n, size = store.usage()
    # Clicks faster than one slice's encoding would hold the job back entirely (each costs it
    # the slice being encoded): by default they come a little slower than that.
    every = args.click_every if args.click_every is not None else 1.5 * compute
    waits = click_waits(args.model, stack, every)
    wait = (
        f"{1000 * statistics.median(waits):.0f} ms median, {1000 * max(waits):.0f} ms max "
        f"({len(waits)} clicks, one every {every:.1f} s)"
        if waits
        else "no click landed during the run"
    )
    print(
        f"{args.model}, {args.slices} slices of {args.size}x{args.size}, "
        f"{args.threads} threads: compute {compute:.2f} s/slice, from disk "
        f"{1000 * from_disk:.0f} ms/slice ({size / n / 2**20:.1f} MiB each), click wait {wait}"
    )


if __name__ == "__main__":
    main()
