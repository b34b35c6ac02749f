"""Tiling in the widget: settings, clicks and boxes in tiles, tiled auto segment, the tiles'
display, cancel, and the on-disk store reused by a later session (Xvfb).

Images are 600 x 1200 with tiles of 256 px and a halo of 64 (blocks of 384 x 384, 3 x 5
tiles) unless said otherwise, so that only the tiles a test needs are embedded.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from gui_helpers import (
    GeometricEngine,
    box_mask,
    layer_named,
    object_click,
    record_plane_reads,
    wait_idle,
)

from napari_sam.core.errors import Cancelled, NapariSamError
from napari_sam.core.prepared_plane import PreparedPlane
from napari_sam.core.synthetic import make_cells
from napari_sam.core.tiled_automatic import segment_tiled
from napari_sam.core.tiled_embedding import open_tiled
from napari_sam.core.tiled_prompts import plan_tiles, predict_tiled
from napari_sam.core.tiling import TileGrid, auto_grid

pytestmark = pytest.mark.gui

SHAPE = (600, 1200)
TILE, HALO = (256, 256), (64, 64)
GRID = TileGrid(SHAPE, TILE, HALO)


def nuclei(shape=SHAPE, seed=3):
    return make_cells(
        shape, n_objects=60, radius_range=(6, 11), seed=seed, polarity="bright", colour=False
    )


class CountingEngine(GeometricEngine):
    """Counts the encoder runs (tiles embedded, not read from a store)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.embeds = 0

    def embed(self, rgb, **kwargs):
        self.embeds += 1
        return super().embed(rgb, **kwargs)


class StuckEngine(GeometricEngine):
    """An encoder that runs until it is cancelled (a tile that takes long)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.entered = threading.Event()

    def embed(self, rgb, *, progress=None, cancel=None, **kwargs):
        self.entered.set()
        deadline = time.monotonic() + 30
        while not cancel() and time.monotonic() < deadline:
            time.sleep(0.01)
        raise Cancelled("embedding cancelled")


def open_tiled_image(make_widget, qtbot, engine, image, tiling=TILE, halo=HALO, **kwargs):
    """Viewer + widget with tiling set before the image arrives, idle."""
    viewer, widget = make_widget(engine=engine)
    widget.set_tiling(tiling, halo)
    layer = viewer.add_image(image, name="img", **kwargs)
    wait_idle(qtbot, widget)
    assert widget.embedding is not None, widget.status.value
    return viewer, widget, layer


def tile_state_column(widget):
    return list(widget.tiles_layer.features["state"])


# ------------------------------------------------------------------------------------------
# Settings and display
# ------------------------------------------------------------------------------------------


def test_tiling_settings_and_tiles_layer(make_widget, qtbot, small_model):
    viewer, widget = make_widget(engine=GeometricEngine(small_model))
    image = viewer.add_image(nuclei().image, name="img", scale=(0.5, 2.0), translate=(10.0, -5.0))
    wait_idle(qtbot, widget)
    assert widget.tiling_mode.value == "off" and widget.tile_grid is None
    assert widget.tiles_layer is None
    assert widget.embedding.original_size == SHAPE  # embedded whole, as before

    widget.set_tiling(TILE, HALO)
    wait_idle(qtbot, widget)
    assert widget.tile_grid == GRID and len(GRID) == 15
    assert widget.tiles_info.value == "15 tiles of 384 x 384 (halo 64): 0 embedded"
    layer = layer_named(viewer, "SAM tiles")
    assert layer == widget.tiles_layer
    assert len(layer.data) == 15, len(layer.data)
    assert tile_state_column(widget) == ["not embedded"] * 15
    assert layer not in widget.boxes_layer.choices  # tiles are not boxes
    # Placed like the image: tile 6's core (rows 200-400, cols 240-480) in world coordinates.
    core = GRID.tiles[6].core
    assert core == (200, 240, 400, 480)
    world = np.array([layer.data_to_world(v) for v in layer.data[6]])
    assert world.min(axis=0) == pytest.approx([10 + 0.5 * 199.5, -5 + 2 * 239.5])
    assert world.max(axis=0) == pytest.approx([10 + 0.5 * 399.5, -5 + 2 * 479.5])
    assert widget.embedding.grid == GRID  # the plane's tiles, nothing embedded yet
    assert widget.tiles_embedded == []

    # auto tiles only when objects would shrink too much: not at 32 px, yes at 8 px.
    widget.set_tiling("auto")
    wait_idle(qtbot, widget)
    assert widget.tile_grid is None and widget.tiles_layer is None
    assert "embedded whole" in widget.tiles_info.value
    widget.tiling_panel.object_size.value = 8
    wait_idle(qtbot, widget)
    assert widget.tile_grid == auto_grid(SHAPE, 8) and len(widget.tile_grid) == 8
    assert len(layer_named(viewer, "SAM tiles").data) == 8

    widget.set_tiling("off")
    wait_idle(qtbot, widget)
    assert widget.tiles_layer is None and "SAM tiles" not in [x.name for x in viewer.layers]
    assert not hasattr(widget.embedding, "grid")
    with pytest.raises(NapariSamError, match="tiling must be"):
        widget.set_tiling("sometimes")
    assert image in viewer.layers


# ------------------------------------------------------------------------------------------
# Clicks and boxes
# ------------------------------------------------------------------------------------------


def test_click_with_tiling_equals_core_and_commits_once(make_widget, qtbot, tiny_engine):
    syn = nuclei()
    viewer, widget, _ = open_tiled_image(make_widget, qtbot, tiny_engine, syn.image)
    # A nucleus near the border of tiles 6 and 7 (column 480).
    click = object_click(syn.labels, slice(250, 350), slice(440, 520))

    layer_named(viewer, "SAM points").add(click)
    wait_idle(qtbot, widget)
    rgb = widget.plane_embedder.embedded.rgb
    expected = predict_tiled(tiny_engine, open_tiled(tiny_engine, rgb, GRID), points=[click])
    preview = layer_named(viewer, "SAM preview").data > 0
    assert preview.shape == SHAPE and preview.any()
    assert np.array_equal(preview, expected.mask(0))
    # Only the tile that decoded the click was embedded, and the display says so.
    [used] = expected.tiles_of(0)
    assert widget.tiles_embedded == [used]
    states = tile_state_column(widget)
    assert states[used] == "embedded" and states.count("not embedded") == 14
    assert "1 embedded" in widget.tiles_info.value

    widget.commit()
    wait_idle(qtbot, widget)
    labels = layer_named(viewer, "SAM labels")
    assert np.array_equal(labels.data == 1, expected.mask(0)) and labels.data.max() == 1
    labels.undo()  # one undo step
    assert not labels.data.any()


def _dask(image):
    import dask.array as da

    return da.from_array(image, chunks=(128, 128))


def _zarr_pyramid(image):
    import zarr

    levels = []
    for k in (1, 2, 4):
        level = image[::k, ::k]
        z = zarr.create_array(
            store=zarr.storage.MemoryStore(),
            shape=level.shape,
            chunks=(128, 128),
            dtype=level.dtype,
        )
        z[:] = level
        levels.append(z)
    return levels


@pytest.mark.parametrize("make_lazy", [_dask, _zarr_pyramid], ids=["dask", "multiscale-zarr"])
def test_a_lazy_image_is_read_only_where_tiles_are_needed(
    make_widget, qtbot, tiny_engine, monkeypatch, make_lazy
):
    syn = nuclei()
    reads = record_plane_reads(monkeypatch)
    data = make_lazy(syn.image)
    multiscale = isinstance(data, list)
    viewer, widget, layer = open_tiled_image(
        make_widget, qtbot, tiny_engine, data, multiscale=multiscale
    )
    assert layer.multiscale == multiscale
    # Opening the plane read a few small patches (its identity), not the plane.
    assert reads and max(h * w for h, w in reads) <= 64 * 64
    assert isinstance(widget.plane_embedder.embedded.rgb, PreparedPlane)

    click = object_click(syn.labels, slice(250, 350), slice(440, 520))
    reads.clear()
    layer_named(viewer, "SAM points").add(click)
    wait_idle(qtbot, widget)
    # The click needed one tile: its 384 x 384 block is all that was read.
    assert reads == [GRID.block_shape], reads
    rgb = widget.normalization_settings(layer).apply(syn.image)
    expected = predict_tiled(tiny_engine, open_tiled(tiny_engine, rgb, GRID), points=[click])
    assert np.array_equal(layer_named(viewer, "SAM preview").data > 0, expected.mask(0))
    widget.commit()
    wait_idle(qtbot, widget)
    labels = layer_named(viewer, "SAM labels")
    assert np.array_equal(labels.data == 1, expected.mask(0))


def test_box_across_tiles_gives_one_object(make_widget, qtbot, small_model):
    engine = GeometricEngine(small_model)
    viewer, widget, _ = open_tiled_image(make_widget, qtbot, engine, nuclei().image)
    # Larger than a block (384 px): decoded by every tile whose core it meets, merged.
    box = (150, 300, 450, 800)
    rows = [[box[0], box[1]], [box[0], box[3]], [box[2], box[3]], [box[2], box[1]]]
    boxes = layer_named(viewer, "SAM boxes")
    boxes.add_rectangles(np.array(rows, float))
    wait_idle(qtbot, widget)
    assert len(widget.preview.objects) == 1
    preview = layer_named(viewer, "SAM preview").data
    assert set(np.unique(preview)) == {0, 1}
    assert np.array_equal(preview == 1, box_mask(SHAPE, box))
    plan = plan_tiles(GRID, widget.preview.calls[0].prompts)
    assert len(plan[0]) > 1  # really merged from several tiles
    assert widget.tiles_embedded == sorted(t for t, _ in plan[0])

    widget.commit()
    wait_idle(qtbot, widget)
    labels = layer_named(viewer, "SAM labels")
    assert set(np.unique(labels.data)) == {0, 1}
    assert np.array_equal(labels.data == 1, box_mask(SHAPE, box))


def test_removing_the_tiles_layer_and_turning_tiling_off(make_widget, qtbot, small_model):
    engine = GeometricEngine(small_model)
    viewer, widget, _ = open_tiled_image(make_widget, qtbot, engine, nuclei().image)
    viewer.layers.remove(layer_named(viewer, "SAM tiles"))  # the user removes it
    assert widget.tiles_layer is None and not widget.show_tiles.value
    layer_named(viewer, "SAM points").add([300, 600])
    wait_idle(qtbot, widget)
    assert widget.tiles_layer is None  # not forced back
    assert len(widget.tiles_embedded) == 1 and "1 embedded" in widget.tiles_info.value
    widget.show_tiles.value = True
    assert tile_state_column(widget).count("embedded") == 1
    widget.set_tiling("off")
    wait_idle(qtbot, widget)
    assert widget.tiles_layer is None
    assert "SAM tiles" not in [x.name for x in viewer.layers]
    assert widget.preview is not None  # the click is decoded on the whole image now


def test_cancel_during_tile_embedding_leaves_labels_untouched(make_widget, qtbot, small_model):
    engine = StuckEngine(small_model)
    viewer, widget, _ = open_tiled_image(make_widget, qtbot, engine, nuclei().image)
    before = np.zeros(SHAPE, np.int32)
    before[:20, :20] = 7
    target = viewer.add_labels(before.copy(), name="mine")
    widget.target.value = target
    layer_named(viewer, "SAM points").add([300, 600])
    widget.commit()  # waits for the preview, which waits for the tile
    qtbot.waitUntil(engine.entered.is_set, timeout=30_000)
    qtbot.waitUntil(lambda: widget.progress_text.value.startswith("Embedding tile 1 of 1"))
    assert tile_state_column(widget).count("pending") == 1
    widget.cancel()
    wait_idle(qtbot, widget)
    assert np.array_equal(target.data, before)
    assert widget.preview is None and widget.tiles_embedded == []
    assert "cancelled" in widget.status.value
    assert tile_state_column(widget) == ["not embedded"] * 15


# ------------------------------------------------------------------------------------------
# Automatic segmentation
# ------------------------------------------------------------------------------------------


def test_a_large_plane_on_disk_is_tiled_unless_a_mode_was_chosen(
    make_widget, qtbot, small_model, monkeypatch, notes
):
    import dask.array as da

    reads = record_plane_reads(monkeypatch)
    viewer, widget = make_widget(engine=GeometricEngine(small_model))
    slide = da.from_array(nuclei((2400, 600)).image, chunks=(512, 600))
    viewer.add_image(slide, name="slide")
    wait_idle(qtbot, widget)
    # 'auto' tiles it (2400 px > 64 x 32 px objects): opened without reading the plane.
    assert widget.tiling_mode.value == "auto" and widget.tile_grid is not None
    assert widget.tiles_embedded == [] and max(h * w for h, w in reads) <= 64 * 64
    assert any("slide is 2400 x 600 px and read from disk: tiling is now 'auto'" in n
               for _, n in notes), notes  # fmt: skip

    # The same data in memory keeps the default: embedded whole, as before.
    viewer2, widget2 = make_widget(engine=GeometricEngine(small_model))
    viewer2.add_image(np.asarray(slide), name="in memory")
    wait_idle(qtbot, widget2)
    assert widget2.tiling_mode.value == "off" and widget2.tile_grid is None

    # A mode the user chose is kept: 'off' stays off for the next slide.
    widget.set_tiling("off")
    viewer.layers.clear()
    viewer.add_image(slide, name="slide 2")
    wait_idle(qtbot, widget)
    assert widget.tiling_mode.value == "off" and widget.tile_grid is None


@pytest.mark.parametrize("lazy", [False, True], ids=["numpy", "dask"])
def test_auto_segment_tiled_equals_core(make_widget, qtbot, tiny_engine, lazy):
    shape, tile, halo = (240, 480), (240, 240), (16, 16)  # 2 tiles, blocks of 240 x 272
    syn = nuclei(shape, seed=5)
    data = _dask(syn.image) if lazy else syn.image
    viewer, widget, layer = open_tiled_image(make_widget, qtbot, tiny_engine, data, tile, halo)
    widget.points_per_side.value = 6
    widget.pred_iou_thresh.value = 0.0
    widget.stability_score_thresh.value = 0.0
    widget.auto_segment()
    wait_idle(qtbot, widget, timeout=180_000)
    auto = layer_named(viewer, "img SAM auto")
    grid = TileGrid(shape, tile, halo)
    rgb = widget.normalization_settings(layer).apply(syn.image)
    if not lazy:
        assert np.array_equal(widget.plane_embedder.embedded.rgb, rgb)
    params = widget.auto_params()
    expected = segment_tiled(tiny_engine, open_tiled(tiny_engine, rgb, grid), params)
    assert expected.n_objects > 3
    assert np.array_equal(auto.data, expected.labels)
    assert list(auto.features["label"]) == list(expected.table["label"])
    assert auto.metadata["napari_sam"]["tiling"] == grid.to_dict()
    assert widget.tiles_embedded == [0, 1]
    assert tile_state_column(widget) == ["embedded"] * 2


# ------------------------------------------------------------------------------------------
# The store
# ------------------------------------------------------------------------------------------


def _stores(tmp_cache):
    return sorted((tmp_cache / "embeddings" / "tiles").glob("*/*.zarr"))


def test_store_is_reused_and_a_changed_one_recomputed(make_widget, qtbot, small_model):
    import os
    from pathlib import Path

    cache = Path(os.environ["NAPARI_SAM_CACHE"])
    image = nuclei().image
    first = CountingEngine(small_model)
    viewer, widget, _ = open_tiled_image(make_widget, qtbot, first, image)
    layer_named(viewer, "SAM points").add([300, 600])
    wait_idle(qtbot, widget)
    assert first.embeds == 1 and len(widget.tiles_embedded) == 1
    [store] = _stores(cache)
    widget.close()

    # Another session on the same image: the tile is read from the store, not computed.
    second = CountingEngine(small_model)
    viewer2, widget2, _ = open_tiled_image(make_widget, qtbot, second, image)
    assert widget2.tiles_embedded == widget.tiles_embedded  # known before any click
    layer_named(viewer2, "SAM points").add([300, 600])
    wait_idle(qtbot, widget2)
    assert second.embeds == 0 and widget2.preview is not None
    widget2.close()

    # A store made differently is recomputed, with a note, never silently reused.
    meta = store / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["signature"]["software_version"] = "0.0.0-other"
    meta.write_text(json.dumps(doc))
    notes = []
    third = CountingEngine(small_model)
    viewer3, widget3 = make_widget(engine=third)
    widget3.notify = notes.append
    widget3.set_tiling(TILE, HALO)
    viewer3.add_image(image, name="img")
    wait_idle(qtbot, widget3)
    assert widget3.tiles_embedded == []
    assert any("recomputing" in n and "software_version" in n for n in notes), notes
    layer_named(viewer3, "SAM points").add([300, 600])
    wait_idle(qtbot, widget3)
    assert third.embeds == 1


def test_use_a_store_made_earlier(make_widget, qtbot, small_model, tmp_path):
    from napari_sam.core.tile_store import StoreSignature, TileStore
    from napari_sam.core.tiled_embedding import embed_tiled

    image = nuclei().image
    engine = CountingEngine(small_model)
    viewer, widget = make_widget(engine=engine)
    viewer.add_image(image, name="img")
    wait_idle(qtbot, widget)
    # As `napari-sam embed img --tile 256,256 --halo 64,64 --embeddings ...` makes it.
    norm = widget.normalization_settings().describe(image.dtype)
    rgb = widget.plane_embedder.embedded.rgb
    path = tmp_path / "mine.zarr"
    store = TileStore.open(path, StoreSignature.make(small_model, norm, GRID))
    embed_tiled(engine, rgb, GRID, store=store, tiles=[0, 1])
    engine.embeds = 0

    errors = []
    widget.error = errors.append
    widget.use_tile_store(tmp_path / "nothing.zarr")
    assert errors and "not an embedding store" in errors[0]
    assert widget.tile_grid is None

    widget.use_tile_store(path)
    wait_idle(qtbot, widget)
    assert widget.tile_grid == GRID  # the store's tiling
    assert widget.tiles_embedded == [0, 1]
    layer_named(viewer, "SAM points").add([100, 100])  # in tile 0
    wait_idle(qtbot, widget)
    assert engine.embeds == 0 and widget.preview is not None

    # A chosen store made differently is not ours to empty: refused, saying what differs.
    other = tmp_path / "other.zarr"
    TileStore.open(other, StoreSignature.make(small_model, "none (values as they are)", GRID))
    widget.use_tile_store(other)
    wait_idle(qtbot, widget)
    assert widget.embedding is None and widget.preview is None
    assert "made differently: normalization" in widget.status.value
    assert (other / "zarr.json").is_file()


def test_tiles_of_a_stack_follow_the_slice(make_widget, qtbot, small_model):
    engine = GeometricEngine(small_model)
    stack = np.stack([nuclei((300, 600), seed=s).image for s in (1, 2)])
    viewer, widget, _ = open_tiled_image(make_widget, qtbot, engine, stack)
    viewer.dims.current_step = (1, 0, 0)
    wait_idle(qtbot, widget)
    layer_named(viewer, "SAM points").add([1, 100, 100])
    wait_idle(qtbot, widget)
    assert widget.tiles_embedded == [0] and widget.preview is not None
    tiles = layer_named(viewer, "SAM tiles")
    assert tiles.ndim == 3 and len(tiles.data) == 6
    assert all(np.all(r[:, 0] == 1) for r in tiles.data)  # drawn on slice 1
    viewer.dims.current_step = (0, 0, 0)
    wait_idle(qtbot, widget)
    assert widget.tiles_embedded == []  # slice 0 has tiles of its own
    assert all(np.all(r[:, 0] == 0) for r in layer_named(viewer, "SAM tiles").data)
    assert tile_state_column(widget) == ["not embedded"] * 6


def test_memory_only_writes_no_tile_store(make_widget, qtbot, tiny_engine):
    """With "keep embeddings on disk" off, tiles are embedded in memory only."""
    import os
    from pathlib import Path

    cache = Path(os.environ["NAPARI_SAM_CACHE"])
    shape, tile, halo = (240, 480), (240, 240), (16, 16)  # 2 tiles
    viewer, widget = make_widget(engine=tiny_engine)
    widget.cache_panel.on_disk.value = False
    widget.set_tiling(tile, halo)
    viewer.add_image(nuclei(shape, seed=5).image, name="img")
    wait_idle(qtbot, widget)
    layer_named(viewer, "SAM points").add([120, 100])
    wait_idle(qtbot, widget)
    assert widget.tiles_embedded == [0] and widget.preview is not None
    widget.points_per_side.value = 4
    widget.auto_segment()  # embeds the other tile
    wait_idle(qtbot, widget, timeout=180_000)
    assert widget.tiles_embedded == [0, 1]
    assert _stores(cache) == []

    widget.cache_panel.on_disk.value = True  # the same steps with the setting on: a store
    viewer.layers.clear()
    viewer.add_image(nuclei(shape, seed=6).image, name="img2")
    wait_idle(qtbot, widget)
    layer_named(viewer, "SAM points").add([120, 100])
    wait_idle(qtbot, widget)
    assert len(_stores(cache)) == 1
