"""The widget's tiling logic without Qt: settings -> grids, tile states, rectangles, text."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam._session import build_objects
from napari_sam._tiles import (
    EMBEDDED,
    MISSING,
    PENDING,
    TilingSettings,
    describe_tiles,
    needed_tiles,
    tile_rectangles,
    tile_states,
)
from napari_sam.core.errors import NapariSamError
from napari_sam.core.tiling import TileGrid, auto_grid


def test_settings_give_the_core_grids():
    assert TilingSettings("off").grid((5000, 5000)) is None
    assert TilingSettings("auto").grid((2048, 2048)) is None  # objects keep 16 px
    assert TilingSettings("auto").grid((2049, 100)) == auto_grid((2049, 100))
    assert TilingSettings("auto", object_size=8).grid((600, 1200)) == auto_grid((600, 1200), 8)
    assert TilingSettings((256, 256), (64, 64)).grid((600, 1200)) == TileGrid(
        (600, 1200), (256, 256), (64, 64)
    )
    # Default halo: a sixth of the tile (core.tiling.default_halo).
    assert TilingSettings((480, 480)).grid((600, 1200)).halo == (80, 80)
    with pytest.raises(NapariSamError):
        TilingSettings("sometimes").grid((600, 1200))
    # Part of the plane's key: equal settings are equal, others differ.
    assert TilingSettings((256, 256), (64, 64)) == TilingSettings((256, 256), (64, 64))
    assert hash(TilingSettings("auto")) != hash(TilingSettings("auto", object_size=8))


def test_states_and_status_line():
    states = tile_states(5, embedded=[0, 3], pending=[3, 4])
    assert states == [EMBEDDED, MISSING, MISSING, EMBEDDED, PENDING]
    assert tile_states(2, embedded=[1, 7], pending=[9]) == [MISSING, EMBEDDED]
    grid = TileGrid((600, 1200), (256, 256), (64, 64))
    text = describe_tiles(grid, tile_states(15, [1, 2], [7]), grid.image_shape)
    assert text == "15 tiles of 384 x 384 (halo 64): 2 embedded, 1 pending"
    assert describe_tiles(None, [], (600, 1200)) == "not tiled: 600 x 1200 px is embedded whole"
    odd = TileGrid((600, 1200), (256, 256), (64, 32))
    assert "(halo 64 x 32): 0 embedded" in describe_tiles(odd, tile_states(15, [], []), (0, 0))


def test_rectangles_are_the_cores_on_the_plane_of_a_stack():
    grid = TileGrid((40, 60), (20, 30), (4, 4))
    # A plane of a (T, X, Y) stack shown transposed: rows are data axis 2, columns axis 1.
    rects = tile_rectangles(grid, (2, 1), (5, None, None))
    assert len(rects) == 4
    r = rects[3]  # core rows 20-40, cols 30-60
    assert np.all(r[:, 0] == 5)
    assert r[:, 2].min() == 19.5 and r[:, 2].max() == 39.5
    assert r[:, 1].min() == 29.5 and r[:, 1].max() == 59.5


def test_needed_tiles_follow_the_prompts():
    grid = TileGrid((600, 1200), (256, 256), (64, 64))
    click = build_objects(
        np.array([[100.0, 100.0]]),
        np.array([1]),
        np.zeros((0, 4)),
        per_point=False,
        image_shape=grid.image_shape,
    )
    assert needed_tiles(grid, click) == [0]
    # One box much larger than a block: every tile whose core it meets.
    box = build_objects(
        np.zeros((0, 2)),
        np.zeros(0),
        np.array([[150.0, 300, 450, 800]]),
        per_point=False,
        image_shape=grid.image_shape,
    )
    assert needed_tiles(grid, box) == [1, 2, 3, 6, 7, 8, 11, 12, 13]


def test_tiles_in_a_store_are_kept_in_memory_only_up_to_a_limit(
    tiny_engine, tmp_path, monkeypatch
):
    from napari_sam import _tiles

    monkeypatch.setattr(_tiles, "MAX_TILES_IN_MEMORY", 2)
    rgb = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    grid = TileGrid((300, 400), (150, 200), (30, 30))
    tiled = _tiles.open_plane_tiles(tiny_engine, rgb, grid, "none", folder=tmp_path)
    tiled.ensure(tiny_engine)
    assert len(tiled._tiles) == 2 and tiled.embedded == [0, 1, 2, 3]
    first = tiled.tile(0)  # read back from the store
    assert first is not None and first.features.shape[0] == 1
    # Memory only (no folder): nothing may be dropped, it could not be read back.
    kept = _tiles.open_plane_tiles(tiny_engine, rgb, grid, "none", folder=None)
    kept.ensure(tiny_engine)
    assert len(kept._tiles) == 4
