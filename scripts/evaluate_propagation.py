"""Measure propagation quality: 3D Dice per object from one box on its middle slice.

The numbers in docs/volumes.md ("Propagation") come from this script::

    OMP_NUM_THREADS=1 python scripts/evaluate_propagation.py            # tiny model, ~5 min
    python scripts/evaluate_propagation.py --model vit_b --checkpoint sam_vit_b.pth

Data: napari-sam's "nuclei 3D" sample (``napari_sam._sample_data.nuclei_3d``: 24 x 160 x 160,
14 ellipsoidal nuclei). Each object is prompted with the tight bounding box of its reference
mask on its middle slice (the middle of its z extent), as a user would draw it.

1. **Prompt modes**: every mode of ``PROMPT_MODES`` and box margin, each object on its own
   with the stopping rules off (so that the masks do not depend on them). Two Dice values:
   "oracle ends" keeps only the slices where the reference object exists (the best any
   stopping rule could do with these masks); "default stop" applies the default stopping
   rules to the same chains.
2. **Stopping rules**: with the best mode, Dice for variants of the rules (simulated on the
   recorded chains: a chain's masks do not depend on where it stops).
3. **Defaults, all objects at once**: ``propagate`` with its defaults and every object in
   one call (overlaps between objects resolved as users get them).
4. With ``--auto``: 3D automatic segmentation (``segment_volume_automatically``, the tiny
   model's lowered thresholds) linked with several ``min_iou`` / ``min_extent``: 3D recall
   (reference objects matched with 3D IoU >= 0.5), precision (linked objects that match a
   reference object so) and the mean best 3D IoU per reference object.
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import replace

import numpy as np

#: Stopping rules off: only an empty mask ends a chain.
RULES_OFF = {"min_score": 0.0, "min_area": 1, "min_area_ratio": 0.0, "max_area_ratio": 1e9,
             "min_overlap": 0.0}  # fmt: skip


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean arrays (1 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def key_prompts(reference: np.ndarray) -> dict[int, tuple[int, tuple[int, int, int, int]]]:
    """Object id -> (middle slice, tight box there) of every reference object."""
    from napari_sam.core.metrics import bounding_box

    out = {}
    for i in [int(v) for v in np.unique(reference) if v]:
        obj = reference == i
        zs = np.flatnonzero(obj.any(axis=(1, 2)))
        z = int((zs[0] + zs[-1]) // 2)
        out[i] = (z, bounding_box(obj[z]))
    return out


def kept_slices(rows: dict[str, np.ndarray], key: int, params) -> set[int]:
    """Slices a chain keeps under ``params``' stopping rules (simulated on its rows)."""
    by_slice = {int(s): k for k, s in enumerate(rows["slice"])}
    kept = {key}
    for step in (-1, 1):
        prev, j = by_slice[key], key + step
        while j in by_slice:
            k = by_slice[j]
            area, prev_area = rows["area"][k], rows["area"][prev]
            if (
                area < max(params.min_area, 1)
                or (params.min_score > 0 and rows["score"][k] < params.min_score)
                or not params.min_area_ratio <= area / prev_area <= params.max_area_ratio
                or rows["overlap"][k] < params.min_overlap
            ):
                break
            kept.add(j)
            prev, j = k, j + step
    return kept


def record_chains(engine, stack, reference, keys, params):
    """Each object alone, rules off: its mask volume and its per-slice rows."""
    from napari_sam.core.propagation import SlicePrompt, propagate

    chains = {}
    for i, (z, box) in keys.items():
        res = propagate(engine, stack, {i: [SlicePrompt(z, box=box)]}, params)
        chains[i] = (res.labels == i, res.slices)
    return chains


def score_chains(chains, reference, keys, params) -> tuple[float, float]:
    """Mean 3D Dice with oracle ends and with ``params``' stopping rules."""
    oracle, stopped = [], []
    for i, (mask, rows) in chains.items():
        ref = reference == i
        present = ref.any(axis=(1, 2))
        oracle.append(dice(mask & present[:, None, None], ref))
        kept = np.zeros(len(present), bool)
        kept[sorted(kept_slices(rows, keys[i][0], params))] = True
        stopped.append(dice(mask & kept[:, None, None], ref))
    return float(np.mean(oracle)), float(np.mean(stopped))


def main() -> None:
    import torch

    from napari_sam._sample_data import nuclei_3d
    from napari_sam.core.engine import SamEngine
    from napari_sam.core.propagation import (
        PROMPT_MODES,
        PropagationParams,
        SlicePrompt,
        propagate,
    )
    from napari_sam.core.stack import SliceStack, embed_slices

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.1, 0.2])
    p.add_argument("--modes", nargs="+", default=list(PROMPT_MODES))
    p.add_argument("--auto", action="store_true", help="also 3D automatic segmentation")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    (image, meta, _), (reference, _, _) = nuclei_3d()
    engine = SamEngine.from_name(args.model, checkpoint=args.checkpoint, device="cpu")
    stack = SliceStack.from_volume(image)
    emb = embed_slices(engine, stack)
    print(f"{args.model}: {stack.n_slices} slices embedded in {emb.seconds:.1f} s")
    keys = key_prompts(reference)
    defaults = PropagationParams()

    print("\n| prompt | box margin | 3D Dice, oracle ends | 3D Dice, default stop |")
    print("|---|---:|---:|---:|")
    best, best_chains = None, None
    for mode, margin in itertools.product(args.modes, args.margins):
        if "box" not in mode and margin != args.margins[0]:
            continue  # the margin only changes box prompts
        params = PropagationParams(prompt=mode, box_margin=margin, **RULES_OFF)
        chains = record_chains(engine, stack, reference, keys, params)
        oracle, stopped = score_chains(chains, reference, keys, defaults)
        print(f"| {mode} | {margin:g} | {oracle:.3f} | {stopped:.3f} |", flush=True)
        if best is None or stopped > best[0]:
            best, best_chains = (stopped, mode, margin), chains

    _, mode, margin = best
    print(f"\nStopping rules with prompt {mode}, margin {margin:g} (defaults: {defaults})")
    print("\n| rule changed | 3D Dice |\n|---|---:|")
    variants = (
        [{}]
        + [
            {name: value}
            for name, values in (
                ("min_score", (0.0, 0.3, 0.5, 0.7, 0.8)),
                ("min_area_ratio", (0.0, 0.1, 0.3, 0.5)),
                ("max_area_ratio", (1.5, 2.0, 1e9)),
                ("min_overlap", (0.0, 0.3, 0.7, 0.9)),
            )
            for value in values
        ]
        + [{"min_score": 0.7, "min_overlap": 0.7}, {"min_score": 0.7, "min_area_ratio": 0.5}]
    )
    for change in variants:
        params = replace(defaults, **change)
        label = ", ".join(f"{k}={v:g}" for k, v in change.items()) or "(defaults)"
        print(f"| {label} | {score_chains(best_chains, reference, keys, params)[1]:.3f} |")

    t0 = time.perf_counter()
    objects = {i: [SlicePrompt(z, box=box)] for i, (z, box) in keys.items()}
    res = propagate(engine, stack, objects, spacing=meta["scale"])
    seconds = time.perf_counter() - t0
    scores = [dice(res.labels == i, reference == i) for i in keys]
    stops = [str(v) for v in (*res.table["stop_below"], *res.table["stop_above"])]
    print(
        f"\nDefaults, {len(keys)} objects in one call: mean 3D Dice {np.mean(scores):.3f} "
        f"(min {np.min(scores):.3f}, max {np.max(scores):.3f}) in {seconds:.1f} s; "
        f"stop reasons (both sides): { {r: stops.count(r) for r in sorted(set(stops))} }"
    )
    if args.auto:
        evaluate_auto(engine, stack, reference)


def evaluate_auto(engine, stack, reference: np.ndarray) -> None:
    """3D automatic segmentation of the sample, linked with several settings."""
    from napari_sam.core.automatic import AutoParams
    from napari_sam.core.linking import LinkParams, link_slices, segment_volume_automatically
    from napari_sam.core.metrics import best_match_iou

    params = AutoParams(points_per_side=16, pred_iou_thresh=0.5, stability_score_thresh=0.7)
    t0 = time.perf_counter()
    per_slice = segment_volume_automatically(engine, stack, params, LinkParams(min_extent=1))
    seconds = time.perf_counter() - t0
    print(f"\n3D automatic segmentation ({params}): {seconds:.0f} s for {stack.n_slices} slices")
    print(
        "\n| min_iou | min_extent | objects | recall (3D IoU >= 0.5) | precision | mean best IoU |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    ids = [int(i) for i in np.unique(reference) if i]
    for min_iou, min_extent in itertools.product((0.2, 0.3, 0.5), (1, 2, 3, 4)):
        # Linking again is exact: linked labels keep every slice's instances apart.
        labels = link_slices(per_slice.labels, 0, LinkParams(min_iou, min_extent))
        best = [best_match_iou(labels, reference == i) for i in ids]
        n = int(labels.max())
        found = sum(best_match_iou(reference, labels == j) >= 0.5 for j in range(1, n + 1))
        print(
            f"| {min_iou:g} | {min_extent} | {n} | {np.mean(np.array(best) >= 0.5):.3f} | "
            f"{found / max(n, 1):.3f} | {np.mean(best):.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
