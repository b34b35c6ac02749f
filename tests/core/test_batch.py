"""Batch runs in the core: inputs, output names, the manifest (resuming), the summary."""

from __future__ import annotations

import csv
import hashlib
import json
import os

import pytest

from napari_sam.core.batch import (
    MANIFEST,
    SUMMARY_COLUMNS,
    BatchItem,
    ImageResult,
    Manifest,
    expand_inputs,
    format_summary,
    input_identity,
    model_identity,
    plan_outputs,
    write_summary,
)
from napari_sam.core.errors import CheckpointError, NapariSamError
from napari_sam.core.registry import MODELS


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_outputs_are_named_after_the_input(tmp_path):
    dicom = tmp_path / "series"
    dicom.mkdir()
    inputs = [
        tmp_path / "a.tif", tmp_path / "b.PNG", tmp_path / "scan.nii.gz", tmp_path / "ct.nhdr",
        tmp_path / "mr.mhd", tmp_path / "x.nrrd", tmp_path / "one.dcm", dicom,
    ]  # fmt: skip
    items = plan_outputs(inputs, table=True)
    assert [i.labels for i in items] == [
        "a_labels.tif", "b_labels.tif", "scan_labels.nii.gz", "ct_labels.nrrd",
        "mr_labels.mha", "x_labels.nrrd", "one_labels.nii.gz", "series_labels.nii.gz",
    ]  # fmt: skip
    assert items[0].table == "a_objects.csv"
    assert items[0].outputs == ("a_labels.tif", "a_objects.csv")
    assert plan_outputs(inputs[:1], table=False)[0].outputs == ("a_labels.tif",)


@pytest.mark.parametrize(("first", "second"), [("a/x.tif", "b/x.tif"), ("x.tif", "X.png")])
def test_two_inputs_writing_one_output_is_an_error(tmp_path, first, second):
    with pytest.raises(NapariSamError, match=r"x\.tif and .*would both write .*_labels\.tif"):
        plan_outputs([tmp_path / first, tmp_path / second], table=False)


def test_folders_are_expanded_and_the_output_folder_left_out(tmp_path):
    data = tmp_path / "data"
    for name in ("b.tif", "a.png", ".hidden.tif", "notes.txt", "c.nii.gz"):
        touch(data / name)
    touch(data / "sub" / "deep.tif")  # not recursive
    out = data / "results"
    touch(out / "a_labels.tif")
    dicom = tmp_path / "series"
    touch(dicom / "IM0001")  # no image files: a DICOM series, one volume
    extra = touch(tmp_path / "z.tif")
    inputs, notes = expand_inputs([data, extra, data / "b.tif", out, dicom], out)
    assert [p.name for p in inputs] == ["a.png", "b.tif", "c.nii.gz", "z.tif", "series"]
    assert notes == [f"left out 1 input(s) in the output folder {out}: results"]
    inputs, notes = expand_inputs([out / f"{i}_labels.tif" for i in "abcd"], out)
    assert inputs == []
    assert notes == [
        f"left out 4 input(s) in the output folder {out}: a_labels.tif, b_labels.tif, "
        "c_labels.tif ..."
    ]


def test_ome_zarr_folders_are_images(tmp_path):
    data = tmp_path / "data"
    touch(data / "b.ome.zarr" / "zarr.json")
    touch(data / "a.zarr" / ".zgroup")
    touch(data / "c.tif")
    (data / "empty").mkdir()  # neither images nor zarr: not listed
    inputs, _ = expand_inputs([data, data / "b.ome.zarr"], tmp_path / "out")
    assert [p.name for p in inputs] == ["a.zarr", "b.ome.zarr", "c.tif"]
    single, _ = expand_inputs([data / "b.ome.zarr"], tmp_path / "out")  # one image, not a folder
    assert single == [data / "b.ome.zarr"]
    assert [i.labels for i in plan_outputs(inputs, table=False)] == [
        "a_labels.tif",
        "b_labels.tif",
        "c_labels.tif",
    ]


def test_input_identity_follows_size_and_time(tmp_path):
    path = touch(tmp_path / "a.tif", b"1234")
    first = input_identity(path)
    assert first["size"] == 4
    os.utime(path, ns=(first["mtime_ns"] + 10**9, first["mtime_ns"] + 10**9))
    assert input_identity(path) != first
    series = tmp_path / "series"
    touch(series / "IM1", b"ab")
    before = input_identity(series)
    touch(series / "IM1", b"abc")  # a file changed inside: the folder's own time may not
    assert input_identity(series) != before


def test_model_identity(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))  # the record of hashes
    ckpt = touch(tmp_path / "w.pt", b"weights")
    ident = model_identity("auto", ckpt)
    assert ident == {"model": "auto", "checkpoint_sha256": hashlib.sha256(b"weights").hexdigest()}
    assert model_identity("auto", touch(tmp_path / "v.pt", b"other")) != ident
    sha = hashlib.sha256(MODELS["tiny"].bundled_path.read_bytes()).hexdigest()
    assert model_identity("tiny", None) == {"model": "tiny", "sha256": sha}  # bundled
    assert model_identity("vit_b", None) == {"model": "vit_b", **MODELS["vit_b"].hashes}
    assert MODELS["vit_b"].hashes  # published
    assert model_identity("random:vit_b", None) == {"model": "random:vit_b"}
    with pytest.raises(CheckpointError):
        model_identity("vit_q", None)


def test_manifest_up_to_date_only_when_complete_matching_and_present(tmp_path):
    item = BatchItem(tmp_path / "a.tif", "a_labels.tif", "a_objects.csv")
    sig = {"input": "a.tif", "options": {"min_size": 0}}
    manifest = Manifest(tmp_path)
    manifest.start(item, sig)
    touch(tmp_path / "a_labels.tif")
    touch(tmp_path / "a_objects.csv")
    assert not manifest.up_to_date(item, sig)  # started, not finished: a run cut short
    manifest.finish(item, {"objects": 3})
    manifest.save()
    again = Manifest.load(tmp_path)
    assert again.up_to_date(item, sig)
    assert again.entries["a_labels.tif"]["result"] == {"objects": 3}
    assert not again.up_to_date(item, {**sig, "options": {"min_size": 5}})
    assert not again.up_to_date(BatchItem(item.image, item.labels, None), sig)  # other outputs
    (tmp_path / "a_objects.csv").unlink()
    assert not again.up_to_date(item, sig)
    assert not list(tmp_path.glob(".*.part"))  # written by rename, nothing left behind


def test_foreign_outputs_are_those_no_run_recorded(tmp_path):
    ours = BatchItem(tmp_path / "a.tif", "a_labels.tif", None)
    theirs = BatchItem(tmp_path / "b.tif", "b_labels.tif", None)
    manifest = Manifest(tmp_path)
    manifest.start(ours, {})
    touch(tmp_path / "a_labels.tif")
    touch(tmp_path / "b_labels.tif")
    assert manifest.foreign_outputs(ours) == []
    assert manifest.foreign_outputs(theirs) == ["b_labels.tif"]


@pytest.mark.parametrize("text", ["{", '{"format": 99, "outputs": {}}', "[1]"])
def test_a_damaged_manifest_is_reported(tmp_path, text):
    (tmp_path / MANIFEST).write_text(text)
    with pytest.raises(NapariSamError, match=r"cannot read .*napari-sam-manifest\.json.*--force"):
        Manifest.load(tmp_path)
    assert Manifest.load(tmp_path, ignore_damaged=True).entries == {}


def test_manifest_save_can_be_throttled(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.save(at_most_every=60)
    manifest.entries["x"] = {"outputs": []}
    manifest.save(at_most_every=60)  # too soon: not written
    assert json.loads((tmp_path / MANIFEST).read_text())["outputs"] == {}
    manifest.save()
    assert "x" in json.loads((tmp_path / MANIFEST).read_text())["outputs"]


def test_summary_csv_and_table(tmp_path):
    results = [
        ImageResult(tmp_path / "a.tif", "a_labels.tif", "done", 12, 1.234),
        ImageResult(tmp_path / "b.tif", "b_labels.tif", "skipped", 7),
        ImageResult(
            tmp_path / "c.tif", "c_labels.tif", "failed", error="Cannot read " + "x" * 200
        ),
    ]
    path = tmp_path / "summary.csv"
    write_summary(path, results)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == SUMMARY_COLUMNS
    assert rows[1] == [str(tmp_path / "a.tif"), "a_labels.tif", "12", "1.23", "done", ""]
    assert rows[2][2:5] == ["7", "", "skipped"]
    assert rows[3][4] == "failed" and rows[3][5].endswith("x" * 200)  # the CSV keeps it all
    text = format_summary(results, width=80).splitlines()
    assert text[0].split() == ["image", "objects", "seconds", "status", "error"]
    assert text[1].split() == ["a.tif", "12", "1.23", "done"]
    assert all(len(line) <= 80 for line in text) and text[3].endswith("...")
