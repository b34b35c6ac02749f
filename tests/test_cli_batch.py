"""Many images: ``napari-sam auto IMAGE [IMAGE ...] -o OUTDIR`` and ``segment ... --prompts``,
resumable, with a summary; on this process, on a local Dask cluster, or on an existing one.
The bundled tiny model, synthetic images of cells."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil

import numpy as np
import pytest
import tifffile
from cli_helpers import run

from napari_sam import _cli_batch
from napari_sam.cli import main
from napari_sam.core.batch import MANIFEST, SUMMARY
from napari_sam.core.synthetic import make_cells

TINY = ["--model", "tiny", "--device", "cpu", "--precision", "fp32"]
LOOSE = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
BOXES = {"img0.tif": (10, 12, 60, 70), "img1.tif": (5, 40, 50, 100), "img2.tif": (30, 20, 90, 80)}


def cells(seed: int) -> np.ndarray:
    s = make_cells((96, 128), seed=seed, polarity="bright", colour=False, radius_range=(8, 14))
    return (s.image * 255).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of three small grey TIFFs."""
    folder = tmp_path_factory.mktemp("batch") / "images"
    folder.mkdir()
    for i in range(3):
        tifffile.imwrite(folder / f"img{i}.tif", cells(i))
    return folder


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory):
    """One embeddings folder for the module: the same images are not embedded again."""
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def copies(images, tmp_path):
    """The images in a folder of this test's own (to change them)."""
    return shutil.copytree(images, tmp_path / "images")


def auto(capsys, embeddings, *argv):
    return run(capsys, "auto", *argv, *TINY, *LOOSE, "--embeddings", embeddings)


def summary(folder):
    with open(folder / SUMMARY, newline="") as f:
        return {os.path.basename(r["image"]): r for r in csv.DictReader(f)}


def manifest(folder):
    return json.loads((folder / MANIFEST).read_text())["outputs"]


def mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def prompt_csv(path, boxes=BOXES):
    lines = ["image,kind,row0,col0,row1,col1,row,col,label"]
    lines += [f"{name},box,{','.join(map(str, b))},,," for name, b in boxes.items()]
    lines.append("img0.tif,point,,,,,30,40,1")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_auto_on_a_folder_writes_labels_tables_and_a_summary(capsys, images, embeddings, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = auto(capsys, embeddings, images, "-o", out)
    assert code == 0, err
    assert "Traceback" not in err
    rows = summary(out)
    assert list(rows) == ["img0.tif", "img1.tif", "img2.tif"]
    for i in range(3):
        row = rows[f"img{i}.tif"]
        labels = tifffile.imread(out / f"img{i}_labels.tif")
        assert labels.shape == (96, 128) and labels.dtype == np.int32
        n = len(np.setdiff1d(np.unique(labels), [0]))
        assert n > 0 and row["objects"] == str(n)
        assert row["status"] == "done" and row["error"] == "" and float(row["seconds"]) > 0
        assert row["labels"] == f"img{i}_labels.tif"
        with open(out / f"img{i}_objects.csv", newline="") as f:
            table = list(csv.DictReader(f))
        assert sorted(int(r["label"]) for r in table) == sorted(np.setdiff1d(labels, [0]))
    assert re.search(r"img1\.tif\s+\d+\s+[\d.]+\s+done", stdout)
    assert "3 done, 0 skipped, 0 failed" in stdout
    entries = manifest(out)
    assert sorted(entries) == ["img0_labels.tif", "img1_labels.tif", "img2_labels.tif"]
    assert all(
        e["complete"] and e["result"]["model_id"].startswith("tiny-") for e in entries.values()
    )
    assert not list(out.glob(".*"))  # no temporary files left

    # Each image is what the single-image form writes.
    single = tmp_path / "single.tif"
    code, _, err = auto(
        capsys, embeddings, images / "img1.tif", "-o", single, "--table", tmp_path / "t.csv"
    )
    assert code == 0, err
    np.testing.assert_array_equal(
        tifffile.imread(single), tifffile.imread(out / "img1_labels.tif")
    )
    assert (tmp_path / "t.csv").read_bytes() == (out / "img1_objects.csv").read_bytes()


def test_resume_skips_what_is_up_to_date_and_redoes_what_changed(
    capsys, copies, embeddings, tmp_path, monkeypatch
):
    calls = []
    real = _cli_batch.run_job
    monkeypatch.setattr(
        _cli_batch, "run_job", lambda job, *a: calls.append(job.image) or real(job, *a)
    )
    out = tmp_path / "out"
    assert auto(capsys, embeddings, copies, "-o", out)[0] == 0
    assert len(calls) == 3
    before = mtimes(out)

    calls.clear()
    code, stdout, err = auto(capsys, embeddings, copies, "-o", out)
    assert code == 0 and calls == []
    assert "3 images up to date (skipped)" in err and "0 done, 3 skipped" in stdout
    assert {r["status"] for r in summary(out).values()} == {"skipped"}
    assert summary(out)["img0.tif"]["objects"] == str(
        manifest(out)["img0_labels.tif"]["result"]["objects"]
    )
    after = mtimes(out)
    assert all(after[name] == t for name, t in before.items() if name.startswith("img"))

    tifffile.imwrite(copies / "img1.tif", cells(7))  # a changed input is done again
    calls.clear()
    assert auto(capsys, embeddings, copies, "-o", out)[0] == 0
    assert [os.path.basename(c) for c in calls] == ["img1.tif"]
    rows = summary(out)
    assert [rows[f"img{i}.tif"]["status"] for i in range(3)] == ["skipped", "done", "skipped"]
    again = mtimes(out)
    assert again["img1_labels.tif"] != before["img1_labels.tif"]
    assert again["img0_labels.tif"] == before["img0_labels.tif"]

    calls.clear()  # other options: every output is made again
    assert auto(capsys, embeddings, copies, "-o", out, "--min-size", "5")[0] == 0
    assert len(calls) == 3

    entries = json.loads((out / MANIFEST).read_text())
    entries["outputs"]["img2_labels.tif"]["complete"] = False  # as a run cut short leaves it
    (out / MANIFEST).write_text(json.dumps(entries))
    (out / "img0_objects.csv").unlink()  # an output gone
    calls.clear()
    assert auto(capsys, embeddings, copies, "-o", out, "--min-size", "5")[0] == 0
    assert sorted(os.path.basename(c) for c in calls) == ["img0.tif", "img2.tif"]


def test_an_interrupted_run_is_resumed_where_it_stopped(
    capsys, copies, embeddings, tmp_path, monkeypatch
):
    real = _cli_batch.run_job

    def ctrl_c_at_the_second(job, *args):
        if job.index == 1:
            raise KeyboardInterrupt
        return real(job, *args)

    monkeypatch.setattr(_cli_batch, "run_job", ctrl_c_at_the_second)
    out = tmp_path / "out"
    code, _, err = auto(capsys, embeddings, copies, "-o", out)
    assert code == 130 and err.strip().endswith("napari-sam: interrupted")
    rows = summary(out)
    assert [(r["status"], r["error"]) for r in rows.values()] == [
        ("done", ""), ("not run", "interrupted"), ("not run", "interrupted"),
    ]  # fmt: skip
    entries = manifest(out)
    assert [entries[f"img{i}_labels.tif"]["complete"] for i in range(3)] == [True, False, False]

    calls = []
    monkeypatch.setattr(
        _cli_batch, "run_job", lambda job, *a: calls.append(job.image) or real(job, *a)
    )
    code, _, err = auto(capsys, embeddings, copies, "-o", out)
    assert code == 0, err
    assert [os.path.basename(c) for c in calls] == ["img1.tif", "img2.tif"]


def test_volumes_keep_their_format_and_geometry(capsys, images, embeddings, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    scan = sitk.GetImageFromArray(np.stack([cells(3), cells(4)]))
    scan.SetSpacing((0.5, 0.5, 2.0))
    sitk.WriteImage(scan, str(tmp_path / "scan.nii.gz"))
    prompts = tmp_path / "p.csv"
    prompts.write_text(
        "image,kind,z,row0,col0,row1,col1\nscan.nii.gz,box,1,10,12,60,70\n"
        "img0.tif,box,,10,12,60,70\n"
    )
    out = tmp_path / "out"
    code, _, err = run(
        capsys, "segment", tmp_path / "scan.nii.gz", images / "img0.tif", "-o", out,
        "--prompts", prompts, *TINY, "--embeddings", embeddings,
    )  # fmt: skip
    assert code == 0, err
    labels = sitk.ReadImage(str(out / "scan_labels.nii.gz"))
    assert labels.GetSpacing() == (0.5, 0.5, 2.0) and labels.GetSize() == (128, 96, 2)
    array = sitk.GetArrayFromImage(labels)
    assert array[0].max() == 0 and array[1].max() == 1  # only the prompted slice
    assert summary(out)["scan.nii.gz"]["objects"] == "1"
    assert tifffile.imread(out / "img0_labels.tif").max() == 1


def test_a_failing_image_gets_its_row_and_a_nonzero_exit(capsys, copies, embeddings, tmp_path):
    (copies / "broken.tif").write_bytes(b"II*\x00 not really a TIFF")
    out = tmp_path / "out"
    code, stdout, err = auto(capsys, embeddings, copies, "-o", out)
    assert code == 1
    assert "Traceback" not in stdout + err
    rows = summary(out)
    assert rows["broken.tif"]["status"] == "failed"
    assert re.search(r"Cannot read image .*broken\.tif", rows["broken.tif"]["error"])
    assert rows["broken.tif"]["objects"] == "" and not (out / "broken_labels.tif").exists()
    assert [rows[f"img{i}.tif"]["status"] for i in range(3)] == ["done"] * 3
    last = err.strip().splitlines()[-1]
    assert last == f"napari-sam: error: 1 of 4 images failed (broken.tif); see {out / SUMMARY}"
    assert (
        "broken_labels.tif" not in manifest(out)
        or not manifest(out)["broken_labels.tif"]["complete"]
    )


def test_segment_with_a_prompt_file(capsys, images, embeddings, tmp_path):
    prompts = prompt_csv(tmp_path / "prompts.csv")
    out = tmp_path / "out"
    argv = [
        "segment",
        *[images / f"img{i}.tif" for i in range(3)],
        *TINY,
        "--embeddings",
        embeddings,
    ]
    code, _, err = run(capsys, *argv, "-o", out, "--prompts", prompts)
    assert code == 0, err
    assert [r["objects"] for r in summary(out).values()] == ["1", "1", "1"]
    assert not list(out.glob("*_objects.csv"))
    # The same as the single-image form with the same prompts.
    single = tmp_path / "one.tif"
    box = ",".join(map(str, BOXES["img0.tif"]))
    code, _, err = run(
        capsys, *argv[:2], *argv[4:], "--box", box, "--point", "30,40", "-o", single
    )
    assert code == 0, err
    np.testing.assert_array_equal(
        tifffile.imread(single), tifffile.imread(out / "img0_labels.tif")
    )

    # JSON with the same prompts: the same files.
    data = {name: {"boxes": [list(b)]} for name, b in BOXES.items()}
    data["img0.tif"]["points"] = [[30, 40]]
    (tmp_path / "prompts.json").write_text(json.dumps(data))
    code, _, err = run(
        capsys, *argv, "-o", tmp_path / "json", "--prompts", tmp_path / "prompts.json"
    )
    assert code == 0, err
    for i in range(3):
        name = f"img{i}_labels.tif"
        assert (tmp_path / "json" / name).read_bytes() == (out / name).read_bytes()


def test_segment_prompt_problems(capsys, images, embeddings, tmp_path):
    argv = ["segment", images, *TINY, "--embeddings", embeddings]
    bad = tmp_path / "bad.csv"
    bad.write_text("image,kind,row0,col0,row1,col1\nimg0.tif,box,1,2,three,4\n")
    code, out, err = run(capsys, *argv, "-o", tmp_path / "a", "--prompts", bad)
    assert code == 1 and out == ""
    assert err.strip() == f"napari-sam: error: {bad} line 2, field 'row1': 'three' is not a number"
    assert not (tmp_path / "a").exists()  # checked before the output folder is made

    # img2 has no prompts, img1's have a slice (z) but it is a 2D image, x.tif is not in the batch
    partial = tmp_path / "partial.csv"
    partial.write_text(
        "image,kind,z,row0,col0,row1,col1\nimg0.tif,box,,1,2,30,40\nimg1.tif,box,0,1,2,30,40\n"
        "x.tif,box,,1,2,3,4\n"
    )
    code, _, err = run(capsys, *argv, "-o", tmp_path / "b", "--prompts", partial)
    assert code == 1
    assert f"note: {partial} has prompts for 1 image not in this batch: x.tif" in err
    rows = summary(tmp_path / "b")
    assert rows["img0.tif"]["status"] == "done"
    assert rows["img1.tif"]["error"].startswith(f"{partial} line 3: these prompts have a z, but")
    assert rows["img2.tif"]["error"] == f"no prompts for img2.tif in {partial}"
    assert "2 of 3 images failed (img1.tif, img2.tif)" in err


def test_files_no_batch_wrote_are_kept_unless_forced(capsys, images, embeddings, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mine = np.full((96, 128), 7, np.int32)
    tifffile.imwrite(out / "img0_labels.tif", mine)  # drawn by hand, say
    code, _, err = auto(capsys, embeddings, images, "-o", out)
    assert code == 1, err
    row = summary(out)["img0.tif"]
    assert row["status"] == "failed"
    assert row["error"] == (
        f"{out / 'img0_labels.tif'} exists and no batch run wrote it; move it away or use --force "
        "to replace it"
    )
    np.testing.assert_array_equal(tifffile.imread(out / "img0_labels.tif"), mine)
    code, _, err = auto(capsys, embeddings, images, "-o", out, "--force")
    assert code == 0, err
    assert not (tifffile.imread(out / "img0_labels.tif") == 7).all()
    # --force also redoes the outputs that are up to date (img1, img2)
    assert [r["status"] for r in summary(out).values()] == ["done"] * 3


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["auto", "{a}", "{b}", "-o", "{tmp}/o", "--table", "t.csv"], "--table names one file"),
        (["segment", "{a}", "{b}", "-o", "{tmp}/o", "--box", "1,2,3,4"], "needs --prompts FILE"),
        (
            ["segment", "{a}", "-o", "{tmp}/o", "--prompts", "{tmp}/p.csv", "--box", "1,2,3,4"],
            "either in --prompts FILE or as --box/--point",
        ),
        (
            ["auto", "{a}", "{b}", "-o", "{tmp}/o", "--workers", "2", "--dask-scheduler", "x:1"],
            "either --workers N",
        ),
        (["auto", "{a}", "{b}", "-o", "{a}"], "a batch writes into a folder, and -o .* is a file"),
        (["auto", "{a}", "{b}", "-o", "{tmp}/labels.tif"], "not a labels file: -o .*labels.tif"),
        (["auto", "{a}", "{b}", "-o", "{tmp}/no/o"], "cannot make the output folder"),
        (["auto", "{tmp}/o", "-o", "{tmp}/o"], "no images to run"),  # the output folder only
    ],
)
def test_batch_usage_errors_come_before_any_work(capsys, images, tmp_path, argv, match):
    (tmp_path / "p.csv").write_text("image,kind,row,col\nimg0.tif,point,1,2\n")
    values = {"a": images / "img0.tif", "b": images / "img1.tif", "tmp": tmp_path}
    argv = [a.format(**values) for a in argv]
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x_labels.tif").write_bytes(b"")
    code, out, err = run(capsys, *argv, *TINY)
    assert code == 1 and out == "", err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("napari-sam: error: ") and re.search(match, lines[-1]), err
    assert "Traceback" not in err


def test_workers_must_be_a_positive_number(capsys, images, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["auto", str(images), "-o", str(tmp_path / "o"), "--workers", "0"])
    assert info.value.code == 2
    assert "--workers '0': expected a whole number >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_local_cluster_writes_what_the_serial_run_writes(capsys, images, tmp_path, monkeypatch):
    """--workers 2: a scheduler and two worker processes on 127.0.0.1; bit-equal outputs."""
    pytest.importorskip("distributed")
    # As a nanny started earlier in this process leaves it: our workers still run without.
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    argv = ["auto", images, *TINY, *LOOSE, "--no-embedding-cache"]
    serial, cluster = tmp_path / "serial", tmp_path / "cluster"
    code, _, err = run(capsys, *argv, "-o", serial)
    assert code == 0, err
    code, _, err = run(capsys, *argv, "-o", cluster, "--workers", "2")
    assert code == 0, err
    assert "Traceback" not in err
    for i in range(3):
        for name in (f"img{i}_labels.tif", f"img{i}_objects.csv"):
            assert (cluster / name).read_bytes() == (serial / name).read_bytes(), name
    made_by = {e["result"]["process"] for e in manifest(cluster).values()}
    assert made_by and f"pid {os.getpid()}" not in " ".join(made_by)  # by the workers
    # Our workers run without Dask's MALLOC_TRIM_THRESHOLD_ (torch 1.6x slower with it).
    assert "MALLOC_TRIM_THRESHOLD_" not in err
    assert [r["status"] for r in summary(cluster).values()] == ["done"] * 3


def test_existing_scheduler_by_address(capsys, images, tmp_path, monkeypatch):
    """--dask-scheduler ADDRESS: a cluster started elsewhere (here, in this process)."""
    distributed = pytest.importorskip("distributed")
    # Its worker (this process) has Dask's glibc setting: the run says so once.
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    prompts = prompt_csv(tmp_path / "p.csv")
    argv = ["segment", images, *TINY, "--no-embedding-cache", "--prompts", prompts]
    code, _, err = run(capsys, *argv, "-o", tmp_path / "serial")
    assert code == 0, err
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        host="127.0.0.1",
        protocol="tcp://",
        dashboard_address=None,
    ) as cluster:
        code, _, err = run(
            capsys, *argv, "-o", tmp_path / "remote", "--dask-scheduler", cluster.scheduler_address
        )
    assert code == 0, err
    assert err.count("note: 1 of 1 Dask workers run with MALLOC_TRIM_THRESHOLD_=65536") == 1
    for i in range(3):
        name = f"img{i}_labels.tif"
        assert (tmp_path / "remote" / name).read_bytes() == (
            tmp_path / "serial" / name
        ).read_bytes()


def test_an_unreachable_scheduler_is_one_error_line(capsys, images, tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr(_cli_batch, "_CONNECT_TIMEOUT", "1s")
    code, _, err = run(
        capsys,
        "auto",
        images,
        "-o",
        tmp_path / "o",
        *TINY,
        "--dask-scheduler",
        "tcp://127.0.0.1:9",
    )
    assert code == 1
    assert re.fullmatch(
        r"napari-sam: error: cannot connect to the Dask scheduler at tcp://127\.0\.0\.1:9: .+",
        err.strip().splitlines()[-1],
    )


def test_a_model_that_cannot_load_is_tried_once(capsys, images, tmp_path, monkeypatch):
    from napari_sam import cli

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    loads = []
    real = cli._engine
    monkeypatch.setattr(cli, "_engine", lambda args: loads.append(args.image) or real(args))
    code, _, err = run(capsys, "auto", images, "-o", tmp_path / "o", "--checkpoint", bad)
    assert code == 1 and len(loads) == 1
    errors = {r["error"] for r in summary(tmp_path / "o").values()}
    assert len(errors) == 1 and str(bad) in errors.pop()
    assert "3 of 3 images failed" in err and "Traceback" not in err
