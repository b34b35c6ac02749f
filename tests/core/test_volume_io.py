"""Reading volumes with their geometry and writing label files that keep it."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from volume_files import (
    FLIPPED_XYZ,
    ORIGIN_XYZ,
    SHAPE,
    SPACING_XYZ,
    rotated_xyz,
    volume_data,
    write_dicom_series,
    write_itk,
)

from napari_sam.core.errors import ImageError, NapariSamError
from napari_sam.core.geometry import VolumeGeometry
from napari_sam.core.io import LABEL_SUFFIXES, file_suffix, write_labels
from napari_sam.core.volume_io import (
    ITK_WRITE_SUFFIXES,
    guess_axes,
    looks_like_labels,
    read_volume,
)

MEDICAL = [".nii.gz", ".nii", ".nrrd", ".mha"]
IDENTITY_XYZ = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
DIRECTIONS = {"flipped": FLIPPED_XYZ, "oblique": rotated_xyz(30.0), "identity": IDENTITY_XYZ}


def _geometry_kwargs(name):
    return {"direction": DIRECTIONS[name]}


def assert_same_geometry(a, b, tol=1e-6):
    """Two SimpleITK images on the same voxel grid (NIfTI stores the affine in float32)."""
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=tol, atol=tol)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), rtol=tol, atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=tol)


def test_suffix_lists_agree():
    assert set(ITK_WRITE_SUFFIXES) <= set(LABEL_SUFFIXES)
    assert file_suffix("a/Scan.NII.GZ") == ".nii.gz"
    assert file_suffix("scan.nrrd") == ".nrrd"
    assert file_suffix("noext") == ""


# --- reading medical files ------------------------------------------------------------------


@pytest.mark.parametrize("suffix", MEDICAL)
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_read_medical_volume(tmp_path, suffix, direction):
    data = volume_data()
    path = write_itk(tmp_path / f"scan{suffix}", data, **_geometry_kwargs(direction))
    vol = read_volume(path)
    np.testing.assert_array_equal(vol.data, data)  # GetArrayFromImage order, as stored
    g = vol.geometry
    assert g.axes == "zyx" and g.shape == SHAPE and g.units == ("mm",) * 3
    np.testing.assert_allclose(g.spacing, SPACING_XYZ[::-1], rtol=1e-6)
    np.testing.assert_allclose(g.origin, ORIGIN_XYZ[::-1], atol=1e-4)
    assert vol.is_volume and not vol.has_channels and not vol.rgb
    assert vol.source == path

    # The geometry's affine maps voxel indices where SimpleITK does.
    image = sitk.ReadImage(str(path))
    for index in [(0, 0, 0), (6, 8, 10), (3.5, 1.25, 7.0)]:
        world = g.affine @ np.array([*index, 1.0])
        expected = image.TransformContinuousIndexToPhysicalPoint(index[::-1])
        np.testing.assert_allclose(world[:3], expected[::-1], atol=1e-4)


def test_axis_signs_scale_and_notice(tmp_path):
    flipped = read_volume(write_itk(tmp_path / "f.nii.gz", volume_data())).geometry
    assert flipped.axis_signs == (1, -1, -1)
    np.testing.assert_allclose(flipped.napari_scale(), (2.5, -0.8, -0.7), rtol=1e-6)
    assert flipped.notice is None

    oblique = read_volume(
        write_itk(tmp_path / "o.nii.gz", volume_data(), direction=rotated_xyz())
    ).geometry
    assert oblique.axis_signs is None
    np.testing.assert_allclose(oblique.napari_scale(), (2.5, 0.8, 0.7), rtol=1e-6)
    assert "rotated or swapped" in oblique.notice and "overlay it exactly" in oblique.notice


def test_read_4d_nifti(tmp_path):
    data = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    image = sitk.GetImageFromArray(data, isVector=False)
    image.SetSpacing((0.5, 0.6, 2.0, 3.0))
    sitk.WriteImage(image, str(tmp_path / "fmri.nii.gz"))
    vol = read_volume(tmp_path / "fmri.nii.gz")
    assert vol.geometry.axes == "tzyx" and vol.data.shape == (2, 3, 4, 5)
    assert vol.geometry.spacing == pytest.approx((3.0, 2.0, 0.6, 0.5))
    assert vol.geometry.units == ("", "mm", "mm", "mm")
    np.testing.assert_array_equal(vol.data, data)


def test_read_2d_nifti_is_an_image(tmp_path):
    data = volume_data()[0]
    image = sitk.GetImageFromArray(data)
    image.SetSpacing((0.3, 0.4))
    sitk.WriteImage(image, str(tmp_path / "xray.nii"))
    vol = read_volume(tmp_path / "xray.nii")
    assert not vol.is_volume and vol.geometry.axes == "yx"
    assert vol.geometry.spacing == pytest.approx((0.4, 0.3))


# --- writing labels with the geometry ----------------------------------------------------------


@pytest.mark.parametrize("out_suffix", MEDICAL)
@pytest.mark.parametrize("direction", ["flipped", "oblique"])
def test_labels_keep_the_geometry(tmp_path, out_suffix, direction):
    data = volume_data()
    scan = write_itk(tmp_path / "scan.nii.gz", data, **_geometry_kwargs(direction))
    vol = read_volume(scan)
    labels = np.zeros(vol.data.shape, np.int32)
    labels[vol.data == 3000] = 1  # the bright box: known voxels
    labels[0, 0, 0] = 2

    out = write_labels(tmp_path / f"labels{out_suffix}", labels, geometry=vol.geometry)
    assert out == tmp_path / f"labels{out_suffix}"
    written = sitk.ReadImage(str(out))
    assert_same_geometry(written, sitk.ReadImage(str(scan)))
    assert written.GetPixelID() == sitk.sitkUInt8  # the smallest type for labels 0..2
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), labels)

    # The box's physical corner is the same point in the scan and in the label file.
    corner = (4, 3, 2)  # (x, y, z) index of the box's first voxel
    np.testing.assert_allclose(
        written.TransformIndexToPhysicalPoint(corner),
        sitk.ReadImage(str(scan)).TransformIndexToPhysicalPoint(corner),
        atol=1e-4,
    )
    # ... and reading the labels back gives the scan's geometry and a labels guess.
    back = read_volume(out)
    np.testing.assert_allclose(back.geometry.affine, vol.geometry.affine, atol=1e-4)
    assert looks_like_labels(back.data, out.name)
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_labels_affine_in_nibabel(tmp_path):
    nib = pytest.importorskip("nibabel")
    scan = write_itk(tmp_path / "scan.nii.gz", volume_data(), direction=rotated_xyz(20.0))
    vol = read_volume(scan)
    out = write_labels(tmp_path / "seg.nii.gz", vol.data > 0, geometry=vol.geometry)
    a, b = nib.load(str(scan)), nib.load(str(out))
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-4)
    assert b.shape == a.shape == SHAPE[::-1]  # nibabel's (x, y, z)
    np.testing.assert_array_equal(np.asarray(b.dataobj), (vol.data > 0).T.astype(np.uint8))


def test_labels_from_a_micrometre_stack_get_mm(tmp_path):
    data = np.zeros((4, 6, 8), np.uint16)
    tifffile.imwrite(
        tmp_path / "stack.tif", data, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
        metadata={"spacing": 2.0, "unit": "micron", "axes": "ZYX"},
    )  # fmt: skip
    vol = read_volume(tmp_path / "stack.tif")
    assert vol.geometry.spacing == (2.0, 0.5, 0.5) and vol.geometry.units == ("um",) * 3
    write_labels(tmp_path / "l.nrrd", np.ones(data.shape, np.uint8), geometry=vol.geometry)
    assert sitk.ReadImage(str(tmp_path / "l.nrrd")).GetSpacing() == pytest.approx(
        (0.0005, 0.0005, 0.002)
    )


def test_labels_need_the_geometry_shape(tmp_path):
    g = VolumeGeometry.default((3, 4, 5))
    with pytest.raises(ImageError, match=r"shape \(3, 4, 6\) but the image .* \(3, 4, 5\)"):
        write_labels(tmp_path / "l.nii.gz", np.zeros((3, 4, 6), np.uint8), geometry=g)
    assert list(tmp_path.iterdir()) == []


def test_large_and_negative_labels_in_medical_files(tmp_path):
    labels = np.zeros((2, 3, 4), np.int64)
    labels[0, 0, 0], labels[1, 2, 3] = 70_000, -5
    write_labels(tmp_path / "l.mha", labels)
    back = sitk.ReadImage(str(tmp_path / "l.mha"))
    assert back.GetPixelID() == sitk.sitkInt32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)
    write_labels(tmp_path / "m.nii", np.full((2, 3, 4), 300))
    assert sitk.ReadImage(str(tmp_path / "m.nii")).GetPixelID() == sitk.sitkUInt16


def test_4d_labels_only_in_medical_files(tmp_path):
    write_labels(tmp_path / "l.nii.gz", np.zeros((2, 3, 4, 5), np.uint8))
    assert sitk.ReadImage(str(tmp_path / "l.nii.gz")).GetDimension() == 4
    with pytest.raises(ImageError, match="expected 2D or 3D labels"):
        write_labels(tmp_path / "l.tif", np.zeros((2, 3, 4, 5), np.uint8))


# --- DICOM series --------------------------------------------------------------------------


def test_dicom_series_from_folder_and_from_one_file(tmp_path):
    data = volume_data()
    files = write_dicom_series(tmp_path / "ct", data, series_uid="1.2.826.0.1.3680043.2.1143.1")
    for where in (tmp_path / "ct", files[3]):
        vol = read_volume(where)
        np.testing.assert_array_equal(vol.data, data)
        assert vol.modality == "CT"
        assert vol.geometry.shape == SHAPE
        np.testing.assert_allclose(vol.geometry.spacing, SPACING_XYZ[::-1], rtol=1e-5)
        np.testing.assert_allclose(vol.geometry.origin, ORIGIN_XYZ[::-1], atol=1e-4)


def test_dicom_file_without_extension(tmp_path):
    files = write_dicom_series(tmp_path / "s", volume_data(), series_uid="1.2.3.4.5")
    bare = files[0].with_suffix("")
    files[0].rename(bare)
    assert read_volume(bare).data.shape == SHAPE


def test_folder_with_two_series(tmp_path):
    a, b = volume_data(seed=1), volume_data((5, 9, 11), seed=2)
    write_dicom_series(tmp_path / "mixed", a, series_uid="1.2.3.1", prefix="a")
    other = write_dicom_series(tmp_path / "mixed", b, series_uid="1.2.3.2", prefix="b")
    with pytest.raises(ImageError, match=r"holds 2 DICOM series .*1\.2\.3\.1 \(7 files\)") as info:
        read_volume(tmp_path / "mixed")
    assert "open one file of the series you want" in str(info.value)
    assert "\n" not in str(info.value)
    # One file picks its own series.
    np.testing.assert_array_equal(read_volume(other[0]).data, b)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ImageError, match="holds no DICOM series"):
        read_volume(tmp_path)


# --- TIFF and arrays without metadata -------------------------------------------------------


def test_imagej_hyperstack_with_time(tmp_path):
    data = np.arange(3 * 4 * 5 * 6, dtype=np.uint16).reshape(3, 4, 5, 6)
    tifffile.imwrite(
        tmp_path / "tl.tif", data, imagej=True, resolution=(4.0, 4.0),
        metadata={"spacing": 1.5, "unit": "um", "axes": "TZYX", "finterval": 30},
    )  # fmt: skip
    vol = read_volume(tmp_path / "tl.tif")
    assert vol.geometry.axes == "tzyx"
    assert vol.geometry.spacing == (30.0, 1.5, 0.25, 0.25)
    assert vol.geometry.units == ("s", "um", "um", "um")
    np.testing.assert_array_equal(vol.data, data)


def test_ome_tiff_with_channels(tmp_path):
    data = np.arange(5 * 2 * 6 * 7, dtype=np.uint16).reshape(5, 2, 6, 7)
    tifffile.imwrite(
        tmp_path / "c.ome.tif", data, ome=True,
        metadata={"axes": "ZCYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2,
                  "PhysicalSizeZ": 500, "PhysicalSizeZUnit": "nm"},
    )  # fmt: skip
    vol = read_volume(tmp_path / "c.ome.tif")
    assert vol.geometry.axes == "zyx" and vol.has_channels and not vol.rgb
    assert vol.data.shape == (5, 6, 7, 2)  # channels moved last
    np.testing.assert_array_equal(vol.data[..., 1], data[:, 1])
    assert vol.geometry.spacing == (500.0, 0.2, 0.2)
    assert vol.geometry.units == ("nm", "um", "um")


def test_plain_tiff_stack_and_rgb(tmp_path):
    tifffile.imwrite(tmp_path / "z.tif", np.zeros((12, 5, 6), np.float32))
    vol = read_volume(tmp_path / "z.tif")
    assert vol.geometry.axes == "zyx" and vol.geometry.units == ("",) * 3
    assert vol.geometry.spacing == (1.0, 1.0, 1.0)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((5, 6, 3), np.uint8))
    rgb = read_volume(tmp_path / "rgb.tif")
    assert rgb.rgb and rgb.geometry.axes == "yx" and not rgb.is_volume


def test_tiff_axes_that_cannot_be_mapped(tmp_path):
    tifffile.imwrite(
        tmp_path / "q.tif", np.zeros((2, 3, 4, 5, 6), np.uint8), photometric="minisblack"
    )
    with pytest.raises(ImageError, match=r"cannot be told apart .*axes 'QQQYX'"):
        read_volume(tmp_path / "q.tif")


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((9, 11), ("yx", False, False)),
        ((9, 11, 3), ("yx", True, True)),
        ((90, 110, 5), ("yx", True, False)),
        ((5, 90, 110), ("zyx", False, False)),
        ((40, 90, 110), ("zyx", False, False)),
        ((4, 40, 90, 3), ("zyx", True, True)),
        ((4, 40, 90, 110), ("tzyx", False, False)),
    ],
)
def test_guess_axes(shape, expected):
    assert guess_axes(shape) == expected


def test_npy_stack(tmp_path):
    np.save(tmp_path / "s.npy", np.zeros((20, 8, 9), np.int16))
    vol = read_volume(tmp_path / "s.npy")
    assert vol.geometry.axes == "zyx" and vol.geometry == VolumeGeometry.default((20, 8, 9))


# --- bad files: one clear line --------------------------------------------------------------


def _one_line(info) -> str:
    text = str(info.value)
    assert "\n" not in text and "sitk::" not in text and ".cxx" not in text, text
    assert isinstance(info.value, NapariSamError)
    return text


def test_truncated_gzip(tmp_path):
    path = write_itk(tmp_path / "scan.nii.gz", volume_data((20, 30, 40)))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageError, match=r"scan\.nii\.gz: the gzip data is truncated") as info:
        read_volume(path)
    _one_line(info)


def test_truncated_plain_nifti(tmp_path):
    path = write_itk(tmp_path / "scan.nii", volume_data())
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ImageError, match=r"truncated \(\d+ of the \d+ bytes") as info:
        read_volume(path)
    _one_line(info)


def test_gzip_that_is_not_nifti(tmp_path):
    with gzip.open(tmp_path / "x.nii.gz", "wb") as f:
        f.write(b"hello, not a NIfTI header at all" * 20)
    with pytest.raises(ImageError, match=r"not a readable NIfTI file") as info:
        read_volume(tmp_path / "x.nii.gz")
    _one_line(info)


@pytest.mark.parametrize(("name", "fmt"), [("a.nrrd", "NRRD"), ("a.mha", "MetaImage")])
def test_garbage_medical_file(tmp_path, name, fmt):
    (tmp_path / name).write_bytes(b"\x00\x01garbage" * 50)
    with pytest.raises(ImageError, match=rf"not a readable {fmt} file") as info:
        read_volume(tmp_path / name)
    _one_line(info)


def test_truncated_nrrd(tmp_path):
    path = write_itk(tmp_path / "a.nrrd", volume_data((20, 30, 40)))
    path.write_bytes(path.read_bytes()[:-2000])
    with pytest.raises(ImageError, match=r"damaged or truncated NRRD file") as info:
        read_volume(path)
    _one_line(info)


def test_vector_image_is_refused(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True)
    sitk.WriteImage(image, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(ImageError, match="3 values per voxel"):
        read_volume(tmp_path / "rgb.nrrd")


def test_missing_and_unsupported(tmp_path):
    with pytest.raises(ImageError, match=r"nope\.nii\.gz: file not found"):
        read_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "a.czi").write_bytes(b"x" * 200)
    with pytest.raises(ImageError, match=r"unsupported file type '\.czi'"):
        read_volume(tmp_path / "a.czi")


# --- labels or image? -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "name", "expected"),
    [
        (np.zeros((3, 4), np.uint8), "brain1_label.nii.gz", True),
        (np.arange(100, dtype=np.uint16).reshape(10, 10), "liver_seg.nrrd", True),
        (np.arange(100, dtype=np.uint16).reshape(10, 10), "scan.nrrd", False),  # 100 values
        (np.array([[0, 1], [2, 5]], np.uint8), "scan.nrrd", True),  # few values
        (np.array([[-1000, 40], [0, 1]], np.int16), "ct_seg.nii", False),  # negative: HU
        (np.zeros((3, 4), np.float32), "mask.tif", False),  # floats are intensities
        (np.zeros((3, 4), bool), "x.npy", True),
        (np.arange(100, dtype=np.uint8).reshape(10, 10), "segue_image.tif", False),
    ],
)
def test_looks_like_labels(data, name, expected):
    assert looks_like_labels(data, name) is expected


def test_bundled_sample_scan():
    """The MRI shipped with the package reads with its documented geometry."""
    from napari_sam._sample_data import SAMPLES

    image = read_volume(SAMPLES / "brain1_image.nii.gz")
    mask = read_volume(SAMPLES / "brain1_label.nii.gz")
    assert image.data.shape == mask.data.shape == (25, 256, 256)
    assert image.geometry.spacing == pytest.approx((6.5, 0.78125, 0.78125))
    assert image.geometry == mask.geometry
    assert image.geometry.axis_signs == (1, -1, 1)
    assert not looks_like_labels(image.data, "brain1_image.nii.gz")
    assert looks_like_labels(mask.data, "brain1_label.nii.gz")
    assert np.flatnonzero(mask.data.any(axis=(1, 2))).tolist() == list(range(11, 18))
