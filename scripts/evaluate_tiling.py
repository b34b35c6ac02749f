"""Box- and click-prompt IoU with and without tiling (the numbers in docs/large-images.md).

For every reference object: one box (its tight bounding box) and, separately, one positive
click at its most interior pixel, decoded untiled (the whole image resized to SAM's 1024 px)
and tiled (:func:`napari_sam.core.tiled_prompts.predict_tiled`) at each tiling asked for.
Quality only: run it single-threaded next to other work if need be::

    OMP_NUM_THREADS=1 python scripts/evaluate_tiling.py                 # tiny model
    OMP_NUM_THREADS=1 python scripts/evaluate_tiling.py --tilings 128,32 256,64 --clicks
    python scripts/evaluate_tiling.py --model vit_b                     # a real SAM

Images: the held-out real fluorescence nuclei ``cb4df20a83`` (603 x 1272, nuclei of ~6 px
radius), the other real images of ``tests/data/real`` with ``--all``, the folders of
``--shared`` (``*_image.png`` with ``*_labels.tif``), and a montage made of the held-out H&E
image ``4d14a3629b`` (4 x 4 copies, mirrored so that no seam is straight: 1024 x 1280, its
nuclei shrunk to 0.8x untiled).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "tests" / "data" / "real"
HELD_OUT = ["cb4df20a83"]
OTHERS = ["4d14a3629b", "0287e7ee5b", "00ae65c1c6", "08275a5b1c"]


def load(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    import imageio.v3 as iio
    import tifffile

    image = iio.imread(folder / f"{name}_image.png")
    labels = tifffile.imread(folder / f"{name}_labels.tif").astype(np.int32)
    return image, labels


def montage(image: np.ndarray, labels: np.ndarray, n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``n`` x ``n`` mirrored copies of an image, labels renumbered per copy."""
    rows_img, rows_lab = [], []
    offset = 0
    for r in range(n):
        row_img, row_lab = [], []
        for c in range(n):
            img, lab = image, labels
            if r % 2:
                img, lab = img[::-1], lab[::-1]
            if c % 2:
                img, lab = img[:, ::-1], lab[:, ::-1]
            row_img.append(img)
            row_lab.append(np.where(lab > 0, lab + offset, 0))
            offset += int(labels.max())
        rows_img.append(np.concatenate(row_img, axis=1))
        rows_lab.append(np.concatenate(row_lab, axis=1))
    return np.concatenate(rows_img), np.concatenate(rows_lab)


def objects(labels: np.ndarray, min_area: int, max_objects: int) -> list[np.ndarray]:
    """Full-size masks of the objects of at least ``min_area`` px (a random subset, seed 0)."""
    from scipy import ndimage as ndi

    found = [
        (i, sl)
        for i, sl in enumerate(ndi.find_objects(labels), start=1)
        if sl is not None and (labels[sl] == i).sum() >= min_area
    ]
    if len(found) > max_objects:
        keep = np.random.default_rng(0).choice(len(found), max_objects, replace=False)
        found = [found[k] for k in sorted(keep)]
    out = []
    for i, sl in found:
        m = np.zeros(labels.shape, bool)
        m[sl] = labels[sl] == i
        out.append(m)
    return out


def score(engine, rgb, masks, grid, clicks: bool) -> dict[str, float]:
    from napari_sam.core.metrics import bounding_box, interior_point, iou
    from napari_sam.core.tiled_embedding import embed_tiled
    from napari_sam.core.tiled_prompts import predict_tiled

    t0 = time.perf_counter()
    if grid is None:
        emb = engine.embed(rgb)

        def predict(**kw):
            return engine.predict(emb, **kw)
    else:
        tiled = embed_tiled(engine, rgb, grid)

        def predict(**kw):
            return predict_tiled(engine, tiled, **kw)

    t_embed = time.perf_counter() - t0
    pred = predict(boxes=[bounding_box(m) for m in masks])
    out = {
        "box_iou": float(np.mean([iou(pred.mask(k), m) for k, m in enumerate(masks)])),
        "embed_s": t_embed,
    }
    if clicks:
        out["click_iou"] = float(
            np.mean([iou(predict(points=[interior_point(m)]).mask(), m) for m in masks])
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--tilings",
        nargs="*",
        default=["512,64", "256,64", "128,32"],
        help="TILE,HALO pairs (square tiles)",
    )
    ap.add_argument("--clicks", action="store_true", help="also one click per object")
    ap.add_argument("--all", action="store_true", help="every real image of tests/data/real")
    ap.add_argument("--shared", nargs="*", type=Path, default=[], help="more image folders")
    ap.add_argument("--min-area", type=int, default=20)
    ap.add_argument(
        "--max-objects", type=int, default=300, help="a random subset per image (seed 0)"
    )
    ap.add_argument("--only", nargs="*", default=None, help="image names to run (substrings)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args(argv)

    import torch

    from napari_sam.core.engine import SamEngine
    from napari_sam.core.normalize import prepare_image
    from napari_sam.core.tiling import TileGrid

    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "0")) or 2)
    engine = SamEngine.from_name(args.model, device=args.device)
    sets: list[tuple[str, np.ndarray, np.ndarray]] = []
    for name in HELD_OUT + (OTHERS if args.all else []):
        sets.append((name, *load(REAL, name)))
    for folder in args.shared:
        for path in sorted(folder.glob("*_image.png")):
            name = path.name[: -len("_image.png")]
            sets.append((f"{folder.name}/{name}", *load(folder, name)))
    sets.append(("montage 4x4 of 4d14a3629b", *montage(*load(REAL, "4d14a3629b"))))

    rows = []
    print("| image | size | objects | tiling | blocks (scale) | box IoU | click IoU | embed s |")
    print("|---|---|---:|---|---|---:|---:|---:|")
    for name, image, labels in sets:
        if args.only and not any(o in name for o in args.only):
            continue
        rgb = prepare_image(image)
        masks = objects(labels, args.min_area, args.max_objects)
        grids = [None] + [
            TileGrid(rgb.shape[:2], (int(t), int(t)), (int(h), int(h)))
            for t, h in (s.split(",") for s in args.tilings)
        ]
        for grid in grids:
            res = score(engine, rgb, masks, grid, args.clicks)
            if grid is None:
                how, blocks = "untiled", f"whole ({1024 / max(rgb.shape[:2]):.2f})"
            else:
                how = f"{len(grid)} tiles {grid.tile[0]}+{grid.halo[0]}"
                blocks = f"{grid.block_shape[0]}x{grid.block_shape[1]} ({grid.scale:.2f})"
            row = {"image": name, "tiling": how, "objects": len(masks), **res}
            rows.append(row)
            click = f"{res['click_iou']:.3f}" if "click_iou" in res else ""
            print(
                f"| {name} | {rgb.shape[0]}x{rgb.shape[1]} | {len(masks)} | {how} | {blocks} | "
                f"{res['box_iou']:.3f} | {click} | {res['embed_s']:.1f} |",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
