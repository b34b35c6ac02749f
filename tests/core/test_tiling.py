"""Tile geometry: cores cover the image once, blocks hold their core and halo, the auto rule."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.core.errors import NapariSamError
from napari_sam.core.tiling import (
    DEFAULT_HALO,
    DEFAULT_TILE,
    TileGrid,
    auto_grid,
    choose_tiling,
    default_halo,
    needs_tiling,
)


@pytest.mark.parametrize(
    ("shape", "tile", "halo"),
    [
        ((1000, 2500), (768, 768), (128, 128)),
        ((603, 1272), (128, 128), (32, 32)),
        ((300, 301), (100, 60), (20, 7)),
        ((50, 40), (768, 768), (128, 128)),  # smaller than one tile
        ((257, 3), (64, 1), (0, 5)),
    ],
)
def test_cores_cover_the_image_once_and_blocks_hold_core_and_halo(shape, tile, halo):
    grid = TileGrid(shape, tile, halo)
    owner = np.zeros(shape, np.int32)
    bh, bw = grid.block_shape
    assert (bh, bw) == (min(shape[0], tile[0] + 2 * halo[0]), min(shape[1], tile[1] + 2 * halo[1]))
    for t in grid.tiles:
        y0, x0, y1, x1 = t.core
        assert 0 < y1 - y0 <= tile[0] and 0 < x1 - x0 <= tile[1]
        owner[y0:y1, x0:x1] += 1
        by0, bx0, by1, bx1 = t.block
        assert (by1 - by0, bx1 - bx0) == (bh, bw)  # every block the same size
        assert 0 <= by0 and 0 <= bx0 and by1 <= shape[0] and bx1 <= shape[1]
        # The halo around the core is inside the block wherever the image goes on.
        assert by0 <= max(0, y0 - halo[0]) and by1 >= min(shape[0], y1 + halo[0])
        assert bx0 <= max(0, x0 - halo[1]) and bx1 >= min(shape[1], x1 + halo[1])
        assert grid.tile_at(y0, x0) == t.index and grid.tile_at(y1 - 1, x1 - 1) == t.index
    assert (owner == 1).all()
    assert len(grid) == len(grid.tiles) == grid.shape[0] * grid.shape[1]


def test_cores_are_nearly_equal_and_never_longer_than_the_tile():
    grid = TileGrid((1000, 1537), (768, 512), (0, 0))
    assert grid.shape == (2, 4)
    rows = {t.core[2] - t.core[0] for t in grid.tiles}
    cols = {t.core[3] - t.core[1] for t in grid.tiles}
    assert rows == {500} and cols <= {384, 385}


def test_one_tile_when_the_image_fits_embeds_the_whole_image():
    grid = TileGrid((500, 700), (768, 768), (128, 128))
    (only,) = grid.tiles
    assert only.core == only.block == (0, 0, 500, 700)


def test_scale_is_that_of_the_blocks():
    assert TileGrid((4000, 4000), DEFAULT_TILE, DEFAULT_HALO).scale == 1.0
    assert TileGrid((4000, 4000), (128, 128), (64, 64)).scale == 4.0


def test_best_block_is_where_the_prompt_is_most_central():
    grid = TileGrid((400, 400), (200, 200), (50, 50))  # blocks of 300
    # A box straddling the core border at row 200: both tiles' blocks hold it.
    box = (190, 20, 215, 40)
    top, bottom = grid.tile_at(0, 0), grid.tile_at(399, 0)
    t = grid.best_block_for(box)
    assert t in (top, bottom)
    block = grid.tiles[t].block
    assert block[0] <= 190 and 215 <= block[2]
    # Near the bottom image edge only the bottom tile holds it, and the edge costs no room.
    assert grid.best_block_for((380, 0, 400, 10)) == bottom
    # Larger than any block: no single tile.
    assert grid.best_block_for((0, 0, 350, 20)) is None
    assert grid.tiles_touching((0, 0, 350, 20)) == [top, bottom]


def test_auto_tiles_only_when_objects_would_shrink_below_a_patch():
    # Default object size 32 px: a 2048 px image shrinks it to 16 px (kept), 2049 does not.
    assert not needs_tiling((2048, 1000))
    assert needs_tiling((2049, 1000))
    assert choose_tiling((2048, 1000)) is None
    grid = choose_tiling((5000, 6000))
    assert grid is not None and grid.block_shape == (1024, 1024) and grid.scale == 1.0
    assert (grid.tile, grid.halo) == (DEFAULT_TILE, DEFAULT_HALO)
    # Small objects: tiled sooner, in smaller blocks that enlarge them to >= 16 px.
    assert needs_tiling((1300, 600), object_size=12)
    small = choose_tiling((1300, 600), object_size=12)
    assert small.block_shape[1] == 600 and 12 * small.scale >= 16
    assert small.halo[0] >= 12
    assert auto_grid((9000, 9000), object_size=2).block_shape == (256, 256)


def test_explicit_choices():
    assert choose_tiling((9000, 9000), "off") is None
    assert choose_tiling((9000, 9000), None) is None
    g = choose_tiling((100, 100), (64, 32))
    assert g.tile == (64, 32) and g.halo == default_halo((64, 32)) == (16, 16)
    assert choose_tiling((100, 100), (64, 64), (5, 6)).halo == (5, 6)
    assert default_halo((768, 768)) == (128, 128)
    assert choose_tiling((5000, 5000), "auto", (10, 10)).halo == (10, 10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile": (0, 5)}, "tile must be at least"),
        ({"halo": (-1, 0)}, "halo must not be negative"),
        ({"tile": (1, 2, 3)}, "two numbers"),
    ],
)
def test_bad_geometry_is_a_clear_error(kwargs, message):
    with pytest.raises(NapariSamError, match=message):
        TileGrid((100, 100), **kwargs)
    with pytest.raises(NapariSamError, match="'auto', 'off'"):
        choose_tiling((100, 100), "sometimes")


def test_describe_and_plain_form():
    g = TileGrid((2000, 3000), (768, 768), (128, 128))
    assert g.describe().startswith("3 x 4 tiles (core <= 768 x 768 px, halo 128 x 128")
    assert g.to_dict() == {
        "image_shape": [2000, 3000],
        "tile": [768, 768],
        "halo": [128, 128],
        "block_shape": [1024, 1024],
    }
