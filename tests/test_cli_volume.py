"""``napari-sam`` on volumes: (z, row, col) prompts, geometry kept, every slice embedded."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from cli_helpers import model_args, run
from volume_files import FLIPPED_XYZ, write_dicom_series, write_itk

from napari_sam.cli import main
from napari_sam.core.checkpoints import save_checkpoint
from napari_sam.core.embedding import compute_embedding
from napari_sam.core.engine import SamEngine
from napari_sam.core.normalize import Normalization
from napari_sam.core.windows import parse_window, volume_normalization

Z, H, W = 6, 64, 96


@pytest.fixture(scope="module")
def scan(tmp_path_factory, small_model, small_arch, make_image):
    """A checkpoint of the small model and a mirrored NIfTI volume of Z x H x W (int16)."""
    folder = tmp_path_factory.mktemp("cli-volume")
    ckpt = folder / "small.pt"
    save_checkpoint(small_model.sam, small_arch, ckpt, meta={"purpose": "tests"})
    planes = [make_image((H, W), seed=z)[..., 0].astype(np.int16) * 8 - 500 for z in range(Z)]
    data = np.stack(planes)
    path = write_itk(folder / "scan.nii.gz", data, direction=FLIPPED_XYZ)
    return ckpt, path, data


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(folder))
    return folder


def one_error_line(code, out, err, match):
    assert code == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("napari-sam: error: ") and "Traceback" not in err
    assert re.search(match, lines[0]), lines[0]


def stored(cache):
    folder = cache / "embeddings"
    return sorted(folder.rglob("*.npz")) if folder.exists() else []


def expected_slice(small_model, data, z, window=None, **prompts):
    """What the engine predicts on slice z, normalised once for the volume as the CLI does."""
    norm = volume_normalization(data, Normalization(), window=window)
    rgb = norm.apply(data[z])
    engine = SamEngine(small_model)
    pred = engine.predict(compute_embedding(small_model, rgb), **prompts)
    out = np.zeros((H, W), np.int32)
    for obj in range(pred.n_objects):
        out[pred.mask(obj)] = obj + 1
    return out


def same_geometry(a_path, b_path):
    a, b = sitk.ReadImage(str(a_path)), sitk.ReadImage(str(b_path))
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_boxes_on_one_slice(capsys, tmp_path, scan, small_model, suffix):
    out = tmp_path / f"labels{suffix}"
    code, stdout, err = run(
        capsys, "segment", scan[1], "--box", "3,2,2,28,40", "--box", "3,36,50,62,94",
        "-o", out, *model_args(scan),
    )  # fmt: skip
    assert code == 0, err
    assert stdout.strip() == f"wrote {out} (2 objects)"
    assert re.search(r"^object 2 \(slice 3\): \d+ px, predicted IoU -?\d\.\d{3}$", err, re.M)
    same_geometry(out, scan[1])
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert labels.shape == (Z, H, W)
    assert not labels[[0, 1, 2, 4, 5]].any()  # only the prompted slice
    expected = expected_slice(small_model, scan[2], 3, boxes=[(2, 2, 28, 40), (36, 50, 62, 94)])
    assert np.mean(labels[3] != expected) <= 0.005  # float rounding at the threshold only


def test_prompts_on_several_slices_and_label_ids(capsys, tmp_path, scan):
    out = tmp_path / "l.mha"
    code, stdout, err = run(
        capsys, "segment", scan[1], "--box", "4,2,2,28,40", "--point", "1,20,70",
        "--box", "1,36,50,62,94", "--point", "2,10,10", "--point", "2,50,50,0",
        "-o", out, *model_args(scan),
    )  # fmt: skip
    assert code == 0, err
    assert stdout.strip() == f"wrote {out} (3 objects)"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    # boxes are objects 1 and 2 in the order given; the clicks on slice 2 are object 3
    assert set(np.unique(labels[4])) <= {0, 1} and set(np.unique(labels[1])) <= {0, 2}
    assert set(np.unique(labels[2])) <= {0, 3}
    assert not labels[[0, 3, 5]].any()
    assert "object 3 (slice 2)" in err and "object 2 (slice 1)" in err


def test_point_on_a_volume_slice(capsys, tmp_path, scan, small_model):
    out = tmp_path / "p.npy"
    code, _, err = run(
        capsys, "segment", scan[1], "--point", "5,20,70", "--point", "5,50,10,0", "-o", out,
        *model_args(scan),
    )  # fmt: skip
    assert code == 0, err
    labels = np.load(out)
    expected = expected_slice(small_model, scan[2], 5, points=[(20, 70), (50, 10)],
                              point_labels=[1, 0])  # fmt: skip
    assert labels.shape == (Z, H, W) and np.mean(labels[5] != expected) <= 0.005


def test_embed_every_slice_then_segment_reuses(capsys, tmp_path, scan, cache):
    code, stdout, err = run(capsys, "embed", scan[1], *model_args(scan))
    assert code == 0, err
    assert len(stored(cache)) == Z
    assert re.fullmatch(
        rf"{re.escape(str(scan[1]))}: {Z} slice embeddings stored in \S+", stdout.strip()
    )
    assert f"{Z} computed, 0 reused" in err
    code, _, err = run(capsys, "embed", scan[1], *model_args(scan))
    assert f"0 computed, {Z} reused" in err
    code, _, err = run(
        capsys, "segment", scan[1], "--box", "2,2,2,28,40", "-o", tmp_path / "a.nii.gz",
        *model_args(scan),
    )  # fmt: skip
    assert code == 0, err
    assert "slice 2: embedding reused" in err
    assert len(stored(cache)) == Z


def test_window_sets_one_normalisation_for_the_volume(capsys, tmp_path, scan, small_model, cache):
    out = tmp_path / "w.nii.gz"
    code, _, err = run(
        capsys, "segment", scan[1], "--box", "3,2,2,28,40", "--window", "400,40", "-o", out,
        *model_args(scan),
    )  # fmt: skip
    assert code == 0, err
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    expected = expected_slice(
        small_model, scan[2], 3, window=parse_window("400,40"), boxes=[(2, 2, 28, 40)]
    )
    assert np.mean(labels[3] != expected) <= 0.005
    # A different window is a different SAM input: a new embedding.
    code, _, err = run(
        capsys, "segment", scan[1], "--box", "3,2,2,28,40", "--window", "lung", "-o", out,
        *model_args(scan),
    )  # fmt: skip
    assert code == 0 and "slice 3: embedding computed" in err
    assert len(stored(cache)) == 2


def test_auto_slice_by_slice(capsys, tmp_path, scan):
    out, table = tmp_path / "auto.nii.gz", tmp_path / "auto.csv"
    code, stdout, err = run(
        capsys, "auto", scan[1], "-o", out, "--table", table, "--points-per-side", "4",
        "--pred-iou-thresh", "0", "--stability-score-thresh", "0", *model_args(scan),
    )  # fmt: skip
    assert code == 0, err
    same_geometry(out, scan[1])
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out))).astype(np.int64)
    n = int(labels.max())
    assert stdout.strip() == f"wrote {out} ({n} object{'s' * (n != 1)} on {Z} slices)"
    per_slice = [set(np.unique(labels[z])) - {0} for z in range(Z)]
    assert sum(len(s) for s in per_slice) == n  # every id lives on one slice only
    with open(table, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["label", "z", "area"]
    assert len(rows) == n + 1
    for row in rows[1:]:
        label, z, area = int(row[0]), int(row[1]), int(row[2])
        assert label in per_slice[z]
        assert area == int((labels[z] == label).sum())


def test_3d_tiff_stack_is_accepted(capsys, tmp_path, scan):
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, (scan[2] + 500).astype(np.uint16))  # a z-stack, no metadata
    out = tmp_path / "stack_labels.tif"
    code, _, err = run(
        capsys, "segment", stack, "--box", "0,2,2,28,40", "-o", out, *model_args(scan)
    )
    assert code == 0, err
    assert tifffile.imread(out).shape == (Z, H, W)


def test_dicom_folder(capsys, tmp_path, scan, cache):
    folder = tmp_path / "dicom"
    write_dicom_series(folder, scan[2], series_uid="1.2.826.0.1.3680043.9.7")
    code, stdout, err = run(capsys, "embed", folder, *model_args(scan))
    assert code == 0, err
    assert stdout.startswith(f"{folder}: {Z} slice embeddings")
    out = tmp_path / "d.nii.gz"
    code, _, err = run(
        capsys, "segment", folder, "--box", "1,2,2,28,40", "-o", out, *model_args(scan)
    )
    assert code == 0 and "slice 1: embedding reused" in err
    assert sitk.ReadImage(str(out)).GetSize() == (W, H, Z)


# --- errors: one line, exit 1, before any model work ----------------------------------------


@pytest.fixture
def corrupt(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"not a checkpoint" * 20)
    return ["--checkpoint", path]


@pytest.mark.parametrize(
    ("prompt", "match"),
    [
        (["--box", "2,2,28,40"], r"is a volume \(6 x 64 x 96 voxels of .* needs the slice first"),
        (["--point", "20,70"], r"--point 20,70 needs the slice first: --box Z,ROW0"),
        (["--box", "6,2,2,28,40"], r"slice 6 is not in the volume .*slices 0 to 5"),
        (["--point", "1.5,3,3"], r"slice 1.5 is not in the volume"),
        (["--point", "2,99,3"], r"slice 2: point \(99.0, 3.0\) lies outside the 64x96"),
        (["--point", "2,3,3,0"], r"slice 2: .*at least one positive point"),
        ([], r"give at least one --box Z,ROW0,COL0,ROW1,COL1 or --point Z,ROW,COL"),
    ],
)
def test_prompt_errors_on_a_volume(capsys, tmp_path, scan, corrupt, prompt, match):
    code, out, err = run(
        capsys, "segment", scan[1], *prompt, "-o", tmp_path / "o.nii.gz", *corrupt
    )
    one_error_line(code, out, err, match)


@pytest.mark.parametrize(
    ("prompt", "match"),
    [
        (["--box", "1,2,2,28,40"], r"is a 2D image \(64 x 96\): --box takes ROW0,COL0,ROW1,COL1"),
        (["--point", "1,2,5"], r"is a 2D image .*--point takes ROW,COL\[,LABEL\] with LABEL 1"),
        (["--point", "1,2,3,1"], r"is a 2D image"),
    ],
)
def test_volume_prompts_on_a_2d_image(capsys, tmp_path, make_image, corrupt, prompt, match):
    image = tmp_path / "flat.tif"
    tifffile.imwrite(image, make_image((H, W))[..., 0])
    code, out, err = run(capsys, "segment", image, *prompt, "-o", tmp_path / "o.tif", *corrupt)
    one_error_line(code, out, err, match)


def test_bad_inputs_are_one_line(capsys, tmp_path, scan, corrupt):
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(scan[1].read_bytes()[:300])
    code, out, err = run(capsys, "embed", truncated, *corrupt)
    one_error_line(code, out, err, r"cut\.nii\.gz: the gzip data is truncated or corrupt")

    mixed = tmp_path / "mixed"
    write_dicom_series(mixed, scan[2], series_uid="1.2.3.1", prefix="a")
    write_dicom_series(mixed, scan[2][:3], series_uid="1.2.3.2", prefix="b")
    code, out, err = run(capsys, "segment", mixed, "--box", "0,1,1,9,9", "-o", tmp_path / "o.nrrd",
                         *corrupt)  # fmt: skip
    one_error_line(code, out, err, r"holds 2 DICOM series")

    code, out, err = run(
        capsys, "segment", scan[1], "--box", "0,1,1,9,9", "-o", tmp_path / "o.png", *corrupt
    )
    one_error_line(code, out, err, r"PNG holds one 2D plane; use \.nii\.gz")

    fourd = write_itk(tmp_path / "t.nii.gz", np.zeros((2, 3, 8, 8), np.int16),
                      direction=tuple(np.eye(4).ravel()), spacing=(1, 1, 1, 1),
                      origin=(0, 0, 0, 0))  # fmt: skip
    code, out, err = run(capsys, "auto", fourd, "-o", tmp_path / "o.nii.gz", *corrupt)
    one_error_line(code, out, err, r"is 4D \(2 x 3 x 8 x 8, axes t, z, row, col\)")

    code, out, err = run(capsys, "embed", tmp_path / "scan.czi", *corrupt)
    one_error_line(code, out, err, r"file not found")
    (tmp_path / "scan.czi").write_bytes(b"x" * 300)
    code, out, err = run(capsys, "embed", tmp_path / "scan.czi", *corrupt)
    one_error_line(code, out, err, r"unsupported file type '\.czi' .*\.nii\.gz")


def test_window_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["embed", "x.nii.gz", "--window", "lungs"])
    assert info.value.code == 2
    assert "Unknown window 'lungs'" in capsys.readouterr().err


def test_mri_sample_with_the_tiny_model(capsys, tmp_path):
    """The bundled MRI: one box around the tumour on slice 14, with the bundled tiny model."""
    from napari_sam._sample_data import SAMPLES

    image = SAMPLES / "brain1_image.nii.gz"
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLES / "brain1_label.nii.gz")))
    rows, cols = np.nonzero(reference[14])
    box = f"14,{rows.min()},{cols.min()},{rows.max()},{cols.max()}"
    out = tmp_path / "tumour.nii.gz"
    code, _, err = run(
        capsys, "segment", image, "--box", box, "-o", out, "--model", "tiny", "--device", "cpu",
        "--precision", "fp32",
    )  # fmt: skip
    assert code == 0, err
    same_geometry(out, image)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    mask, ref = labels[14] > 0, reference[14] > 0
    iou = (mask & ref).sum() / (mask | ref).sum()
    print(f"tiny model, MRI slice 14, one box: IoU {iou:.3f}")
    assert iou >= IOU_FLOOR_MRI_SLICE


#: Measured 0.410 (fp32, the tumour's tight box on slice 14); the floor sits a margin below.
IOU_FLOOR_MRI_SLICE = 0.3


def test_propagate_equals_the_core_and_keeps_the_geometry(capsys, tmp_path, scan, small_model):
    """``--propagate`` is the core's propagation on the CLI's slices, written with the scan's
    geometry (random weights: what matters is that both paths agree exactly)."""
    from napari_sam.core.propagation import PropagationParams, objects_from_prompts, propagate
    from napari_sam.core.stack import SliceStack

    out = tmp_path / "prop.nii.gz"
    code, stdout, err = run(
        capsys, "segment", scan[1], "--box", "2,4,4,40,60", "--point", "4,30,70",
        "--propagate", "--min-score", "0", "-o", out, *model_args(scan),
    )  # fmt: skip
    assert code == 0, err
    same_geometry(out, scan[1])
    assert stdout.strip() == f"wrote {out} (2 objects, propagated)"
    norm = volume_normalization(scan[2], Normalization())
    stack = SliceStack(lambda z: norm.apply(scan[2][z]), (Z, H, W))
    objects = objects_from_prompts(boxes=[(2, 4, 4, 40, 60)], points=[(4, 30, 70)])
    want = propagate(SamEngine(small_model), stack, objects, PropagationParams(min_score=0))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), want.labels)
    assert "object 1: slices" in err and "mm^3" in err


def test_auto_3d_links_objects_through_the_volume(capsys, tmp_path, scan):
    out = tmp_path / "auto3d.nii.gz"
    code, stdout, err = run(
        capsys, "auto", scan[1], "--3d", "-o", out, "--points-per-side", "4",
        "--pred-iou-thresh", "0", "--stability-score-thresh", "0", *model_args(scan),
    )  # fmt: skip
    assert code == 0, err
    same_geometry(out, scan[1])
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    n = len(np.setdiff1d(np.unique(labels), [0]))
    assert stdout.strip().startswith(f"wrote {out} ({n} object")
    assert f"linked through {Z} slices" in stdout


@pytest.mark.parametrize(("command", "flag"), [("segment", "--propagate"), ("auto", "--3d")])
def test_volume_only_flags_on_a_2d_image(capsys, tmp_path, make_image, command, flag):
    image = tmp_path / "flat.tif"
    tifffile.imwrite(image, make_image((H, W))[..., 0])
    prompt = ["--box", "2,2,20,20"] if command == "segment" else []
    code, out, err = run(capsys, command, image, *prompt, flag, "-o", tmp_path / "o.tif")
    one_error_line(code, out, err, rf"{flag} needs a volume or a stack")


def test_mri_tumour_propagated_from_one_box_with_the_tiny_model(capsys, tmp_path):
    """One box on slice 14 of the bundled MRI, propagated: the tumour's slices are reached."""
    from napari_sam._sample_data import SAMPLES

    image = SAMPLES / "brain1_image.nii.gz"
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLES / "brain1_label.nii.gz"))) > 0
    rows, cols = np.nonzero(reference[14])
    box = f"14,{rows.min()},{cols.min()},{rows.max()},{cols.max()}"
    out = tmp_path / "tumour.nii.gz"
    code, _, err = run(
        capsys, "segment", image, "--box", box, "--propagate", "--min-score", "0.3", "-o", out,
        "--model", "tiny", "--device", "cpu", "--precision", "fp32",
    )  # fmt: skip
    assert code == 0, err
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out))) > 0
    slices = set(np.nonzero(labels.any(axis=(1, 2)))[0].tolist())
    assert {12, 13, 14, 15, 16, 17} <= slices, slices
    dice = 2 * (labels & reference).sum() / (labels.sum() + reference.sum())
    print(f"tiny model, MRI tumour propagated from one box: 3D Dice {dice:.3f}")
    assert dice >= DICE_FLOOR_MRI_PROPAGATED


#: Measured 0.244 (tiny model, fp32, --min-score 0.3: it overshoots to slice 22); a margin below.
DICE_FLOOR_MRI_PROPAGATED = 0.18
