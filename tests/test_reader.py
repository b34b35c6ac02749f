"""The napari reader contribution, called as napari would call it (no viewer needed)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from volume_files import rotated_xyz, volume_data, write_dicom_series, write_itk

from napari_sam._reader import GeometryNotice, get_reader, layer_data, read_layers
from napari_sam.core.errors import ImageError
from napari_sam.core.geometry import VolumeGeometry

MANIFEST = Path(__file__).parents[1] / "src" / "napari_sam" / "napari.yaml"


def test_manifest_declares_the_reader():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()  # every python_name resolves
    (reader,) = manifest.contributions.readers
    assert reader.accepts_directories
    for pattern in ("*.nii", "*.nii.gz", "*.nrrd", "*.mha", "*.mhd", "*.dcm", "*.tif"):
        assert pattern in reader.filename_patterns
    command = next(c for c in manifest.contributions.commands if c.id == reader.command)
    assert command.python_name == "napari_sam._reader:get_reader"
    samples = {s.key: s.command for s in manifest.contributions.sample_data}
    assert samples["mri_brain"] == "napari-sam-kit.sample_mri_brain"


def test_get_reader_accepts_scans_and_dicom_folders(tmp_path):
    scan = write_itk(tmp_path / "scan.nii.gz", volume_data())
    assert get_reader(str(scan)) is read_layers
    assert get_reader([str(scan)]) is read_layers
    write_dicom_series(tmp_path / "ct", volume_data(), series_uid="1.2.3.9")
    assert get_reader(str(tmp_path / "ct")) is read_layers
    (tmp_path / "empty").mkdir()
    assert get_reader(str(tmp_path / "empty")) is None
    (tmp_path / "a.png").write_bytes(b"x")
    assert get_reader(str(tmp_path / "a.png")) is None  # napari's own reader does PNG
    assert get_reader([str(scan), str(tmp_path / "a.png")]) is None


def test_scan_opens_with_physical_geometry(tmp_path):
    scan = write_itk(tmp_path / "scan.nii.gz", volume_data())  # x and y mirrored
    ((data, kwargs, kind),) = read_layers(str(scan))
    assert kind == "image" and data.shape == (7, 9, 11)
    assert kwargs["name"] == "scan"
    np.testing.assert_allclose(kwargs["scale"], (2.5, -0.8, -0.7), rtol=1e-6)
    np.testing.assert_allclose(kwargs["translate"], (33.0, -20.25, 10.5), atol=1e-4)
    assert kwargs["units"] == ("mm", "mm", "mm")
    # values from -1000 to 3000, no DICOM modality: CT by its range, soft-tissue window
    assert kwargs["contrast_limits"] == (-160.0, 240.0)
    info = kwargs["metadata"]["napari_sam"]
    assert isinstance(info["geometry"], VolumeGeometry) and info["window"] == "soft-tissue"
    assert info["source"] == scan


def test_world_coordinates_are_physical(tmp_path):
    """napari's data -> world transform (scale, then translate) gives SimpleITK's points."""
    import SimpleITK as sitk

    scan = write_itk(tmp_path / "scan.nrrd", volume_data())
    ((_, kwargs, _),) = read_layers(str(scan))
    image = sitk.ReadImage(str(scan))
    for index in [(0, 0, 0), (6, 8, 10), (2, 3, 4)]:
        world = np.asarray(kwargs["scale"]) * index + np.asarray(kwargs["translate"])
        expected = image.TransformIndexToPhysicalPoint(index[::-1])[::-1]
        np.testing.assert_allclose(world, expected, atol=1e-4)


def test_label_file_opens_as_labels(tmp_path):
    seg = write_itk(tmp_path / "liver_seg.nii.gz", (volume_data() > 2000).astype(np.uint8))
    ((data, kwargs, kind),) = read_layers(str(seg))
    assert kind == "labels" and data.dtype == np.uint8
    assert "contrast_limits" not in kwargs
    assert kwargs["scale"][1] < 0  # same placement as the scan it belongs to


def test_oblique_scan_gives_a_notice(tmp_path):
    scan = write_itk(tmp_path / "obl.mha", volume_data(), direction=rotated_xyz(25.0))
    with pytest.warns(GeometryNotice, match="obl: this scan's axes are rotated or swapped"):
        ((_, kwargs, _),) = read_layers(str(scan))
    assert all(s > 0 for s in kwargs["scale"])
    assert "rotated" in kwargs["metadata"]["napari_sam"]["notice"]


def test_axis_aligned_scan_gives_no_notice(tmp_path):
    scan = write_itk(tmp_path / "ok.nii", volume_data())
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometryNotice)
        read_layers(str(scan))


def test_microscopy_stacks(tmp_path):
    stack = np.random.default_rng(0).integers(0, 4000, (6, 2, 10, 12), dtype=np.uint16)
    tifffile.imwrite(
        tmp_path / "cells.tif", stack, imagej=True, resolution=(5.0, 5.0),
        metadata={"spacing": 1.0, "unit": "micron", "axes": "ZCYX"},
    )  # fmt: skip
    ((data, kwargs, kind),) = read_layers(str(tmp_path / "cells.tif"))
    assert kind == "image" and data.shape == (6, 10, 12, 2)
    assert kwargs["channel_axis"] == -1 and "contrast_limits" not in kwargs
    assert kwargs["scale"] == (1.0, 0.2, 0.2) and kwargs["units"] == ("um", "um", "um")
    tifffile.imwrite(tmp_path / "plain.tif", stack[:, 0])
    ((_, kwargs, _),) = read_layers(str(tmp_path / "plain.tif"))
    assert kwargs["units"] == ("pixel",) * 3 and kwargs["scale"] == (1.0, 1.0, 1.0)
    lo, hi = kwargs["contrast_limits"]
    assert 0 <= lo < hi <= 4000  # the stack's own percentiles


def test_dicom_modality_decides_the_window(tmp_path):
    mri = np.abs(volume_data()).astype(np.int16)
    write_dicom_series(tmp_path / "mr", mri, series_uid="1.2.3.7", modality="MR")
    ((_, kwargs, _),) = read_layers(str(tmp_path / "mr"))
    assert kwargs["name"] == "mr" and kwargs["metadata"]["napari_sam"]["modality"] == "MR"
    assert "window" not in kwargs["metadata"]["napari_sam"]
    assert kwargs["contrast_limits"][0] >= 0


def test_bad_file_is_one_clear_error(tmp_path):
    path = write_itk(tmp_path / "scan.nii.gz", volume_data((20, 30, 40)))
    path.write_bytes(path.read_bytes()[:500])
    reader = get_reader(str(path))
    with pytest.raises(ImageError, match="truncated or corrupt"):
        reader(str(path))


def test_mri_sample():
    from napari_sam._sample_data import mri_brain

    (image, kw_image, kind_image), (mask, kw_mask, kind_mask) = mri_brain()
    assert (kind_image, kind_mask) == ("image", "labels")
    assert image.shape == mask.shape == (25, 256, 256)
    assert kw_image["scale"] == kw_mask["scale"] == pytest.approx((6.5, -0.78125, 0.78125))
    assert kw_image["translate"] == kw_mask["translate"]
    assert int(mask.max()) == 1 and int(mask.sum()) == 4137
    assert "window" not in kw_image["metadata"]["napari_sam"]  # MRI: percentiles
    assert 0 <= kw_image["contrast_limits"][0] < kw_image["contrast_limits"][1] <= 3057


def test_layer_data_can_be_forced(tmp_path):
    vol_path = write_itk(tmp_path / "seg.nii.gz", np.zeros((3, 4, 5), np.uint8))
    from napari_sam.core.volume_io import read_volume

    _, _, kind = layer_data(read_volume(vol_path), labels=False)
    assert kind == "image"


def test_unknown_units_show_as_pixels(tmp_path):
    tifffile.imwrite(
        tmp_path / "odd.tif", np.zeros((3, 4, 5), np.uint16), imagej=True,
        resolution=(2.0, 2.0), metadata={"spacing": 1.0, "unit": "furlong", "axes": "ZYX"},
    )  # fmt: skip
    ((_, kwargs, _),) = read_layers(str(tmp_path / "odd.tif"))
    assert kwargs["units"] == ("pixel",) * 3
    assert kwargs["metadata"]["napari_sam"]["geometry"].units == ("furlong",) * 3
