"""An OME-Zarr opened with napari-sam's reader in a real viewer: shown as a multiscale image
and segmented tile by tile, reading only the tiles a click needs (Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest
from gui_helpers import layer_named, object_click, record_plane_reads, wait_idle
from ome_zarr_files import pixels, write_ome_zarr

from napari_sam.core.lazy_images import SqueezedView
from napari_sam.core.synthetic import make_cells
from napari_sam.core.tiled_embedding import open_tiled
from napari_sam.core.tiled_prompts import predict_tiled
from napari_sam.core.tiling import TileGrid

pytestmark = pytest.mark.gui

SHAPE = (600, 1200)
TILE, HALO = (256, 256), (64, 64)
GRID = TileGrid(SHAPE, TILE, HALO)
SCALE, TRANSLATE = (0.5, 0.25), (100.0, -20.0)


def test_ome_zarr_is_read_only_where_a_click_needs_it(
    make_widget, qtbot, tiny_engine, tmp_path, monkeypatch
):
    syn = make_cells(
        SHAPE, n_objects=60, radius_range=(6, 11), seed=3, polarity="bright", colour=False
    )
    path = write_ome_zarr(
        tmp_path / "nuclei.ome.zarr", syn.image[np.newaxis, np.newaxis], "tcyx",
        (1.0, 1.0, *SCALE), levels=3, translation=(0.0, 0.0, *TRANSLATE), chunk=128,
    )  # fmt: skip
    reads = record_plane_reads(monkeypatch)
    viewer, widget = make_widget(engine=tiny_engine)
    widget.set_tiling(TILE, HALO)
    (layer,) = viewer.open(str(path), plugin="napari-sam-kit")
    wait_idle(qtbot, widget)
    assert widget.embedding is not None, widget.status.value
    assert layer.multiscale and len(layer.data) == 3 and layer.data.shape == SHAPE
    assert isinstance(layer.data[0], SqueezedView)  # level 0 without its size-1 t and c
    assert layer.name == "nuclei" and tuple(layer.scale) == SCALE
    assert tuple(layer.translate) == TRANSLATE
    assert tuple(str(u) for u in layer.units) == ("micrometer",) * 2
    assert layer.metadata["napari_sam"]["geometry"].shape == SHAPE
    # Opening the plane read a few small patches, not the plane.
    assert reads and max(h * w for h, w in reads) <= 64 * 64

    click = object_click(syn.labels, slice(250, 350), slice(440, 520))
    reads.clear()
    layer_named(viewer, "SAM points").add(click)
    wait_idle(qtbot, widget)
    assert reads == [GRID.block_shape], reads  # the clicked tile's block, nothing else
    rgb = widget.normalization_settings(layer).apply(syn.image)
    expected = predict_tiled(tiny_engine, open_tiled(tiny_engine, rgb, GRID), points=[click])
    assert expected.mask(0)[int(click[0]), int(click[1])]
    widget.commit()
    wait_idle(qtbot, widget)
    labels = layer_named(viewer, "SAM labels")
    assert np.array_equal(labels.data == 1, expected.mask(0))
    # Placed on the image: the clicked pixel has the same world point in both layers.
    np.testing.assert_allclose(labels.data_to_world(click), layer.data_to_world(click))


def test_ome_zarr_channels_open_as_layers(make_napari_viewer_proxy, tmp_path):
    image = pixels((2, 1, 96, 128), np.uint16)
    path = write_ome_zarr(tmp_path / "two.zarr", image, "czyx", (1.0, 3.0, 0.5, 0.5), levels=2)
    viewer = make_napari_viewer_proxy()
    layers = viewer.open(str(path), plugin="napari-sam-kit")
    assert [layer.name for layer in layers] == ["two [0]", "two [1]"]
    for i, layer in enumerate(layers):
        assert layer.multiscale and layer.data.shapes == ((96, 128), (48, 64))
        assert layer.colormap.name == ("magenta", "green")[i]
        # napari shows a level of it: the value under a point is the file's
        level, value = layer.get_value((40, 70))
        step = 2**level
        assert value == image[i, 0, ::step, ::step][40 // step, 70 // step]
