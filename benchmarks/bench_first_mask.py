"""Time to first mask and embedding time: napari-sam vs the official code, for vit_t, vit_b, tiny.

Run from a checkout with napari-sam and its test extra installed (MobileSAM's reference code
comes from ``mobilesam-mirror``)::

    python benchmarks/bench_first_mask.py                 # vit_t, vit_b, tiny; 3 runs each
    python benchmarks/bench_first_mask.py --models vit_t --repeats 5 --json out.json
    python benchmarks/bench_first_mask.py --smoke         # tiny model, 1 run: checks the script

All models have random weights (no download; speed does not depend on the weights), written once
to a temporary folder in each model's own file format, so the model is "already cached".

Rows
----
first mask
    From "image chosen" to "first mask shown", in a fresh Python process per run (start-up
    counts): imports, loading the checkpoint, reading the image, the embedding and one click
    (the mask at the image's resolution). The parent times the whole process; the child
    reports each stage. Ours: ``load_model`` + ``SamEngine.embed`` + ``predict().mask()`` (no
    embedding cache on disk), at fp32, and also at the plan ``"auto"`` picks on this CPU when
    it is not fp32 (e.g. bf16 with AMX; MobileSAM's TinyViT stays fp32).
    Official: ``segment_anything`` (``sam_model_registry`` / ``SamPredictor``) for vit_b and
    the tiny model (built from segment_anything's classes), MobileSAM's ``mobile_sam`` for vit_t.
embedding
    The encoder alone, in this process, official and ours alternating on the same weights
    (medians), with the largest difference of the embeddings; ours at fp32, and at the plan
    ``"auto"`` picks where it is not fp32 (marked "(auto)").

Targets of issue 11 (2-core laptop-class CPU): vit_t embedding of a 1024 x 1024 image <= 0.7 s
(MobileSAM's own code: about 1.3 s) and a first mask in about 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from bench_sam import REAL_IMAGE, alternate, fmt_s, machine, real_rgb

MODELS = ("vit_t", "vit_b", "tiny")
#: The click of the first mask: (row, col) in the 1024 x 1024 real image.
CLICK = (500, 520)


# --------------------------------------------------------------------------------------------
# child: one first mask in a fresh process
# --------------------------------------------------------------------------------------------


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one "image chosen -> first mask" in this (fresh) process; stage times in seconds."""
    t0 = time.perf_counter()
    stages: dict[str, float] = {}

    def lap(name: str) -> None:
        stages[name] = time.perf_counter() - t0 - sum(stages.values())

    row, col = CLICK
    if spec["variant"] == "official":
        import numpy as np
        import torch

        torch.set_num_threads(spec["threads"])
        predictor_cls, sam = _official_model(spec)
        lap("imports + load")
        import imageio.v3 as iio

        rgb = np.asarray(iio.imread(spec["image"]))[..., :3]
        predictor = predictor_cls(sam)
        predictor.set_image(rgb)
        lap("embed")
        masks, scores, _ = predictor.predict(
            point_coords=np.array([[col + 0.5, row + 0.5]]),
            point_labels=np.array([1]),
            multimask_output=True,
        )
        mask = masks[int(np.argmax(scores))]
        lap("first click")
        precision = "fp32"
    else:
        import torch

        torch.set_num_threads(spec["threads"])
        from napari_sam.core.checkpoints import load_model
        from napari_sam.core.engine import SamEngine
        from napari_sam.core.io import read_image
        from napari_sam.core.normalize import prepare_image

        lap("imports")
        name = "auto" if spec["model"] != "tiny" else "tiny"
        model = load_model(
            name,
            checkpoint=spec["checkpoint"] if name == "auto" else None,
            device="cpu",
            precision=spec["precision"],
        )
        lap("load")
        engine = SamEngine(model)
        emb = engine.embed(prepare_image(read_image(spec["image"])))
        lap("embed")
        mask = engine.predict(emb, points=[[row, col]]).mask()
        lap("first click")
        precision = model.precision
    return {"stages": stages, "precision": precision, "mask_pixels": int(mask.sum())}


def _official_model(spec: dict[str, Any]):
    """(predictor class, network) built the way the official code does it."""
    import torch

    if spec["model"] == "vit_t":
        with warnings.catch_warnings():  # timm: MobileSAM re-registers TinyViT names
            warnings.simplefilter("ignore")
            from mobile_sam import SamPredictor, sam_model_registry
        sam = sam_model_registry["vit_t"](checkpoint=spec["checkpoint"])
        return SamPredictor, sam.eval()  # MobileSAM's biases are gathered in eval()
    from segment_anything import SamPredictor, sam_model_registry

    if spec["model"] == "vit_b":
        return SamPredictor, sam_model_registry["vit_b"](checkpoint=spec["checkpoint"]).eval()
    # The tiny model is napari-sam's file format: segment_anything's classes, its weights.
    from napari_sam.core.architecture import SamArchitecture, build_sam

    obj = torch.load(spec["checkpoint"], map_location="cpu", weights_only=True)
    sam = build_sam(SamArchitecture.from_dict(obj["architecture"]))
    sam.load_state_dict(obj["state_dict"])
    return SamPredictor, sam.eval()


# --------------------------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------------------------


def write_checkpoints(models: list[str], folder: Path) -> dict[str, Path]:
    """Random weights in each model's own format (plain state dicts for vit_t and vit_b)."""
    import torch

    from napari_sam.core.checkpoints import random_model
    from napari_sam.core.registry import MODELS as REGISTRY

    paths = {}
    for name in models:
        if name == "tiny":
            paths[name] = REGISTRY["tiny"].bundled_path
            continue
        path = folder / f"random_{name}.pt"
        torch.save(random_model(name, seed=0, fast=False).sam.state_dict(), path)
        paths[name] = path
    return paths


def first_mask_runs(spec: dict[str, Any], repeats: int) -> dict[str, Any]:
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - t
        if out.returncode != 0:
            raise RuntimeError(f"child {spec} failed:\n{out.stderr[-2000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["process"] = wall
        runs.append(result)
    stages = {k: statistics.median(r["stages"][k] for r in runs) for k in runs[0]["stages"]}
    return {
        "model": spec["model"],
        "variant": spec["variant"],
        "precision": runs[0]["precision"],
        "stages": stages,
        "process": statistics.median(r["process"] for r in runs),
        "n": repeats,
        "mask_pixels": runs[0]["mask_pixels"],
    }


def embedding_rows(name: str, path: Path, repeats: int) -> list[dict[str, Any]]:
    """The encoder alone: official and ours (fp32, and the automatic precision) alternating."""
    import torch

    from napari_sam.core.acceleration import configure, resolve_precision
    from napari_sam.core.checkpoints import load_model
    from napari_sam.core.embedding import compute_embedding

    spec = {"model": name, "checkpoint": str(path)}
    predictor_cls, sam = _official_model(spec)
    if name == "tiny":
        ours = load_model("tiny", device="cpu", precision="fp32")
    else:
        ours = load_model("auto", checkpoint=path, device="cpu", precision="fp32")
    rgb = real_rgb()
    out: dict[str, Any] = {}

    def official() -> None:
        p = predictor_cls(sam)
        with torch.inference_mode():
            p.set_image(rgb)
        out["official"] = p.features

    def run(precision: str):
        def go() -> None:
            configure(ours, precision=precision)
            out[precision] = compute_embedding(ours, rgb).features

        return go

    variants = {"official": official, "ours fp32": run("fp32")}
    auto = resolve_precision("auto", "cpu", ours.architecture.encoder_type)
    if auto != "fp32":  # what "auto" picks on this CPU (e.g. bf16 with AMX), as well
        variants[f"ours {auto} (auto)"] = run(auto)
    times = alternate(variants, repeats, warmup=1)
    rows = []
    base = statistics.median(times["official"])
    for variant, ts in times.items():
        key = "official" if variant == "official" else variant.split()[1]
        err = (out[key] - out["official"]).abs().max().item()
        rows.append(
            {
                "task": f"embedding {name}",
                "variant": variant,
                "median_s": statistics.median(ts),
                "n": len(ts),
                "ratio": statistics.median(ts) / base,
                "max_abs_err": err,
            }
        )
        print(
            f"  embedding {name:6s} {variant:22s} {fmt_s(rows[-1]['median_s']):>10s}", flush=True
        )
    return rows


def markdown(first: list[dict[str, Any]], embeddings: list[dict[str, Any]]) -> str:
    lines = [
        "| first mask | variant | precision | imports + load | embed | first click | "
        "process total | runs |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in first:
        s = r["stages"]
        load = s.get("imports + load", s.get("imports", 0.0) + s.get("load", 0.0))
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['precision']} | {fmt_s(load)} | "
            f"{fmt_s(s['embed'])} | {fmt_s(s['first click'])} | {fmt_s(r['process'])} | "
            f"{r['n']} |"
        )
    lines += [
        "",
        "| embedding 1024x1024 | variant | median | runs | ours / official | max abs diff |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in embeddings:
        lines.append(
            f"| {r['task'].split()[-1]} | {r['variant']} | {fmt_s(r['median_s'])} | {r['n']} | "
            f"{r['ratio']:.3f} | {r['max_abs_err']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    ap.add_argument("--repeats", type=int, default=3, help="runs per variant")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, one run: checks the script")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    models = ["tiny"] if args.smoke else [m.strip() for m in args.models.split(",") if m.strip()]
    repeats = 1 if args.smoke else args.repeats
    info = machine()
    print(json.dumps(info), flush=True)
    first, embeddings = [], []
    with tempfile.TemporaryDirectory(prefix="napari-sam-bench-") as tmp:
        # A private cache: no embedding store, no hash record of the user's.
        os.environ["NAPARI_SAM_CACHE"] = str(Path(tmp) / "cache")
        paths = write_checkpoints(models, Path(tmp))
        for name in models:
            base = {
                "model": name,
                "checkpoint": str(paths[name]),
                "image": str(REAL_IMAGE),
                "threads": torch.get_num_threads(),
            }
            variants = [
                {**base, "variant": "official"},
                {**base, "variant": "ours", "precision": "fp32"},
            ]
            auto = resolve_auto("tiny_vit" if name == "vit_t" else "vit")
            if auto != "fp32":  # e.g. bf16 on a CPU with bfloat16 units: measure it too
                variants.append({**base, "variant": "ours", "precision": auto})
            for spec in variants:
                row = first_mask_runs(spec, repeats)
                first.append(row)
                print(
                    f"  first mask {name:6s} {spec['variant']:8s} {row['precision']:5s} "
                    f"{fmt_s(row['process']):>10s}  {row['stages']}",
                    flush=True,
                )
            embeddings += embedding_rows(name, paths[name], repeats)
    info["load_avg_end"] = os.getloadavg()
    print()
    print(f"machine: {info}")
    print()
    print(markdown(first, embeddings))
    if args.json:
        args.json.write_text(
            json.dumps({"machine": info, "first_mask": first, "embedding": embeddings}, indent=1)
        )
    return 0


def resolve_auto(encoder_type: str) -> str:
    """The precision plan ``"auto"`` picks on this CPU for an encoder type."""
    from napari_sam.core.acceleration import resolve_precision

    return resolve_precision("auto", "cpu", encoder_type)


if __name__ == "__main__":
    sys.exit(main())
