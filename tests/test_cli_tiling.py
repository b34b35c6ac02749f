"""``--tile ROWS,COLS`` and ``--halo ROWS,COLS`` on segment, auto and embed (small model)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tifffile
from cli_helpers import model_args, run

from napari_sam.cli import main
from napari_sam.core.automatic import AutoParams
from napari_sam.core.checkpoints import load_model, save_checkpoint
from napari_sam.core.engine import SamEngine
from napari_sam.core.tiled_automatic import segment_tiled
from napari_sam.core.tiled_embedding import open_tiled
from napari_sam.core.tiled_prompts import predict_tiled
from napari_sam.core.tiling import TileGrid

H, W = 64, 96
TILING = ["--tile", "32,48", "--halo", "8,8", "--precision", "fp32"]
GRID = TileGrid((H, W), (32, 48), (8, 8))  # 2 x 2 tiles, blocks 48 x 64
BOXES = [(2, 2, 20, 30), (10, 30, 60, 60)]  # the second is taller than a block: merged


@pytest.fixture(scope="module")
def files(tmp_path_factory, small_model, small_arch, make_image):
    folder = tmp_path_factory.mktemp("cli_tiling")
    ckpt = folder / "small.pt"
    save_checkpoint(small_model.sam, small_arch, ckpt, meta={"purpose": "tests"})
    image = make_image((H, W))[..., 0]
    tifffile.imwrite(folder / "cells.tif", image)
    return ckpt, folder / "cells.tif", np.repeat(image[..., None], 3, axis=2)


@pytest.fixture(scope="module")
def engine(files):
    """The CLI's network (same file, fast modules, fp32), in-process."""
    return SamEngine(load_model("auto", checkpoint=files[0], device="cpu", precision="fp32"))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(folder))
    return folder


def stores(cache):
    return sorted((cache / "embeddings" / "tiles").rglob("*.zarr"))


def test_segment_tiled_boxes_give_the_core_answer(capsys, tmp_path, files, engine, cache):
    out_path = tmp_path / "two.tif"
    box_args = [a for b in BOXES for a in ("--box", ",".join(map(str, b)))]
    code, out, err = run(
        capsys, "segment", files[1], *box_args, "-o", out_path, *TILING, *model_args(files)
    )
    assert code == 0, err
    assert out.strip() == f"wrote {out_path} (2 objects)"
    assert "2 x 2 tiles (core <= 32 x 48 px, halo 8 x 8, blocks 48 x 64" in err
    assert re.search(r"^object 1: \d+ px, predicted IoU -?\d\.\d{3} \(tile \d\)$", err, re.M)
    assert re.search(r"^object 2: .*\(merged from tiles \[", err, re.M)
    pred = predict_tiled(engine, open_tiled(engine, files[2], GRID), boxes=BOXES)
    expected = np.zeros((H, W), np.int32)
    for obj in range(2):
        expected[pred.mask(obj)] = obj + 1
    np.testing.assert_array_equal(tifffile.imread(out_path), expected)
    (store,) = stores(cache)
    assert store.name.endswith("-tile32x48-halo8x8.zarr")


def test_embed_then_segment_reuses_the_tiles(capsys, tmp_path, files, cache):
    code, out, err = run(capsys, "embed", files[1], *TILING, *model_args(files))
    assert code == 0, err
    (store,) = stores(cache)
    assert out.strip() == f"{files[1]}: 4 tile embeddings stored in {store}"
    assert "embedding tiles: 4/4" in err and "4 computed, 0 reused" in err
    code, _, err = run(
        capsys, "segment", files[1], "--point", "20,70", "-o", tmp_path / "a.tif", *TILING,
        *model_args(files),
    )  # fmt: skip
    assert code == 0, err
    assert "0 computed, 1 reused" in err
    # Another tiling is another store; the first is kept.
    code, _, err = run(
        capsys, "embed", files[1], "--tile", "64,64", "--precision", "fp32", *model_args(files)
    )
    assert code == 0, err
    assert len(stores(cache)) == 2


def test_a_store_from_another_version_is_recomputed_with_a_note(capsys, files, cache):
    assert run(capsys, "embed", files[1], *TILING, *model_args(files))[0] == 0
    (store,) = stores(cache)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["signature"]["software_version"] = "0.0.1"
    (store / "zarr.json").write_text(json.dumps(meta))
    code, _, err = run(capsys, "embed", files[1], *TILING, *model_args(files))
    assert code == 0, err
    assert "note: recomputing the embeddings in" in err and "software_version" in err
    assert "4 computed, 0 reused" in err


def test_auto_tiled_writes_the_stitched_labels_and_table(capsys, tmp_path, files, engine):
    out_path, table = tmp_path / "auto.tif", tmp_path / "auto.csv"
    loose = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    code, out, err = run(
        capsys, "auto", files[1], "-o", out_path, "--table", table, *loose, *TILING,
        *model_args(files),
    )  # fmt: skip
    assert code == 0, err
    assert "automatic segmentation in 2 x 2 tiles" in err and "(4 tiles)" in err
    params = AutoParams(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    expected = segment_tiled(engine, open_tiled(engine, files[2], GRID), params)
    labels = tifffile.imread(out_path)
    np.testing.assert_array_equal(labels, expected.labels)
    assert out.strip() == f"wrote {out_path} ({expected.n_objects} objects)"
    assert len(table.read_text().strip().splitlines()) == expected.n_objects + 1


def test_no_embedding_cache_leaves_no_store(capsys, tmp_path, files, cache):
    code, _, err = run(
        capsys, "segment", files[1], "--box", "2,2,20,30", "-o", tmp_path / "x.tif", *TILING,
        "--no-embedding-cache", *model_args(files),
    )  # fmt: skip
    assert code == 0, err
    assert stores(cache) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tile", "512"], r"--tile '512': expected ROWS,COLS"),
        (["--tile", "8,8"], r"values must be at least 16"),
        (["--tile", "big"], r"expected ROWS,COLS integers"),
        (["--halo=-1,4"], r"--halo '-1,4': values must be at least 0"),
    ],
)
def test_malformed_tiling_is_a_usage_error(capsys, files, args, message):
    with pytest.raises(SystemExit) as info:
        main(["embed", str(files[1]), *args])
    assert info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_tiling_a_volume_is_a_clear_error(capsys, tmp_path, files):
    vol = tmp_path / "stack.tif"
    tifffile.imwrite(vol, np.zeros((5, H, W), np.uint8), photometric="minisblack")
    code, _, err = run(capsys, "embed", vol, "--tile", "32,32", *model_args(files))
    assert code == 1 and "Traceback" not in err
    assert re.search(r"^napari-sam: error: .* is a volume .*--tile and --halo apply to 2D", err)


def test_auto_tiling_leaves_small_images_whole(capsys, files, cache):
    code, _, err = run(capsys, "embed", files[1], "--halo", "8,8", *model_args(files))
    assert code == 0, err
    assert "--halo has no effect" in err
    assert stores(cache) == []
