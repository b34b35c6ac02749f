"""The reader's layer data in a real viewer: physical placement, patient orientation, labels."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from volume_files import volume_data, write_itk

from napari_sam._reader import read_layers

pytestmark = pytest.mark.gui


def add(viewer, path):
    """Add a reader's output as napari does when it opens a file: ``add_<type>(data, **kw)``."""
    added = []
    for data, kwargs, kind in read_layers(str(path)):
        layers = getattr(viewer, f"add_{kind}")(data, **kwargs)
        added.append(layers if isinstance(layers, list) else [layers])
    return added


def test_scan_and_its_labels_overlay_in_physical_space(make_napari_viewer_proxy, tmp_path):
    import SimpleITK as sitk

    data = volume_data()
    scan = write_itk(tmp_path / "scan.nii.gz", data)  # row and column axes mirrored
    seg = write_itk(tmp_path / "scan_seg.nii.gz", (data == 3000).astype(np.uint8))
    viewer = make_napari_viewer_proxy()
    (image,) = add(viewer, scan)[0]
    (labels,) = add(viewer, seg)[0]
    from napari.layers import Image, Labels

    assert isinstance(labels, Labels) and isinstance(image, Image)
    assert tuple(str(u) for u in image.units) == ("millimeter",) * 3
    np.testing.assert_allclose(image.scale, labels.scale)

    itk = sitk.ReadImage(str(scan))
    for index in [(0, 0, 0), (2, 3, 4), (6, 8, 10)]:
        world = image.data_to_world(index)
        np.testing.assert_allclose(
            world, itk.TransformIndexToPhysicalPoint(index[::-1])[::-1], atol=1e-4
        )
        # napari maps the world point back to the same voxel of both layers
        np.testing.assert_allclose(labels.world_to_data(world), index, atol=1e-6)
    # mirrored axes: the voxel with the larger column index is further left on screen
    assert image.data_to_world((0, 0, 10))[2] < image.data_to_world((0, 0, 0))[2]
    # the value under a world point is the file's voxel value
    assert image.get_value(image.data_to_world((3, 4, 5)), world=True) == data[3, 4, 5]


def test_channels_open_as_one_layer_each(make_napari_viewer_proxy, tmp_path):
    stack = np.zeros((4, 2, 8, 9), np.uint16)
    tifffile.imwrite(
        tmp_path / "two.tif", stack, imagej=True, resolution=(2.0, 2.0),
        metadata={"spacing": 3.0, "unit": "um", "axes": "ZCYX"},
    )  # fmt: skip
    viewer = make_napari_viewer_proxy()
    layers = add(viewer, tmp_path / "two.tif")[0]
    assert len(layers) == 2
    for layer in layers:
        assert layer.data.shape == (4, 8, 9)
        np.testing.assert_allclose(layer.scale, (3.0, 0.5, 0.5))
        assert tuple(str(u) for u in layer.units) == ("micrometer",) * 3
