"""segment, auto and embed on OME-Zarr folders and large compressed TIFFs, read tile by tile."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from cli_helpers import model_args, run

from napari_sam.core import lazy_arrays, lazy_images
from napari_sam.core.checkpoints import save_checkpoint
from napari_sam.core.volume_io import read_volume

H, W = 192, 256
TILING = ["--tile", "128,128", "--halo", "32,32", "--precision", "fp32"]  # 2 x 2 tiles
# A random-weight model predicts IoUs near 0 and unstable masks: keep its candidates.
AUTO = ["--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--min-size", "0"]
BOX = ["--box", "10,10,60,60", "--box", "100,100,160,200"]  # the second crosses tiles


@pytest.fixture(scope="module")
def files(tmp_path_factory, small_model, small_arch, make_image):
    folder = tmp_path_factory.mktemp("cli_lazy")
    ckpt = folder / "small.pt"
    save_checkpoint(small_model.sam, small_arch, ckpt, meta={"purpose": "tests"})
    grey = make_image((H, W))[..., 0]
    return ckpt, grey


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_ome_zarr(path, image, axes, *, version="0.4", scale=None):
    """A two-level OME-Zarr of ``image`` (axes e.g. "yx", "cyx", "zyx")."""
    g = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    scale = scale or [1.0] * len(axes)
    datasets = []
    for level in range(2):
        f = 2**level
        g.create_array(
            str(level),
            data=image[(..., slice(None, None, f), slice(None, None, f))],
            chunks=tuple(16 if a in "yx" else 1 for a in axes),
        )
        s = [v * f if a in "yx" else v for v, a in zip(scale, axes, strict=True)]
        datasets.append({"path": str(level), "coordinateTransformations": [_scale(s)]})
    kinds = {"c": "channel", "t": "time"}
    ms = {
        "axes": [
            {
                "name": a,
                "type": kinds.get(a, "space"),
                **({"unit": "micrometer"} if a in "zyx" else {}),
            }
            for a in axes
        ],
        "datasets": datasets,
    }
    if version == "0.4":
        g.attrs["multiscales"] = [{"version": "0.4", **ms}]
    else:
        g.attrs["ome"] = {"version": version, "multiscales": [ms]}
    return path


def _scale(values):
    return {"type": "scale", "scale": [float(v) for v in values]}


def labels_of(capsys, files, image, out, *args, err_to=None):
    """Run ``args[0] IMAGE args[1:] -o OUT``; the labels written (a Volume unless .tif)."""
    code, _, err = run(capsys, *args[:1], image, *args[1:], "-o", out, *model_args(files))
    assert code == 0, err
    if err_to is not None:
        err_to.append(err)
    return tifffile.imread(out) if out.suffix == ".tif" else read_volume(out)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_segment_ome_zarr_tiled_and_whole_equals_the_same_pixels(capsys, tmp_path, files, version):
    grey = files[1]
    zpath = write_ome_zarr(tmp_path / "cells.ome.zarr", grey, "yx", version=version)
    np.save(tmp_path / "cells.npy", grey)
    for tiling in (TILING, ["--tile", "off"]):
        args = ("segment", *BOX, *tiling)
        lazy = labels_of(capsys, files, zpath, tmp_path / "lazy.tif", *args)
        eager = labels_of(capsys, files, tmp_path / "cells.npy", tmp_path / "eager.tif", *args)
        assert lazy.any()
        np.testing.assert_array_equal(lazy, eager)


def test_labels_of_an_ome_zarr_keep_its_spacing(capsys, tmp_path, files):
    zpath = write_ome_zarr(tmp_path / "c.ome.zarr", files[1], "yx", scale=[0.5, 0.25])
    labels = labels_of(capsys, files, zpath, tmp_path / "out.nii.gz", "segment", *BOX, *TILING)
    assert labels.geometry.shape == (H, W)
    np.testing.assert_allclose(labels.geometry.spacing_in_mm(), (0.5e-3, 0.25e-3))


def test_auto_on_channels_with_contrast_limits_equals_the_npy(capsys, tmp_path, files):
    rng = np.random.default_rng(1)
    two = np.stack([files[1].astype(np.uint16) * 200, rng.integers(0, 4000, (H, W))])
    two = two.astype(np.uint16)
    zpath = write_ome_zarr(tmp_path / "two.zarr", two, "cyx", version="0.5")
    np.save(tmp_path / "two.npy", np.moveaxis(two, 0, -1))  # (H, W, 2): channels last
    args = ("auto", "--contrast-limits", "0,51000", "--points-per-side", "4", *AUTO, *TILING)
    lazy = labels_of(capsys, files, zpath, tmp_path / "lazy.tif", *args)
    eager = labels_of(capsys, files, tmp_path / "two.npy", tmp_path / "eager.tif", *args)
    assert lazy.max() > 0
    np.testing.assert_array_equal(lazy, eager)


@pytest.fixture
def big_tiff(tmp_path, monkeypatch, make_image):
    """A 512 x 512 deflate TIFF in 128 px tiles, over the (lowered) lazy threshold."""
    monkeypatch.setattr(lazy_arrays, "MAP_BYTES", 64 * 1024)
    image = make_image((512, 512))[..., 0]
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, tile=(128, 128), compression="zlib")
    np.save(tmp_path / "slide.npy", image)
    return path, image


def test_embed_then_segment_a_large_tiff(capsys, tmp_path, files, big_tiff):
    path, _ = big_tiff
    tiling = ["--tile", "256,256", "--halo", "32,32", "--precision", "fp32"]
    code, out, err = run(capsys, "embed", path, *tiling, *model_args(files))
    assert code == 0, err
    assert out.startswith(f"{path}: 4 tile embeddings stored in ") and "4 computed" in err
    box = ["--box", "300,20,340,80"]
    errs = []
    lazy = labels_of(
        capsys, files, path, tmp_path / "lazy.tif", "segment", *box, *tiling, err_to=errs
    )
    assert "0 computed, 1 reused" in errs[0] and lazy.any()
    eager = labels_of(
        capsys, files, tmp_path / "slide.npy", tmp_path / "eager.tif", "segment", *box, *tiling
    )
    np.testing.assert_array_equal(lazy, eager)


def test_segment_reads_only_the_tiles_it_needs(capsys, tmp_path, files, big_tiff, monkeypatch):
    path, _ = big_tiff
    reads = []
    view_getitem = lazy_images.SqueezedView.__getitem__

    def recording(self, key):
        out = view_getitem(self, key)
        reads.append(out.shape[:2])
        return out

    monkeypatch.setattr(lazy_images.SqueezedView, "__getitem__", recording)
    tiling = ["--tile", "128,128", "--halo", "32,32", "--precision", "fp32"]
    out = tmp_path / "one.tif"
    code, _, err = run(
        capsys, "segment", path, "--box", "10,10,60,60", *tiling, "-o", out, *model_args(files)
    )
    assert code == 0, err
    assert "1 computed, 0 reused" in err  # one tile of 16
    assert reads, "the TIFF was not read through its zarr view"
    block = (128 + 2 * 32,) * 2  # tile 0's block (core and halo, moved inside the image)
    assert reads.count(block) == 1, reads  # read once, for its embedding
    # Besides: only small patches (the plane's identity for its store), never the plane.
    others = [h * w for h, w in reads if (h, w) != block]
    assert max(others) <= 64 * 64 and sum(others) <= 512 * 512 // 4, reads
    assert tifffile.imread(out).any()


@pytest.mark.parametrize("command", ["segment", "embed"])
def test_broken_zarr_folder_is_a_one_line_error(capsys, tmp_path, files, command):
    bad = tmp_path / "bad.zarr"
    zarr.open_group(str(bad), mode="w", zarr_format=3).create_array("0", data=np.zeros((8, 8)))
    extra = [*BOX, "-o", tmp_path / "x.tif"] if command == "segment" else []
    code, out, err = run(capsys, command, bad, *extra, *model_args(files))
    assert code == 1 and out == ""
    assert err.strip() == (
        f"napari-sam: error: Cannot read OME-Zarr image {bad}: its group has no OME-NGFF "
        "'multiscales' metadata (not an OME-Zarr image)."
    )


def test_ome_zarr_volume_is_embedded_slice_by_slice(capsys, tmp_path, files):
    stack = np.stack([np.roll(files[1], 5 * i, axis=1) for i in range(3)])
    zpath = write_ome_zarr(tmp_path / "stack.ome.zarr", stack, "zyx", scale=[2.0, 0.5, 0.5])
    code, out, err = run(capsys, "embed", zpath, "--precision", "fp32", *model_args(files))
    assert code == 0, err
    assert out.startswith(f"{zpath}: 3 slice embeddings stored")


def test_a_folder_of_ome_zarr_images_runs_in_batch(capsys, tmp_path, files):
    folder = tmp_path / "plates"
    folder.mkdir()
    small = files[1][:96, :128]
    write_ome_zarr(folder / "a.ome.zarr", small, "yx")
    write_ome_zarr(folder / "b.zarr", small[::-1].copy(), "yx", version="0.5")
    out = tmp_path / "results"
    out.mkdir()
    args = ["--points-per-side", "2", *AUTO, "--tile", "off", *model_args(files)]
    code, _, err = run(capsys, "auto", folder, "-o", out, *args)
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*_labels.tif")) == ["a_labels.tif", "b_labels.tif"]
    code, _, err = run(capsys, "auto", folder / "a.ome.zarr", "-o", tmp_path / "a.tif", *args)
    assert code == 0, err
    np.testing.assert_array_equal(
        tifffile.imread(out / "a_labels.tif"), tifffile.imread(tmp_path / "a.tif")
    )


@pytest.mark.parametrize("large", [False, True])
def test_channel_axis_first(capsys, tmp_path, files, monkeypatch, large):
    """``--channel-axis 0``: rows and columns are the other axes (a small TIFF read whole, or
    a large compressed OME-TIFF read tile by tile), as for the same pixels channels last."""
    if large:
        monkeypatch.setattr(lazy_arrays, "MAP_BYTES", 64 * 1024)
    three = np.stack([files[1], files[1][::-1], files[1][:, ::-1]])  # (3, H, W) uint8
    path = tmp_path / "three.ome.tif"
    tifffile.imwrite(path, three, tile=(64, 64), compression="zlib", metadata={"axes": "CYX"})
    np.save(tmp_path / "three.npy", np.moveaxis(three, 0, -1))
    args = ("segment", *BOX, *TILING)
    lazy = labels_of(capsys, files, path, tmp_path / "a.tif", *args, "--channel-axis", "0")
    eager = labels_of(capsys, files, tmp_path / "three.npy", tmp_path / "b.tif", *args)
    assert lazy.any()
    np.testing.assert_array_equal(lazy, eager)
