"""What sessions cost: hashing images, writing session records, autosaving labels.

No model runs (NumPy only). Run from a checkout with napari-sam installed::

    python benchmarks/bench_sessions.py            # about half a minute, ~1 GB of memory

Rows
----
image hash
    :func:`~napari_sam.core.session_record.image_sha256` of a uint16 stack, in MB/s (the
    widget hashes an image once when it is opened, to find its autosave).
record
    ``to_json`` + ``from_json`` of a session of N one-object commits on a 1024 x 1024 plane
    (each mask a disc of radius 20-60 px), and the file size.
autosave
    :func:`~napari_sam.core.autosave.autosave` of the labels (int32) after the last commit:
    a 2048 x 2048 plane with 400 objects, and a 50 x 1024 x 1024 stack with 400 objects
    per plane. Medians of 3 runs; the file size.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_sam.core.autosave import autosave
from napari_sam.core.normalize import Normalization
from napari_sam.core.prompts import make_prompts
from napari_sam.core.session_record import (
    CommitRecord,
    ImageIdentity,
    ModelRecord,
    PlaneRecord,
    SessionRecord,
    image_sha256,
)

MODEL = ModelRecord("vit_b", "e" * 64, "/cache/sam_vit_b.pth", "vit_b-eeee", "fp32", True, "cpu")


def median_seconds(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def discs(shape: tuple[int, int], n: int, seed: int = 0) -> np.ndarray:
    """int32 labels with ``n`` non-overlapping-ish discs."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    for i in range(n):
        r = int(rng.integers(10, 30))
        y, x = (int(rng.integers(r, s - r)) for s in shape)
        yy, xx = np.ogrid[-r : r + 1, -r : r + 1]
        window = labels[y - r : y + r + 1, x - r : x + r + 1]
        window[(yy**2 + xx**2 <= r * r) & (window == 0)] = i + 1
    return labels


def bench_hash() -> None:
    stack = np.random.default_rng(0).integers(0, 4096, (64, 1024, 1024), dtype=np.uint16)
    mb = stack.nbytes / 1e6
    s = median_seconds(lambda: image_sha256(stack))
    print(f"image hash      {mb:7.0f} MB uint16 stack   {s:6.2f} s   {mb / s:6.0f} MB/s")


def bench_record(n: int) -> None:
    record = SessionRecord(ImageIdentity("0" * 64, (1024, 1024), "uint8"))
    rng = np.random.default_rng(1)
    yy, xx = np.ogrid[:1024, :1024]
    for i in range(n):
        r = int(rng.integers(20, 60))
        y, x = (int(v) for v in rng.integers(r, 1024 - r, 2))
        mask = (yy - y) ** 2 + (xx - x) ** 2 <= r * r
        record.append(
            CommitRecord.build(
                target="SAM labels",
                plane=PlaneRecord((0, 1), (None, None)),
                overwrite=False,
                model=MODEL,
                normalization=Normalization(),
                prompts=[make_prompts([[y, x]])],
                masks=[mask],
                candidates=[1],
                scores=[0.9],
                sources=["points"],
                labels=[i + 1],
                pixels=[int(mask.sum())],
            )
        )
    text = record.to_json()
    s = median_seconds(lambda: SessionRecord.from_json(record.to_json()))
    print(f"record          {n:5d} commits            {s:6.2f} s   {len(text) / 1e6:6.2f} MB JSON")


def bench_autosave(name: str, labels: np.ndarray) -> None:
    record = SessionRecord(ImageIdentity("1" * 64, labels.shape, "uint8"))
    with tempfile.TemporaryDirectory() as folder:
        s = median_seconds(lambda: autosave(record, labels, folder=folder, limit=10**10))
        size = sum(p.stat().st_size for p in Path(folder).rglob("*.npz"))
    mb = labels.nbytes / 1e6
    print(f"autosave        {name:24s} {s:6.2f} s   {size / 1e6:6.2f} MB file ({mb:.0f} MB raw)")


def main() -> None:
    bench_hash()
    for n in (100, 1000):
        bench_record(n)
    bench_autosave("2048x2048, 400 objects", discs((2048, 2048), 400))
    plane = discs((1024, 1024), 400)
    stack = np.stack([np.where(plane > 0, plane + 400 * z, 0) for z in range(50)])
    bench_autosave("50x1024x1024 stack", stack)


if __name__ == "__main__":
    main()
