"""Propagation speed: milliseconds per slice with every embedding already cached.

Run from a checkout with napari-sam installed, on an otherwise idle machine::

    python benchmarks/bench_propagation.py                 # ViT-B and tiny, 25 slices, 2 threads
    python benchmarks/bench_propagation.py --quick         # a smoke run (5 slices, 1 repeat)
    python benchmarks/bench_propagation.py --models vit_b --size 1024 --objects 3

The volume is a synthetic stack with one large ellipsoid through every slice (more with
``--objects``); each object is prompted with a box on the middle slice and propagated through
the whole stack with the stopping rules off, so every slice is decoded. Embeddings are in the
engine's cache before the clock starts: the numbers are propagation alone (prompt from the
previous mask, decoder, mask upsampling, bookkeeping), which is what the user waits for once
the slices are embedded.

``vit_b`` has random weights (no download; the decoder's cost does not depend on them) and,
unless ``--real-embeddings``, random features put into the cache under each slice's key
instead of running the encoder 25 times. ``tiny`` is the bundled model, with real
embeddings. Medians over ``--repeats`` runs; the target (issue 9) is under 50 ms per slice on
2 cores for 25 slices.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

#: Stopping rules off: every slice is decoded (only an empty mask would stop a chain).
RULES_OFF = {"min_score": 0.0, "min_area": 1, "min_area_ratio": 0.0, "max_area_ratio": 1e9,
             "min_overlap": 0.0}  # fmt: skip


def volume(n_slices: int, size: int, n_objects: int) -> tuple[np.ndarray, np.ndarray]:
    """A float (Z, size, size) stack and its labels: ellipsoids spanning every slice."""
    rng = np.random.default_rng(0)
    zz, yy, xx = np.ogrid[:n_slices, :size, :size]
    labels = np.zeros((n_slices, size, size), np.int32)
    for k in range(n_objects):
        cy, cx = size * (0.3 + 0.4 * rng.random()), size * (0.3 + 0.4 * rng.random())
        r = size * 0.12
        ell = ((zz - n_slices / 2) / (0.75 * n_slices)) ** 2 + ((yy - cy) / r) ** 2
        labels[(ell + ((xx - cx) / r) ** 2 <= 1) & (labels == 0)] = k + 1
    image = 0.1 + 0.8 * (labels > 0) + 0.05 * rng.standard_normal(labels.shape)
    return image.astype(np.float32), labels


def cache_random_features(engine, stack) -> None:
    """Put random (1, 256, 64, 64) features in the cache under each slice's key."""
    import torch
    from segment_anything.utils.transforms import ResizeLongestSide

    from napari_sam.core.embedding import ImageEmbedding, image_key

    engine.cache.max_items = max(engine.cache.max_items, stack.n_slices)
    side = engine.model.sam.image_encoder.img_size
    h, w = stack.plane_shape
    input_size = ResizeLongestSide.get_preprocess_shape(h, w, side)
    gen = torch.Generator().manual_seed(0)
    dim = engine.model.sam.prompt_encoder.embed_dim
    for i in range(stack.n_slices):
        features = torch.randn((1, dim, side // 16, side // 16), generator=gen)
        key = image_key(stack.rgb(i))
        engine.cache.put(
            ImageEmbedding(features, (h, w), tuple(input_size), engine.model_id, key, 1.0)
        )


def run(model: str, args: argparse.Namespace) -> None:
    from napari_sam.core.checkpoints import random_model
    from napari_sam.core.engine import SamEngine
    from napari_sam.core.metrics import bounding_box
    from napari_sam.core.propagation import PropagationParams, SlicePrompt, propagate
    from napari_sam.core.stack import SliceStack, embed_slices

    image, labels = volume(args.slices, args.size, args.objects)
    stack = SliceStack.from_volume(image)
    if model == "tiny":
        engine = SamEngine.from_name("tiny", device="cpu")
    else:
        engine = SamEngine(random_model(model, fast=not args.official))
    t0 = time.perf_counter()
    if model != "tiny" and not args.real_embeddings:
        cache_random_features(engine, stack)
        how = "random features cached"
    else:
        embed_slices(engine, stack)
        how = f"embedded in {time.perf_counter() - t0:.1f} s"
    mid = args.slices // 2
    objects = {
        k: [SlicePrompt(mid, box=bounding_box(labels[mid] == k))]
        for k in range(1, args.objects + 1)
    }
    params = PropagationParams(**RULES_OFF)

    # Time the decoder calls separately: the rest is napari-sam's own per-slice work.
    predict = engine.predict
    in_predict = [0.0]

    def timed_predict(*a, **kw):
        t = time.perf_counter()
        pred = predict(*a, **kw)
        pred.mask(0)  # the upsampling happens here, lazily
        in_predict[0] += time.perf_counter() - t
        return pred

    engine.predict = timed_predict  # type: ignore[method-assign]
    per_slice, decoder_share = [], []
    propagate(engine, stack, objects, params)  # warm-up
    for _ in range(args.repeats):
        in_predict[0] = 0.0
        t = time.perf_counter()
        res = propagate(engine, stack, objects, params)
        total = time.perf_counter() - t
        decoded = len(res.slices["label"])
        per_slice.append(1000 * total / decoded)
        decoder_share.append(in_predict[0] / total)
    dice = [
        2
        * np.sum((res.labels == k) & (labels == k))
        / (np.sum(res.labels == k) + np.sum(labels == k))
        for k in objects
    ]
    print(
        f"| {model} | {args.size}x{args.size} | {args.slices} | {args.objects} | "
        f"{statistics.median(per_slice):.1f} ms | {min(per_slice):.1f} ms | "
        f"{100 * statistics.median(decoder_share):.0f}% | {decoded} | {how} |"
        + ("" if model != "tiny" else f" 3D Dice {np.mean(dice):.2f} (stopping rules off)"),
        flush=True,
    )


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["vit_b", "tiny"])
    p.add_argument("--slices", type=int, default=25)
    p.add_argument("--size", type=int, default=512, help="slice height and width")
    p.add_argument("--objects", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--real-embeddings", action="store_true", help="run the encoder (ViT-B)")
    p.add_argument("--official", action="store_true", help="official modules, not the fast")
    p.add_argument("--quick", action="store_true", help="5 slices, 1 repeat: a smoke run")
    args = p.parse_args()
    if args.quick:
        args.slices, args.repeats = 5, 1
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs; "
        "ms per decoded slice, embeddings cached\n"
    )
    print(
        "| model | slice | slices | objects | median per slice | best | in decoder + "
        "upsampling | slices decoded per run | embeddings |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for model in args.models:
        run(model, args)


if __name__ == "__main__":
    main()
