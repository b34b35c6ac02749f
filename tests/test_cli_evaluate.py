"""``napari-sam evaluate``: the exact output form, its JSON, and its one-line errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tifffile
from cli_helpers import run

from napari_sam.cli import main
from napari_sam.core.clicks import ClickResults, simulate_object
from napari_sam.core.engine import SamEngine
from napari_sam.core.normalize import prepare_image
from napari_sam.core.synthetic import make_cells

SUMMARY = re.compile(
    r"^mIoU@1=(\d\.\d{3}) mIoU@(\d+)=(\d\.\d{3}) NoC@85=(\d+\.\d{2}) NoC@90=(\d+\.\d{2}) "
    r"objects=(\d+)$"
)
TINY = ["--model", "tiny", "--device", "cpu", "--precision", "fp32"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluate")
    s = make_cells((96, 128), seed=31, radius_range=(8, 20), colour=False, n_objects=8)
    tifffile.imwrite(folder / "cells.tif", s.image)
    tifffile.imwrite(folder / "labels.tif", s.labels.astype(np.uint16))
    return folder, s


def test_table_last_line_and_json(capsys, tmp_path, scene):
    folder, s = scene
    out_json = tmp_path / "eval.json"
    code, out, err = run(
        capsys, "evaluate", folder / "cells.tif", folder / "labels.tif", "--clicks", 3,
        "--objects", 4, "--json", out_json, *TINY,
    )  # fmt: skip
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["click", "mIoU", ">=0.85", ">=0.90"]
    assert [line.split()[0] for line in lines[1:4]] == ["1", "2", "3"]
    assert len(lines) == 5
    m = SUMMARY.match(lines[-1])
    assert m, lines[-1]
    assert m.group(2) == "3" and m.group(6) == "4"
    assert "evaluating 4 objects" in err and "refinement off" in err  # the tiny model's default

    report = json.loads(out_json.read_text())
    assert report["clicks"] == 3 and report["box_first"] is False
    assert report["refinement"] is False and report["model"].startswith("tiny-")
    # The table, the last line and the JSON tell the same numbers.
    assert [f"{v:.3f}" for v in report["miou"]] == [line.split()[1] for line in lines[1:4]]
    assert (m.group(1), m.group(3)) == (f"{report['miou'][0]:.3f}", f"{report['miou'][-1]:.3f}")
    ious = np.array([o["ious"] for o in report["objects"]])
    res = ClickResults(ious, [], [])
    assert m.group(4) == f"{res.noc(0.85):.2f}" and m.group(5) == f"{res.noc(0.90):.2f}"
    assert f"{report['noc85']:.2f}" == m.group(4)
    # Every object is a reference label, clicked first at a pixel of its own.
    engine = SamEngine.from_name("tiny", device="cpu", precision="fp32")
    emb = engine.embed(prepare_image(s.image))
    for obj in report["objects"]:
        z, label = obj["object"]
        ref = s.labels == label
        assert z == 0 and ref.sum() >= 20
        r, c, positive = obj["clicks"][0]
        assert positive == 1 and ref[r, c]
        # The same as the core's simulator in-process.
        again = simulate_object(engine, emb, ref, clicks=3)
        np.testing.assert_allclose(obj["ious"], again.ious, atol=1e-6)


def test_a_volume_slice_by_slice_box_first_refining(capsys, tmp_path):
    scenes = [make_cells((64, 80), seed=40 + z, radius_range=(8, 16)) for z in range(3)]
    np.save(tmp_path / "vol.npy", np.stack([s.image for s in scenes]).astype(np.float32))
    labels = np.stack([s.labels for s in scenes]).astype(np.int32)
    np.save(tmp_path / "ref.npy", labels)
    out_json = tmp_path / "v.json"
    code, out, err = run(
        capsys, "evaluate", tmp_path / "vol.npy", tmp_path / "ref.npy", "--clicks", 2,
        "--objects", 3, "--box-first", "--refinement", "on", "--json", out_json, *TINY,
    )  # fmt: skip
    assert code == 0, err
    assert SUMMARY.match(out.strip().splitlines()[-1]).group(6) == "3"
    assert "first a box, refinement on" in err
    report = json.loads(out_json.read_text())
    assert report["box_first"] is True and report["refinement"] is True
    for obj in report["objects"]:
        z, label = obj["object"]
        assert 0 <= z < 3 and (labels[z] == label).sum() >= 20
        assert len(obj["ious"]) == 2 and len(obj["clicks"]) <= 1  # the box is no click


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda lab: lab[:, :-1], r"are 96 x 127, but the image .* is 96 x 128"),
        (lambda lab: lab.astype(np.float32) + 0.5, "float32 values, not integer labels"),
        (lambda lab: np.zeros_like(lab), "no object of at least 20 pixels"),
        (lambda lab: np.stack([lab] * 3, axis=-1).astype(np.uint8), "channels"),
    ],
)
def test_bad_reference_is_one_error_line_before_the_model_loads(
    capsys, tmp_path, scene, make, match
):
    folder, s = scene
    ref = tmp_path / "ref.tif"
    tifffile.imwrite(ref, make(s.labels))
    # A missing checkpoint would be the error if the model were loaded first.
    code, out, err = run(
        capsys, "evaluate", folder / "cells.tif", ref, "--checkpoint", tmp_path / "none.pt"
    )
    assert code == 1 and "Traceback" not in err + out
    (line,) = err.strip().splitlines()
    assert line.startswith("napari-sam: error: ") and re.search(match, line), line


def test_missing_files_and_folders(capsys, tmp_path, scene):
    folder, _ = scene
    image, ref = folder / "cells.tif", folder / "labels.tif"
    for argv, match in [
        ((image, tmp_path / "nope.tif"), "nope.tif"),
        ((image, ref, "--json", tmp_path / "no" / "x.json"), "folder .* does not exist"),
        ((image, ref, "--json", tmp_path), "it is a folder"),
    ]:
        code, _, err = run(capsys, "evaluate", *argv)
        assert code == 1 and len(err.strip().splitlines()) == 1 and re.search(match, err), err


@pytest.mark.parametrize("option", ["--clicks", "--objects"])
def test_counts_must_be_positive(capsys, scene, option):
    folder, _ = scene
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(folder / "cells.tif"), str(folder / "labels.tif"), option, "0"])
    assert exc.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
