"""The ``napari-sam`` command line, run in-process on a small random-weight checkpoint."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import tifffile
from cli_helpers import model_args, run

from napari_sam import __version__
from napari_sam.cli import main
from napari_sam.core.checkpoints import save_checkpoint
from napari_sam.core.embedding import compute_embedding
from napari_sam.core.engine import SamEngine

H, W = 64, 96
TABLE_HEADER = "label,area,bbox_y0,bbox_x0,bbox_y1,bbox_x1,predicted_iou,stability_score"
BOXES = [(2, 2, 28, 40), (36, 50, 62, 94)]
POINT = (20, 70)


@pytest.fixture(scope="module")
def files(tmp_path_factory, small_model, small_arch, make_image):
    """A checkpoint of the small model and a grey uint8 TIFF of H x W."""
    folder = tmp_path_factory.mktemp("cli")
    ckpt = folder / "small.pt"
    save_checkpoint(small_model.sam, small_arch, ckpt, meta={"purpose": "tests"})
    image = make_image((H, W))[..., 0]
    img = folder / "cells.tif"
    tifffile.imwrite(img, image)
    return ckpt, img, image


@pytest.fixture(scope="module")
def engine(small_model, files):
    """The same network in-process, to know what the CLI must write."""
    _, _, image = files
    rgb = np.repeat(image[..., None], 3, axis=2)
    eng = SamEngine(small_model)
    eng.cache.put(compute_embedding(small_model, rgb))
    return eng, rgb


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(folder))
    monkeypatch.delenv("NAPARI_SAM_BASE_URL", raising=False)

    return folder


def assert_one_error_line(code, out, err, match):
    assert code == 1
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("napari-sam: error: ")
    assert re.search(match, lines[0]), lines[0]


def stored_embeddings(cache):
    folder = cache / "embeddings"
    return sorted(folder.rglob("*.npz")) if folder.exists() else []


# --------------------------------------------------------------------------------------------
# Successful runs
# --------------------------------------------------------------------------------------------


def test_segment_boxes_and_point(capsys, tmp_path, files, engine):
    out_path = tmp_path / "two.tif"
    box_args = [a for b in BOXES for a in ("--box", ",".join(map(str, b)))]
    code, out, err = run(
        capsys, "segment", files[1], "--point", "20,70", *box_args, "-o", out_path,
        *model_args(files),
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == f"wrote {out_path} (2 objects)"
    assert "embedding (" in err and "computed in" in err
    assert re.search(r"^object 1: \d+ px, predicted IoU -?\d\.\d{3}$", err, re.M)
    assert re.search(r"^object 2: \d+ px", err, re.M)

    labels = tifffile.imread(out_path)
    assert labels.dtype == np.int32
    assert labels.shape == (H, W)
    np.testing.assert_array_equal(np.unique(labels), [0, 1, 2])

    # Exactly what the engine predicts for the same prompts, later boxes on top.
    eng, rgb = engine
    pred = eng.predict(eng.embed(rgb), points=[POINT], boxes=BOXES)
    expected = np.zeros((H, W), np.int32)
    for obj in range(2):
        expected[pred.mask(obj)] = obj + 1
    assert_nearly_equal(labels, expected)


def test_segment_single_point(capsys, tmp_path, files, engine):
    out_path = tmp_path / "one.npy"
    code, out, err = run(
        capsys, "segment", files[1], "--point", "20,70", "--point", "50,10,0", "-o", out_path,
        *model_args(files),
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == f"wrote {out_path} (1 object)"
    labels = np.load(out_path)
    eng, rgb = engine
    pred = eng.predict(eng.embed(rgb), points=[POINT, (50, 10)], point_labels=[1, 0])
    assert_nearly_equal(labels, pred.mask().astype(np.int32))


def assert_nearly_equal(labels: np.ndarray, expected: np.ndarray) -> None:
    """Equal but for float rounding at the mask threshold.

    The CLI loads its own copy of the model (fast modules, automatic precision), the fixture
    engine may differ in those settings; with random weights many logits sit near 0, so a few
    boundary pixels may flip. The fast path's own equivalence is tested in test_fast_path.py.
    """
    assert labels.shape == expected.shape
    assert np.mean(labels != expected) <= 0.005


def test_embed_then_segment_reuses_the_embedding(capsys, tmp_path, files, cache):
    code, out, err = run(capsys, "embed", files[1], *model_args(files))
    assert code == 0, err
    assert "computed in" in err
    stored = stored_embeddings(cache)
    assert len(stored) == 1
    assert out.strip() == f"{files[1]}: embedding stored in {stored[0]}"

    code, out, err = run(
        capsys, "segment", files[1], "--box", "2,2,28,40", "-o", tmp_path / "a.tif",
        *model_args(files),
    )  # fmt: skip
    assert code == 0, err
    assert re.search(r"^embedding \(.+, cpu, (fp32|bf16)\): reused$", err, re.M), err
    assert "computed" not in err
    assert stored_embeddings(cache) == stored


def test_no_embedding_cache(capsys, tmp_path, files, cache):
    assert run(capsys, "embed", files[1], *model_args(files))[0] == 0
    code, _, err = run(
        capsys, "segment", files[1], "--box", "2,2,28,40", "-o", tmp_path / "a.tif",
        "--no-embedding-cache", *model_args(files),
    )  # fmt: skip
    assert code == 0, err
    assert "computed in" in err
    assert "reused" not in err


def test_embeddings_folder_option(capsys, tmp_path, files, cache):
    folder = tmp_path / "my-embeddings"
    code, _, err = run(capsys, "embed", files[1], "--embeddings", folder, *model_args(files))
    assert code == 0, err
    assert len(list(folder.rglob("*.npz"))) == 1
    assert stored_embeddings(cache) == []


def test_precision_and_no_fast_options(capsys, tmp_path, files, cache):
    code, _, err = run(capsys, "embed", files[1], "--precision", "fp32", *model_args(files))
    assert code == 0, err
    assert ", cpu, fp32): computed in" in err
    # A bf16 embedding differs slightly: it is stored beside the float32 one, not over it.
    code, _, err = run(capsys, "embed", files[1], "--precision", "bf16", *model_args(files))
    assert code == 0, err
    assert ", cpu, bf16): computed in" in err
    assert len(stored_embeddings(cache)) == 2
    # The original modules give the same float32 embedding, so it is reused.
    code, _, err = run(
        capsys, "segment", files[1], "--box", "2,2,28,40", "-o", tmp_path / "a.tif",
        "--precision", "fp32", "--no-fast", *model_args(files),
    )  # fmt: skip
    assert code == 0, err
    assert ", cpu, fp32): reused" in err


def test_fp16_on_cpu_is_one_clear_error(capsys, files):
    code, out, err = run(capsys, "embed", files[1], "--precision", "fp16", *model_args(files))
    assert_one_error_line(code, out, err, "fp16")


def test_auto_writes_labels_and_table(capsys, tmp_path, files):
    out_path = tmp_path / "auto.tif"
    table_path = tmp_path / "auto.csv"
    code, out, err = run(
        capsys, "auto", files[1], "-o", out_path, "--table", table_path,
        "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
        *model_args(files),
    )  # fmt: skip
    assert code == 0, err
    assert "automatic segmentation: done in" in err
    labels = tifffile.imread(out_path)
    assert labels.dtype == np.int32
    assert labels.shape == (H, W)
    n = int(labels.max())
    m = re.fullmatch(rf"wrote {re.escape(str(out_path))} \((\d+) (objects?)\)", out.strip())
    assert m, out
    assert int(m.group(1)) == n
    assert m.group(2) == ("object" if n == 1 else "objects")

    with open(table_path, newline="") as f:
        rows = list(csv.reader(f))
    assert ",".join(rows[0]) == TABLE_HEADER
    assert len(rows) == n + 1
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    for i, row in enumerate(rows[1:], start=1):
        assert int(row[0]) == i
        assert int(row[1]) == areas[i - 1]
        ys, xs = np.nonzero(labels == i)
        assert [int(v) for v in row[2:6]] == [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
        float(row[6]), float(row[7])  # numbers, not reprs like "np.float32(...)"


# --------------------------------------------------------------------------------------------
# Errors: exit status 1, one line, no traceback
# --------------------------------------------------------------------------------------------


@pytest.fixture
def corrupt_checkpoint(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"\x00garbage, not a checkpoint\xff" * 100)
    return path


def test_missing_image(capsys, tmp_path, corrupt_checkpoint):
    # With a corrupt checkpoint too: the image is checked first, before any model is loaded.
    code, out, err = run(
        capsys, "segment", tmp_path / "nope.tif", "--point", "1,1", "-o", tmp_path / "o.tif",
        "--checkpoint", corrupt_checkpoint,
    )  # fmt: skip
    assert_one_error_line(code, out, err, r"nope\.tif.*file not found")


def test_missing_image_for_embed(capsys, tmp_path, files, cache):
    code, out, err = run(capsys, "embed", files[1], tmp_path / "nope.png", *model_args(files))
    assert_one_error_line(code, out, err, r"nope\.png.*file not found")
    assert stored_embeddings(cache) == []  # nothing computed before the check


def test_corrupt_checkpoint(capsys, tmp_path, files, corrupt_checkpoint):
    code, out, err = run(
        capsys, "segment", files[1], "--point", "1,1", "-o", tmp_path / "o.tif",
        "--checkpoint", corrupt_checkpoint,
    )  # fmt: skip
    assert_one_error_line(code, out, err, r"cannot read checkpoint .*corrupt\.pt")
    assert not (tmp_path / "o.tif").exists()


def test_point_outside_image(capsys, tmp_path, files, cache):
    code, out, err = run(
        capsys, "segment", files[1], "--point", f"{H + 5},3", "-o", tmp_path / "o.tif",
        *model_args(files),
    )  # fmt: skip
    assert_one_error_line(code, out, err, rf"point \({H + 5}\.0, 3\.0\) lies outside the {H}x{W}")
    assert stored_embeddings(cache) == []


def test_box_missing_image(capsys, tmp_path, files):
    code, out, err = run(
        capsys, "segment", files[1], "--box", "200,200,300,300", "-o", tmp_path / "o.tif",
        *model_args(files),
    )  # fmt: skip
    assert_one_error_line(code, out, err, "misses the image")


@pytest.mark.parametrize("command", ["segment", "auto"])
def test_missing_output_folder_is_reported_before_any_work(
    capsys, tmp_path, files, cache, corrupt_checkpoint, command
):
    out_path = tmp_path / "no" / "such" / "folder" / "labels.tif"
    extra = ["--point", "20,70"] if command == "segment" else []
    # The corrupt checkpoint proves that the output is checked before the model is loaded.
    code, out, err = run(
        capsys, command, files[1], *extra, "-o", out_path, "--checkpoint", corrupt_checkpoint
    )
    assert_one_error_line(code, out, err, r"labels\.tif: folder .*folder does not exist")
    # and with a valid model: still nothing computed
    code, out, err = run(capsys, command, files[1], *extra, "-o", out_path, *model_args(files))
    assert_one_error_line(code, out, err, "does not exist")
    assert "embedding" not in err
    assert stored_embeddings(cache) == []
    assert not out_path.parent.exists()


def test_missing_table_folder(capsys, tmp_path, files, corrupt_checkpoint):
    code, out, err = run(
        capsys, "auto", files[1], "-o", tmp_path / "l.tif", "--table", tmp_path / "x" / "t.csv",
        "--checkpoint", corrupt_checkpoint,
    )  # fmt: skip
    assert_one_error_line(code, out, err, r"cannot write table .*t\.csv: folder .* does not exist")


@pytest.mark.parametrize("name", ["labels.jpg", "labels", "labels.TIFF.bak"])
def test_unsupported_output_type(capsys, tmp_path, files, corrupt_checkpoint, name):
    code, out, err = run(
        capsys, "segment", files[1], "--point", "1,1", "-o", tmp_path / name,
        "--checkpoint", corrupt_checkpoint,
    )  # fmt: skip
    assert_one_error_line(code, out, err, r"unsupported file type .*supported: \.tif")


def test_output_is_a_folder(capsys, tmp_path, files, corrupt_checkpoint):
    (tmp_path / "dir.tif").mkdir()
    code, out, err = run(
        capsys, "segment", files[1], "--point", "1,1", "-o", tmp_path / "dir.tif",
        "--checkpoint", corrupt_checkpoint,
    )  # fmt: skip
    assert_one_error_line(code, out, err, "is a folder")


def test_uppercase_output_suffix_is_fine(capsys, tmp_path, files):
    out_path = tmp_path / "labels.TIF"
    code, _, err = run(
        capsys, "segment", files[1], "--box", "2,2,28,40", "-o", out_path, *model_args(files)
    )
    assert code == 0, err
    assert tifffile.imread(out_path).shape == (H, W)


def test_segment_without_prompts(capsys, tmp_path, files, corrupt_checkpoint):
    code, out, err = run(
        capsys, "segment", files[1], "-o", tmp_path / "o.tif", "--checkpoint", corrupt_checkpoint
    )
    assert_one_error_line(code, out, err, "give at least one --point")


def test_only_negative_points(capsys, tmp_path, files):
    code, out, err = run(
        capsys, "segment", files[1], "--point", "3,3,0", "-o", tmp_path / "o.tif",
        *model_args(files),
    )  # fmt: skip
    assert_one_error_line(code, out, err, "at least one positive point")


# --------------------------------------------------------------------------------------------
# Usage errors (argparse): exit status 2
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required: command"),
        (["segment", "x.tif"], "-o/--output"),
        (["segment", "x.tif", "-o", "o.tif", "--point", "1"], "expected 2 or 3"),
        (["segment", "x.tif", "-o", "o.tif", "--point", "1,a"], "expected numbers"),
        (["segment", "x.tif", "-o", "o.tif", "--point", "1,2,3,5"], "label must be 1"),
        (["segment", "x.tif", "-o", "o.tif", "--box", "1,2,3"], "expected 4 or 5"),
        (["auto", "x.tif", "-o", "o.tif", "--points-per-side", "many"], "invalid int"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_version_in_process(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"napari-sam-kit {__version__}"


def test_console_script_version():
    # Scripts live beside the interpreter in a venv, in Scripts/ of a Windows installation.
    script = shutil.which("napari-sam", path=sysconfig.get_path("scripts"))
    assert script, "the napari-sam console script is not installed"
    done = subprocess.run(
        [script, "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"napari-sam-kit {__version__}"


# --------------------------------------------------------------------------------------------
# napari-sam models; files holding pickled objects
# --------------------------------------------------------------------------------------------


def _table(out: str) -> dict[str, list[str]]:
    lines = out.strip().splitlines()
    assert lines[0].split() == ["name", "domain", "size", "cached", "path"]
    # columns are separated by two or more blanks (domains contain one)
    return {row[0]: row for row in (re.split(r"\s{2,}", line) for line in lines[1:])}


def test_models_lists_every_model_grouped(capsys, cache):
    from napari_sam.core.registry import DOMAINS, MODELS

    code, out, err = run(capsys, "models")
    assert code == 0, err
    rows = _table(out)
    assert sorted(rows) == sorted(MODELS)
    domains = [row[1] for row in rows.values()]
    assert domains == sorted(domains, key=DOMAINS.index)  # grouped, in menu order
    assert rows["vit_b"] == [
        "vit_b", "general", "375 MB", "no", str(cache / "checkpoints" / "sam_vit_b_01ec64.pth")
    ]  # fmt: skip
    assert rows["vit_b_lm"][1:4] == ["light microscopy", "~375 MB", "no"]
    assert rows["vit_t"][1:3] == ["general", "~41 MB"]
    assert rows["tiny"][1] == "test" and rows["tiny"][3] == "bundled"
    assert Path(rows["tiny"][4]).is_file()


def test_models_shows_what_is_downloaded(capsys, cache):
    folder = cache / "checkpoints"
    folder.mkdir(parents=True)
    with open(folder / "sam_vit_b_01ec64.pth", "wb") as f:
        f.truncate(375_042_383)  # the exact size (sparse): counted as downloaded
    (folder / "mobile_sam.pt").write_bytes(b"x")  # size unknown to the registry
    (folder / "sam_vit_h_4b8939.pth").write_bytes(b"x")  # wrong size: a broken download
    rows = _table(run(capsys, "models")[1])
    assert (rows["vit_b"][3], rows["vit_t"][3], rows["vit_h"][3]) == ("yes", "yes", "no")


def test_models_verbose_and_cheap(capsys):
    code, out, _ = run(capsys, "models", "-v")
    assert code == 0
    header = out.splitlines()[0].split()
    assert header[4:6] == ["speed", "description"]
    assert "MobileSAM" in out
    code = (
        "import sys; from napari_sam.cli import main; main(['models'])\n"
        "assert 'torch' not in sys.modules, 'listing models imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_skip_pickled_objects_option(capsys, tmp_path, files, small_model, small_arch, cache):
    import torch

    path = tmp_path / "training.pt"
    torch.save(
        {
            "napari_sam_format": 1,
            "architecture": small_arch.to_dict(),
            "meta": {},
            "state_dict": small_model.sam.state_dict(),
            "log_dir": tmp_path,  # a pathlib object: weights_only refuses it
        },
        path,
    )
    out_path = tmp_path / "one.npy"
    argv = ["segment", files[1], "--point", "20,70", "-o", out_path, "--checkpoint", path]
    code, out, err = run(capsys, *argv, "--device", "cpu")
    assert_one_error_line(code, out, err, r"pickled Python objects .*--skip-pickled-objects")
    assert not out_path.exists()
    code, out, err = run(capsys, *argv, "--device", "cpu", "--skip-pickled-objects")
    assert code == 0, err
    assert out_path.is_file()


@pytest.mark.parametrize(
    ("error", "match"),
    [
        (MemoryError(), "not enough memory"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), "GPU ran out of memory"),
    ],
)
def test_out_of_memory_is_one_line(capsys, monkeypatch, tmp_path, error, match):
    import napari_sam.cli as cli

    def fail(args):
        raise error

    monkeypatch.setattr(cli, "_run", fail)
    code = cli.main(["models"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and match in err, err
    assert "Traceback" not in err
