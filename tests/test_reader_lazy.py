"""The napari reader on OME-Zarr folders and large TIFFs: layers whose data stays in the file
(no viewer needed; the layers in a viewer: tests/gui/test_reader_lazy_in_viewer.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr_files import pixels, write_ome_zarr, write_plate

from napari_sam._reader import get_reader, read_layers
from napari_sam.core import lazy_arrays
from napari_sam.core.errors import ImageError
from napari_sam.core.geometry import VolumeGeometry
from napari_sam.core.lazy_images import SqueezedView


@pytest.fixture
def zarr_reads(monkeypatch):
    """Shapes of the zarr arrays read from (every ``array[...]``), in order."""
    shapes = []
    original = zarr.Array.__getitem__

    def recording(self, key):
        shapes.append(tuple(self.shape))
        return original(self, key)

    monkeypatch.setattr(zarr.Array, "__getitem__", recording)
    return shapes


@pytest.fixture
def small_map_bytes(monkeypatch):
    """TIFFs of 64 KiB and more count as large (tests stay small)."""
    monkeypatch.setattr(lazy_arrays, "MAP_BYTES", 64 * 1024)


def one_layer(path):
    reader = get_reader(str(path))
    assert reader is read_layers
    ((data, kwargs, kind),) = reader(str(path))
    assert kind == "image"
    return data, kwargs


# ------------------------------------------------------------------------------------------
# OME-Zarr


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_opens_as_a_multiscale_image_left_in_its_files(tmp_path, version, zarr_reads):
    image = pixels((100, 140), np.uint16)
    path = write_ome_zarr(
        tmp_path / "cells.ome.zarr", image, "yx", (0.5, 0.25), version=version, levels=3,
        ms_scale=(2.0, 2.0), translation=(10.0, -5.0),
    )  # fmt: skip
    data, kwargs = one_layer(path)
    assert isinstance(data, list) and all(isinstance(d, zarr.Array) for d in data)
    assert [d.shape for d in data] == [(100, 140), (50, 70), (25, 35)]
    # Only the smallest level was read (a sample for the contrast limits).
    assert zarr_reads and set(zarr_reads) == {(25, 35)}
    assert kwargs["multiscale"] is True and kwargs["name"] == "cells"
    # level 0: scale (0.5, 0.25) then translation, then the multiscale's scale of 2
    assert kwargs["scale"] == (1.0, 0.5) and kwargs["translate"] == (20.0, -10.0)
    assert kwargs["units"] == ("um", "um")
    lo, hi = kwargs["contrast_limits"]
    assert 0 <= lo < hi <= 65535
    info = kwargs["metadata"]["napari_sam"]
    g = info["geometry"]
    assert isinstance(g, VolumeGeometry) and (g.axes, g.shape) == ("yx", (100, 140))
    assert info["source"] == path and info["kind"] == f"OME-Zarr {version} (level 0 of 3)"
    assert info["levels"] == [(100, 140), (50, 70), (25, 35)]
    np.testing.assert_array_equal(data[0][10:20, 5:9], image[10:20, 5:9])
    np.testing.assert_array_equal(data[2][...], image[::4, ::4])


def test_channels_are_one_lazy_layer_each_without_size_1_axes(tmp_path, zarr_reads):
    image = pixels((1, 3, 1, 64, 80), np.uint16)
    path = write_ome_zarr(
        tmp_path / "b.zarr", image, "tczyx", (1.0, 1.0, 2.0, 0.3, 0.3), version="0.5", levels=2
    )
    layers = read_layers(str(path))
    assert [kw["name"] for _, kw, _ in layers] == ["b [0]", "b [1]", "b [2]"]
    assert [kw["colormap"] for _, kw, _ in layers] == ["cyan", "magenta", "yellow"]
    assert [kw["blending"] for _, kw, _ in layers] == ["translucent_no_depth", *["additive"] * 2]
    assert set(zarr_reads) == {(1, 3, 1, 32, 40)}  # the smallest level, sampled
    for i, (data, kwargs, kind) in enumerate(layers):
        assert kind == "image" and kwargs["multiscale"]
        assert all(isinstance(d, SqueezedView) for d in data)
        assert [d.shape for d in data] == [(64, 80), (32, 40)]
        np.testing.assert_array_equal(data[0][3:9, -5:], image[0, i, 0, 3:9, -5:])
        np.testing.assert_array_equal(data[1][...], image[0, i, 0, ::2, ::2])
        assert kwargs["scale"] == pytest.approx((0.3, 0.3)) and kwargs["units"] == ("um", "um")
        info = kwargs["metadata"]["napari_sam"]
        assert info["channel"] == i and info["geometry"].shape == (64, 80)
        assert kwargs["contrast_limits"][1] > kwargs["contrast_limits"][0]


def test_two_channels_are_magenta_and_green(tmp_path):
    path = write_ome_zarr(tmp_path / "two.ome.zarr", pixels((2, 40, 50)), "cyx", (1, 1, 1))
    layers = read_layers(str(path))
    assert [kw["colormap"] for _, kw, _ in layers] == ["magenta", "green"]
    data, kwargs, _ = layers[1]
    assert isinstance(data, SqueezedView) and data.shape == (40, 50)  # one level: no list
    assert "multiscale" not in kwargs
    assert "contrast_limits" not in kwargs  # uint8: napari's 0-255


def test_ome_zarr_volume_stays_lazy(tmp_path, zarr_reads):
    stack = pixels((5, 64, 48), np.uint16)
    path = write_ome_zarr(tmp_path / "v.ome.zarr", stack, "zyx", (4.0, 0.5, 0.5), levels=2)
    data, kwargs = one_layer(path)
    assert all(isinstance(d, zarr.Array) for d in data)
    assert [d.shape for d in data] == [(5, 64, 48), (5, 32, 24)]
    assert set(zarr_reads) == {(5, 32, 24)}
    assert kwargs["scale"] == (4.0, 0.5, 0.5) and kwargs["units"] == ("um",) * 3
    assert kwargs["metadata"]["napari_sam"]["geometry"].axes == "zyx"


def test_only_ome_zarr_folders_are_claimed(tmp_path):
    write_ome_zarr(tmp_path / "named.zarr", pixels((8, 8)), "yx", (1, 1))
    assert get_reader(str(tmp_path / "named.zarr")) is read_layers
    # A plain zarr array (no OME metadata) is left to napari's own zarr reader.
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").create_array("0", data=pixels((4, 4)))
    assert get_reader(str(tmp_path / "plain.zarr")) is None
    (tmp_path / "folder").mkdir()
    assert get_reader(str(tmp_path / "folder")) is None
    plate = zarr.open_group(str(tmp_path / "plate"), mode="w", zarr_format=2)
    plate.attrs["plate"] = {"wells": []}
    assert get_reader(str(tmp_path / "plate")) is read_layers  # told to pick one image


def _broken_lower_level(path):
    write_ome_zarr(path, pixels((16, 16)), "yx", (1, 1), levels=2)
    g = zarr.open_group(str(path), mode="r+")
    ms = g.attrs["multiscales"]
    ms[0]["datasets"][1]["path"] = "s1"
    g.attrs["multiscales"] = ms


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.mkdir(), "not a zarr group"),
        (lambda p: (p.mkdir(), (p / "zarr.json").write_text("{broken")), "not a zarr group"),
        (_broken_lower_level, "level 1 ('s1') is missing or unreadable."),
        (write_plate, "it is an HCS plate; give the folder of one image in it"),
    ],
)
def test_a_broken_ome_zarr_is_one_line(tmp_path, make, reason):
    path = tmp_path / "bad.ome.zarr"
    make(path)
    reader = get_reader(str(path))
    assert reader is read_layers
    with pytest.raises(ImageError) as info:
        reader(str(path))
    message = str(info.value)
    assert message.startswith(f"Cannot read OME-Zarr image {path}: ")
    assert reason in message and "\n" not in message


# ------------------------------------------------------------------------------------------
# TIFF


def test_pyramidal_tiff_is_a_multiscale_image(tmp_path, small_map_bytes, zarr_reads):
    grey = pixels((512, 256), np.uint16)
    path = tmp_path / "pyramid.ome.tif"
    meta = {"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    with tifffile.TiffWriter(path) as w:
        w.write(grey, tile=(128, 128), compression="zlib", subifds=2, metadata=meta)
        w.write(grey[::2, ::2], tile=(128, 128), compression="zlib", subfiletype=1)
        w.write(grey[::4, ::4], tile=(64, 64), compression="zlib", subfiletype=1)
    data, kwargs = one_layer(path)
    assert all(isinstance(d, zarr.Array) for d in data)
    assert [d.shape for d in data] == [(512, 256), (256, 128), (128, 64)]
    assert set(zarr_reads) == {(128, 64)}
    assert kwargs["multiscale"] and kwargs["name"] == "pyramid.ome"
    assert kwargs["scale"] == (0.5, 0.5) and kwargs["units"] == ("um", "um")
    info = kwargs["metadata"]["napari_sam"]
    assert info["kind"] == "TIFF (adobe_deflate, tiled 128 x 128, 3 levels)"
    assert info["source"] == Path(path)
    np.testing.assert_array_equal(data[0][400:, :7], grey[400:, :7])
    np.testing.assert_array_equal(data[1][...], grey[::2, ::2])


def test_pyramidal_tiff_channels_are_one_layer_each(tmp_path, small_map_bytes):
    image = pixels((2, 256, 256), np.uint16)
    path = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(path) as w:
        opts = {"tile": (64, 64), "compression": "zlib", "photometric": "minisblack"}
        w.write(image, subifds=1, metadata={"axes": "CYX"}, **opts)
        w.write(image[:, ::2, ::2], subfiletype=1, **opts)
    layers = read_layers(str(path))
    assert [kw["name"] for _, kw, _ in layers] == ["two.ome [0]", "two.ome [1]"]
    for i, (data, _, _) in enumerate(layers):
        assert [d.shape for d in data] == [(256, 256), (128, 128)]
        np.testing.assert_array_equal(data[0][60:70, 200:], image[i, 60:70, 200:])
        np.testing.assert_array_equal(data[1][...], image[i, ::2, ::2])


def test_large_compressed_tiff_is_one_lazy_level(tmp_path, small_map_bytes):
    image = pixels((512, 512), np.uint16)
    tifffile.imwrite(tmp_path / "slide.tif", image, tile=(128, 128), compression="zlib")
    data, kwargs = one_layer(tmp_path / "slide.tif")
    assert isinstance(data, zarr.Array) and data.shape == (512, 512)
    assert "multiscale" not in kwargs and kwargs["units"] == ("pixel", "pixel")
    assert kwargs["contrast_limits"][1] > kwargs["contrast_limits"][0]
    np.testing.assert_array_equal(data[100:130, 7:9], image[100:130, 7:9])

    rgb = pixels((256, 384, 3))
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, tile=(64, 64), compression="zlib")
    data, kwargs = one_layer(tmp_path / "rgb.tif")
    assert isinstance(data, zarr.Array) and data.shape == (256, 384, 3) and kwargs["rgb"]


def test_small_plain_and_stacked_tiffs_are_read_as_before(tmp_path, small_map_bytes):
    tifffile.imwrite(tmp_path / "small.tif", pixels((64, 64)), compression="zlib")
    tifffile.imwrite(tmp_path / "plain.tif", pixels((512, 512)))  # memory-mapped
    stack = pixels((5, 256, 256))
    tifffile.imwrite(tmp_path / "stack.tif", stack, compression="zlib", photometric="minisblack")
    for name, shape in (("small", (64, 64)), ("plain", (512, 512)), ("stack", stack.shape)):
        data, kwargs = one_layer(tmp_path / f"{name}.tif")
        assert isinstance(data, np.ndarray) and data.shape == shape, name
        assert "multiscale" not in kwargs and "kind" not in kwargs["metadata"]["napari_sam"]
