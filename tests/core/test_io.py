"""Tests of napari_sam.core.io: reading images, writing labels atomically."""

from __future__ import annotations

import os

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_sam.core.errors import ImageError
from napari_sam.core.io import read_image, write_labels


@pytest.fixture
def grey16():
    return (np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 37) % 4096


@pytest.fixture
def rgb8():
    return np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)


# --- read_image ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a.tif", "b.TIFF"])
def test_read_tiff(tmp_path, grey16, name):
    tifffile.imwrite(tmp_path / name, grey16)
    out = read_image(tmp_path / name)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, grey16)


def test_read_tiff_channels_first_stack(tmp_path):
    data = np.random.default_rng(1).random((3, 8, 9)).astype(np.float32)
    tifffile.imwrite(tmp_path / "c.tif", data)
    np.testing.assert_array_equal(read_image(str(tmp_path / "c.tif")), data)


@pytest.mark.parametrize("name", ["a.png", "a.bmp"])
def test_read_lossless_pictures(tmp_path, rgb8, name):
    iio.imwrite(tmp_path / name, rgb8)
    np.testing.assert_array_equal(read_image(tmp_path / name), rgb8)


def test_read_png_16_bit(tmp_path, grey16):
    iio.imwrite(tmp_path / "g.png", grey16)
    out = read_image(tmp_path / "g.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, grey16)


@pytest.mark.parametrize("name", ["a.jpg", "a.JPEG"])
def test_read_jpeg(tmp_path, name):
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (24, 1))
    iio.imwrite(tmp_path / name, np.dstack([smooth] * 3), extension=".jpg")
    out = read_image(tmp_path / name)
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8
    assert np.abs(out[..., 0].astype(int) - smooth).max() < 10  # lossy, but close


def test_read_npy(tmp_path, grey16):
    np.save(tmp_path / "a.npy", grey16)
    np.testing.assert_array_equal(read_image(tmp_path / "a.npy"), grey16)


def test_read_npy_refuses_pickles(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageError, match=r"Cannot read image .*o\.npy: .*Python objects"):
        read_image(tmp_path / "o.npy")


def test_read_missing_file(tmp_path):
    with pytest.raises(ImageError, match=r"Cannot read image .*nope\.tif: file not found\.$"):
        read_image(tmp_path / "nope.tif")


def test_read_directory(tmp_path):
    (tmp_path / "dir.tif").mkdir()
    with pytest.raises(ImageError, match="not a file"):
        read_image(tmp_path / "dir.tif")


@pytest.mark.parametrize("name", ["a.czi", "noext"])
def test_read_unsupported_extension(tmp_path, name):
    (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ImageError, match=r"unsupported file type .*supported: \.tif, \.tiff"):
        read_image(tmp_path / name)


@pytest.mark.parametrize("name", ["bad.tif", "bad.png", "bad.npy", "bad.jpg"])
def test_read_corrupt_file_is_one_clear_line(tmp_path, name):
    (tmp_path / name).write_bytes(b"this is not an image at all")
    with pytest.raises(ImageError, match=rf"^Cannot read image .*{name}: .+") as info:
        read_image(tmp_path / name)
    assert "\n" not in str(info.value)
    assert "backend" not in str(info.value) and "allow_pickle" not in str(info.value)


# --- write_labels --------------------------------------------------------------------------


@pytest.fixture
def labels():
    lab = np.zeros((20, 30), dtype=np.int64)
    lab[2:8, 3:9] = 1
    lab[10:18, 12:25] = 70_000  # needs more than 16 bits
    return lab


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if "partial" in p.name)


@pytest.mark.parametrize("name", ["lab.tif", "lab.tiff", "lab.npy"])
def test_write_labels_round_trip_int32(tmp_path, labels, name):
    path = write_labels(str(tmp_path / name), labels)
    assert path == tmp_path / name
    out = read_image(path)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, labels)
    assert leftovers(tmp_path) == []


def test_write_labels_tiff_is_zlib_compressed(tmp_path, labels):
    write_labels(tmp_path / "lab.tif", labels)
    with tifffile.TiffFile(tmp_path / "lab.tif") as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE


def test_write_labels_png_uint16(tmp_path):
    lab = np.array([[0, 1, 2], [65535, 7, 0]], dtype=np.int32)
    write_labels(tmp_path / "lab.png", lab)
    out = read_image(tmp_path / "lab.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, lab)


def test_write_labels_png_refuses_large_labels(tmp_path, labels):
    with pytest.raises(ImageError, match=r"PNG holds labels 0 to 65535.*use \.tif or \.npy"):
        write_labels(tmp_path / "lab.png", labels)
    assert list(tmp_path.iterdir()) == []


def test_write_labels_replaces_existing_file(tmp_path, labels):
    target = tmp_path / "lab.tif"
    target.write_bytes(b"old")
    write_labels(target, labels)
    np.testing.assert_array_equal(read_image(target), labels)
    assert leftovers(tmp_path) == []


def test_write_labels_bool_and_3d(tmp_path):
    mask = np.zeros((2, 4, 5), dtype=bool)
    mask[1, 1:3, 2:4] = True
    write_labels(tmp_path / "m.npy", mask)
    np.testing.assert_array_equal(read_image(tmp_path / "m.npy"), mask.astype(np.int32))


def test_write_labels_missing_folder(tmp_path, labels):
    with pytest.raises(ImageError, match=r"folder .*missing does not exist"):
        write_labels(tmp_path / "missing" / "lab.tif", labels)
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("lab.jpg", np.zeros((4, 4), np.int32), r"unsupported file type '\.jpg'"),
        ("lab.tif", np.zeros((4, 4), np.float32), "must be integers, not float32"),
        ("lab.tif", np.zeros(4, np.int32), r"2D or 3D labels, got shape \(4,\)"),
        ("lab.png", np.zeros((2, 4, 4), np.int32), "expected 2D labels"),
        ("lab.tif", np.zeros((0, 4), np.int32), "empty"),
        ("lab.npy", np.array([[0, 2**40]]), "beyond int32"),
        ("lab.png", np.array([[-1, 2]]), "PNG holds labels 0 to 65535"),
    ],
)
def test_write_labels_errors(tmp_path, name, data, match):
    with pytest.raises(ImageError, match=match):
        write_labels(tmp_path / name, data)
    assert list(tmp_path.iterdir()) == []


def test_write_labels_failure_leaves_no_partial_file(tmp_path, labels, monkeypatch):
    target = tmp_path / "lab.tif"
    target.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ImageError, match=r"Cannot write labels to .*lab\.tif: disk on fire"):
        write_labels(target, labels)
    assert leftovers(tmp_path) == []
    assert target.read_bytes() == b"old"  # the previous file is untouched


def test_write_labels_interrupted_leaves_no_partial_file(tmp_path, labels, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tifffile, "imwrite", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_labels(tmp_path / "lab.tif", labels)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_write_labels_respects_umask(tmp_path, labels):
    write_labels(tmp_path / "lab.npy", labels)
    (tmp_path / "ref.txt").write_text("x")
    assert (tmp_path / "lab.npy").stat().st_mode == (tmp_path / "ref.txt").stat().st_mode
