"""``napari-sam replay SESSION -o LABELS [--image PATH]``, in-process, on a small checkpoint."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tifffile
from cli_helpers import run

from napari_sam.cli import main
from napari_sam.core.checkpoints import load_model, save_checkpoint
from napari_sam.core.commits import write_commit
from napari_sam.core.engine import SamEngine
from napari_sam.core.normalize import Normalization
from napari_sam.core.prompts import make_prompts
from napari_sam.core.session_record import (
    CommitRecord,
    ImageIdentity,
    ModelRecord,
    PlaneRecord,
    SessionRecord,
)

H, W = 64, 96
PLANE = PlaneRecord((0, 1), (None, None))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, small_model, small_arch, make_image):
    """A TIFF, a checkpoint, and a session of two commits on them with its labels."""
    folder = tmp_path_factory.mktemp("replay")
    ckpt = folder / "small.pt"
    save_checkpoint(small_model.sam, small_arch, ckpt)
    image = make_image((H, W))[..., 0].astype(np.uint16) * 100
    tif = folder / "cells.tif"
    tifffile.imwrite(tif, image)
    engine = SamEngine(load_model("auto", checkpoint=ckpt, device="cpu", precision="fp32"))
    record = SessionRecord(ImageIdentity.from_array(image, source=tif))
    labels = np.zeros((H, W), np.int32)
    norm = Normalization(method="percentile")
    emb = engine.embed(norm.apply(image))
    next_id = 1
    for call, overwrite in (
        (make_prompts(boxes=[[2, 2, 28, 40], [36, 50, 62, 94]]), False),
        (make_prompts([[20, 70]]), True),
    ):
        pred = engine.predict(emb, call)
        picks = [int(pred.best[b]) for b in range(pred.n_objects)]
        masks = [pred.mask(b, k) for b, k in enumerate(picks)]
        ids = list(range(next_id, next_id + len(masks)))
        next_id += len(masks)
        pixels = write_commit(labels, masks, ids, overwrite=overwrite)
        record.append(
            CommitRecord.build(
                target="SAM labels",
                plane=PLANE,
                overwrite=overwrite,
                model=ModelRecord.from_model(engine.model),
                normalization=norm,
                prompts=[call],
                masks=masks,
                candidates=picks,
                scores=[pred.score(b, k) for b, k in enumerate(picks)],
                sources=[f"box {i + 1}" for i in range(len(masks))],
                labels=ids,
                pixels=pixels.tolist(),
            )
        )
    session = record.save(folder / "session.json")
    return session, tif, ckpt, image, labels


def edited(recorded, tmp_path, edit):
    data = json.loads(recorded[0].read_text())
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


def assert_one_error_line(code, out, err, match):
    assert code == 1
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("napari-sam: error: ")
    assert re.search(match, lines[0]), lines[0]


def test_replay_writes_identical_labels(capsys, tmp_path, recorded):
    session, _, _, _, labels = recorded
    out_path = tmp_path / "labels.tif"
    code, out, err = run(capsys, "replay", session, "-o", out_path)  # image from the session
    assert code == 0, err
    np.testing.assert_array_equal(tifffile.imread(out_path), labels)
    lines = out.strip().splitlines()
    assert lines[:3] == [
        "entry 1, label 1 (box 1): identical",
        "entry 1, label 2 (box 2): identical",
        "entry 2, label 3 (box 1): identical",
    ]
    assert lines[-1] == (
        f"wrote {out_path} ('SAM labels': 3 objects: 3 identical; identical to the session)"
    )
    assert err == ""


def test_replay_with_image_option_and_npy_output(capsys, tmp_path, recorded):
    session, _, _, image, labels = recorded
    copy = tmp_path / "copy.npy"
    np.save(copy, image)  # another file with the same pixels: the same image
    out_path = tmp_path / "labels.npy"
    code, _, err = run(capsys, "replay", session, "--image", copy, "-o", out_path)
    assert code == 0, err
    np.testing.assert_array_equal(np.load(out_path), labels)


def test_a_changed_prompt_reports_iou(capsys, tmp_path, recorded):
    def move(data):
        data["entries"][1]["calls"][0]["points"] = [[50, 10]]

    code, out, err = run(
        capsys, "replay", edited(recorded, tmp_path, move), "-o", tmp_path / "l.tif"
    )
    assert code == 0, err
    assert re.search(
        r"^entry 2, label 3 \(box 1\): IoU \d\.\d{4} with the recorded mask", out, re.M
    )
    assert "1 differs (lowest IoU" in out and out.strip().endswith("not identical)")


def test_another_image_needs_permission(capsys, tmp_path, recorded):
    session, _, _, image, _ = recorded
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, image + 1)
    out_path = tmp_path / "l.tif"
    code, out, err = run(capsys, "replay", session, "--image", other, "-o", out_path)
    assert_one_error_line(code, out, err, r"is not the session's image.*--allow-other-image")
    assert not out_path.exists()
    code, out, err = run(
        capsys, "replay", session, "--image", other, "--allow-other-image", "-o", out_path
    )
    assert code == 0, err
    assert err.startswith("note: replayed on another image")
    assert out_path.exists()


def test_a_moved_checkpoint_can_be_given(capsys, tmp_path, recorded):
    ckpt = recorded[2]

    def move(data):
        for entry in data["entries"]:
            entry["model"]["checkpoint"] = str(tmp_path / "moved.pt")

    session = edited(recorded, tmp_path, move)
    code, out, err = run(capsys, "replay", session, "-o", tmp_path / "l.tif")
    assert_one_error_line(code, out, err, r"moved\.pt .* is not there.*--checkpoint PATH")
    code, out, err = run(capsys, "replay", session, "--checkpoint", ckpt, "-o", tmp_path / "l.tif")
    assert code == 0, err
    assert "identical to the session" in out


def test_several_targets_need_one_chosen(capsys, tmp_path, recorded):
    def split(data):
        data["entries"][1]["target"] = "nuclei"

    session = edited(recorded, tmp_path, split)
    code, out, err = run(capsys, "replay", session, "-o", tmp_path / "l.tif")
    assert_one_error_line(code, out, err, r"2 labels layers \('SAM labels', 'nuclei'\).*--target")
    code, out, err = run(capsys, "replay", session, "--target", "nuclei", "-o", tmp_path / "l.tif")
    assert code == 0, err
    assert np.unique(tifffile.imread(tmp_path / "l.tif")).tolist() == [0, 3]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("not json", r"is not a napari-sam session file"),
        ('{"format": "napari-sam-session", "version": 7}', r"newer napari-sam.*update"),
        ('{"format": "napari-sam-session", "version": 1}', r"is damaged: image is missing"),
    ],
)
def test_bad_session_files(capsys, tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    code, out, err = run(capsys, "replay", path, "-o", tmp_path / "l.tif")
    assert_one_error_line(code, out, err, match)


def test_missing_session_and_image(capsys, tmp_path, recorded):
    code, out, err = run(capsys, "replay", tmp_path / "nope.json", "-o", tmp_path / "l.tif")
    assert_one_error_line(code, out, err, r"session file .*nope\.json not found")

    def forget(data):
        data["image"]["source"] = None

    session = edited(recorded, tmp_path, forget)
    code, out, err = run(capsys, "replay", session, "-o", tmp_path / "l.tif")
    assert_one_error_line(code, out, err, r"does not say which file its image came from.*--image")


def test_output_is_checked_before_any_work(capsys, tmp_path, recorded):
    code, out, err = run(capsys, "replay", recorded[0], "-o", tmp_path / "no" / "l.tif")
    assert_one_error_line(code, out, err, r"folder .* does not exist")
    code, out, err = run(capsys, "replay", recorded[0], "-o", tmp_path / "l.jpg")
    assert_one_error_line(code, out, err, r"unsupported file type '\.jpg'")


def test_replay_usage(capsys):
    with pytest.raises(SystemExit) as info:
        main(["replay", "s.json"])
    assert info.value.code == 2
    assert "-o/--output" in capsys.readouterr().err
