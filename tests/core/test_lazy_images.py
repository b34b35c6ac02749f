"""OME-Zarr folders and large compressed TIFFs opened without reading their pixels."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr_files import pixels, write_ome_zarr, write_plate

from napari_sam.core import lazy_arrays, lazy_images
from napari_sam.core.errors import ImageError
from napari_sam.core.lazy_images import SqueezedView, open_lazy_image, open_ome_zarr
from napari_sam.core.volume_io import read_volume


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_grey_image_is_level_0_with_its_spacing(tmp_path, version):
    image = pixels((100, 140))
    path = write_ome_zarr(
        tmp_path / "a.ome.zarr",
        image,
        "yx",
        (0.5, 0.25),
        version=version,
        levels=3,
        ms_scale=(2.0, 2.0),
    )
    lazy = open_lazy_image(path)
    assert lazy.kind == f"OME-Zarr {version} (level 0 of 3)"
    assert not lazy.is_volume and lazy.channel_axis is None and not lazy.rgb
    g = lazy.geometry
    assert (g.axes, g.shape, g.spacing, g.units) == ("yx", (100, 140), (1.0, 0.5), ("um", "um"))
    assert isinstance(lazy.plane, SqueezedView) and lazy.plane.shape == (100, 140)
    assert lazy.plane.chunks == (32, 32)
    np.testing.assert_array_equal(lazy.plane[10:40, 5:90], image[10:40, 5:90])
    np.testing.assert_array_equal(np.asarray(lazy.plane), image)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_channels_and_size_1_axes(tmp_path, version):
    image = pixels((1, 3, 1, 64, 80), np.uint16)
    path = write_ome_zarr(
        tmp_path / "b.zarr", image, "tczyx", (1.0, 1.0, 2.0, 0.3, 0.3), version=version, levels=2
    )
    lazy = open_lazy_image(path)
    assert not lazy.is_volume and lazy.channel_axis == 0
    assert lazy.plane.shape == (3, 64, 80) and lazy.dtype == np.uint16
    assert lazy.geometry.shape == (64, 80) and lazy.geometry.spacing == pytest.approx((0.3, 0.3))
    np.testing.assert_array_equal(lazy.plane[:, 3:9, -5:], image[0, :, 0, 3:9, -5:])
    np.testing.assert_array_equal(lazy.plane[1], image[0, 1, 0])
    np.testing.assert_array_equal(lazy.plane[..., 7], image[0, :, 0, :, 7])


def test_ome_zarr_volume_is_read_whole_with_channels_last(tmp_path):
    image = pixels((2, 5, 30, 40))
    path = write_ome_zarr(tmp_path / "v.ome.zarr", image, "czyx", (1.0, 4.0, 0.5, 0.5))
    lazy = open_ome_zarr(path)
    assert lazy.is_volume and lazy.geometry.axes == "zyx"
    assert lazy.geometry.spacing == (4.0, 0.5, 0.5)
    with pytest.raises(ImageError, match="is a volume"):
        lazy.plane  # noqa: B018
    volume = read_volume(path)
    assert volume.geometry == lazy.geometry and volume.has_channels
    np.testing.assert_array_equal(volume.data, np.moveaxis(image, 0, -1))


def test_too_large_a_volume_is_refused_in_one_line(tmp_path, monkeypatch):
    path = write_ome_zarr(tmp_path / "v.ome.zarr", pixels((4, 30, 40)), "zyx", (1, 1, 1))
    fits = lazy_images.volume_fits
    assert fits(10**6) and not fits(2**62)  # a megabyte fits anywhere, 4 EiB nowhere
    monkeypatch.setattr(lazy_images, "volume_fits", lambda nbytes: nbytes < 100)
    with pytest.raises(ImageError) as info:
        read_volume(path)
    message = str(info.value)
    assert "\n" not in message and "more than half of this machine's memory" in message


def test_bioformats2raw_layout_gives_its_first_image(tmp_path):
    root = zarr.open_group(str(tmp_path / "r.zarr"), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    image = pixels((20, 30))
    write_ome_zarr(tmp_path / "r.zarr" / "0", image, "yx", (1.0, 1.0))
    np.testing.assert_array_equal(np.asarray(open_lazy_image(tmp_path / "r.zarr").plane), image)


def _no_multiscales(path):
    zarr.open_group(str(path), mode="w", zarr_format=2).create_array("0", data=pixels((8, 8)))


def _missing_level(path):
    write_ome_zarr(path, pixels((8, 8)), "yx", (1, 1))
    g = zarr.open_group(str(path), mode="r+")
    ms = g.attrs["multiscales"]
    ms[0]["datasets"][0]["path"] = "s0"
    g.attrs["multiscales"] = ms


def _wrong_axes(path):
    write_ome_zarr(path, pixels((8, 8)), "yx", (1, 1))
    g = zarr.open_group(str(path), mode="r+")
    ms = g.attrs["multiscales"]
    ms[0]["axes"] = ms[0]["axes"] + [{"name": "z", "type": "space"}]
    g.attrs["multiscales"] = ms


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.mkdir(), "not a zarr group"),
        (write_plate, "it is an HCS plate; give the folder of one image in it (e.g. A/1/0)."),
        (_no_multiscales, "no OME-NGFF 'multiscales' metadata"),
        (_missing_level, "the level 0 array 's0' is missing"),
        (_wrong_axes, "'axes' metadata does not fit the level 0 array (2 axes)"),
    ],
)
def test_broken_zarr_folders_give_one_line(tmp_path, make, reason):
    path = tmp_path / "bad.zarr"
    make(path)
    with pytest.raises(ImageError) as info:
        open_lazy_image(path)
    message = str(info.value)
    assert message.startswith(f"Cannot read OME-Zarr image {path}: ")
    assert reason in message and "\n" not in message


def test_other_paths_are_not_lazy_images(tmp_path):
    (tmp_path / "dicom").mkdir()
    np.save(tmp_path / "a.npy", pixels((8, 8)))
    assert open_lazy_image(tmp_path / "dicom") is None
    assert open_lazy_image(tmp_path / "a.npy") is None


# --------------------------------------------------------------------------------------------
# large TIFF files


@pytest.fixture
def small_map_bytes(monkeypatch):
    """TIFFs of 64 KiB and more count as large (tests stay small)."""
    monkeypatch.setattr(lazy_arrays, "MAP_BYTES", 64 * 1024)


def test_large_compressed_tiled_tiff_is_a_zarr_view(tmp_path, small_map_bytes):
    image = pixels((512, 512))
    path = tmp_path / "slide.tif"
    tifffile.imwrite(
        path,
        image,
        tile=(128, 128),
        compression="zlib",
        resolution=(4.0, 4.0),
        resolutionunit="CENTIMETER",
    )
    lazy = open_lazy_image(path)
    assert lazy.kind == "TIFF (adobe_deflate, tiled 128 x 128)"
    assert isinstance(lazy.plane, SqueezedView) and lazy.plane.chunks == (128, 128)
    assert lazy.geometry.spacing == (2500.0, 2500.0) and lazy.geometry.units == ("um", "um")
    np.testing.assert_array_equal(lazy.plane[100:300, 250:260], image[100:300, 250:260])
    np.testing.assert_array_equal(np.asarray(lazy.plane), image)


def test_large_rgb_and_pyramidal_tiffs(tmp_path, small_map_bytes):
    rgb = pixels((256, 384, 3))
    tifffile.imwrite(
        tmp_path / "rgb.tif", rgb, tile=(64, 64), compression="zlib", photometric="rgb"
    )
    lazy = open_lazy_image(tmp_path / "rgb.tif")
    assert lazy.rgb and lazy.channel_axis == 2 and lazy.plane.shape == (256, 384, 3)
    np.testing.assert_array_equal(lazy.plane[5:9, 300:], rgb[5:9, 300:])

    grey = pixels((512, 256), np.uint16)
    path = tmp_path / "pyramid.ome.tif"
    meta = {"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    with tifffile.TiffWriter(path) as w:
        w.write(grey, tile=(128, 128), compression="zlib", subifds=1, metadata=meta)
        w.write(grey[::2, ::2], tile=(128, 128), compression="zlib", subfiletype=1)
    lazy = open_lazy_image(path)
    assert lazy.kind == "TIFF (adobe_deflate, tiled 128 x 128, 2 levels)"
    assert lazy.plane.shape == (512, 256) and lazy.geometry.spacing == (0.5, 0.5)
    np.testing.assert_array_equal(lazy.plane[400:, :7], grey[400:, :7])


def test_small_plain_and_stacked_tiffs_are_read_as_before(tmp_path, small_map_bytes):
    tifffile.imwrite(tmp_path / "small.tif", pixels((64, 64)), compression="zlib")
    tifffile.imwrite(tmp_path / "plain.tif", pixels((512, 512)))  # mapped by tiff_pixels
    stack = pixels((5, 256, 256))
    tifffile.imwrite(tmp_path / "stack.tif", stack, compression="zlib", photometric="minisblack")
    for name in ("small.tif", "plain.tif", "stack.tif"):
        assert open_lazy_image(tmp_path / name) is None, name


def test_damaged_tiff_gives_one_line(tmp_path):
    path = tmp_path / "bad.tif"
    path.write_bytes(b"II*\x00garbage")
    with pytest.raises(ImageError, match=f"^Cannot read image {path}: "):
        open_lazy_image(path)


def test_squeezed_view_indexing():
    data = pixels((1, 3, 1, 10, 12))
    view = SqueezedView(data, {0: 0, 2: 0}, channel_axis=0)
    assert view.shape == (3, 10, 12) and view.ndim == 3 and len(view) == 3
    np.testing.assert_array_equal(view[-1, 2:5], data[0, -1, 0, 2:5])
    np.testing.assert_array_equal(view[..., 3], data[0, :, 0, :, 3])
    np.testing.assert_array_equal(np.asarray(view, dtype=np.float32), data[0, :, 0])
    with pytest.raises(TypeError):
        view[[0, 1]]
    with pytest.raises(IndexError):
        view[0, 0, 0, 0]


def test_levels_are_views_like_level_0(tmp_path):
    image = pixels((1, 2, 64, 80))
    path = write_ome_zarr(tmp_path / "p.zarr", image, "tcyx", (1, 1, 1, 1), levels=3)
    lazy = open_lazy_image(path)
    assert lazy.levels[0] is lazy.data and len(lazy.levels) == 3
    assert [v.shape for v in lazy.levels] == [(2, 64, 80), (2, 32, 40), (2, 16, 20)]
    np.testing.assert_array_equal(np.asarray(lazy.levels[2]), image[0, :, ::4, ::4])


def test_a_lower_level_that_does_not_fit_is_one_line(tmp_path):
    path = write_ome_zarr(tmp_path / "p.zarr", pixels((2, 16, 16)), "cyx", (1, 1, 1), levels=2)
    zarr.open_group(str(path), mode="r+").create_array("1", data=pixels((3, 8, 8)), overwrite=True)
    with pytest.raises(ImageError, match=r"level 1 \('1'\) does not fit level 0 \(shape \(3, 8"):
        open_lazy_image(path)


def test_looks_like_ome_zarr(tmp_path):
    assert lazy_images.looks_like_ome_zarr(
        write_ome_zarr(tmp_path / "a", pixels((4, 4)), "yx", (1, 1))
    )
    v5 = write_ome_zarr(tmp_path / "b", pixels((4, 4)), "yx", (1, 1), version="0.5")
    assert lazy_images.looks_like_ome_zarr(v5)
    (tmp_path / "c.ome.zarr").mkdir()  # its name says so (reading it will say what is wrong)
    assert lazy_images.looks_like_ome_zarr(tmp_path / "c.ome.zarr")
    zarr.open_group(str(tmp_path / "d.zarr"), mode="w").create_array("0", data=pixels((4, 4)))
    assert not lazy_images.looks_like_ome_zarr(tmp_path / "d.zarr")
    assert not lazy_images.looks_like_ome_zarr(tmp_path / "d.zarr" / "zarr.json")


def test_squeezed_view_take_keeps_one_channel():
    data = pixels((1, 3, 1, 10, 12))
    view = SqueezedView(data, {0: 0, 2: 0}, channel_axis=0)
    one = view.take(0, 2)
    assert one.shape == (10, 12) and one.size == 120 and one.channel_axis is None
    np.testing.assert_array_equal(one[1:4, -2:], data[0, 2, 0, 1:4, -2:])
    row = SqueezedView(data[0, 0], None, channel_axis=2).take(1, -1)  # the last row
    assert row.shape == (1, 12) and row.channel_axis == 1
    np.testing.assert_array_equal(row[...], data[0, 0, :, 9])
    with pytest.raises(IndexError):
        view.take(0, 3)
