"""Tile geometry for large images: which tiles, what each embeds, and when to tile at all.

SAM resizes every image so that its longest side is 1024 px. A large image is shrunk, and its
small objects with it, below what the model resolves. Tiling cuts the image into **tiles**:
each tile owns a *core* (the tiles' cores cover the image without overlap) and is embedded
as its *block*, the core grown by a **halo** on every side (clipped to the image), so that an
object near a core's edge is seen whole by that tile.

Geometry (all in pixels of the full-resolution image, ``(y0, x0, y1, x1)`` half-open):

- ``tile`` is the largest core: an axis of length ``n`` is cut into ``ceil(n / tile)`` cores of
  nearly equal length (never longer than ``tile``).
- every block has the same size, ``min(n, tile + 2 * halo)`` per axis, centred on its core and
  shifted inside the image at the image's edges, so that every tile is resized by the same
  factor (an object looks the same size to SAM in every tile) and holds at least ``halo``
  pixels of context beyond its core wherever the image goes on.

When to tile (``tile="auto"``, see :func:`choose_tiling`): SAM's encoder sees the image as
16 x 16 pixel patches of its 1024 px input; an object smaller than one patch
(:data:`MIN_OBJECT_INPUT_PX`) is hardly segmented. With an expected object diameter ``d``
(default :data:`DEFAULT_OBJECT_SIZE`), the image is tiled when the resize factor
``1024 / max(H, W)`` would make ``d`` smaller than that, i.e. when ``max(H, W) > 64 * d``
(2048 px for the default). The blocks are then the largest multiple of 16 px, at most 1024,
at which ``d`` keeps 16 px, with a halo of an eighth of a block (at least ``d``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from .errors import NapariSamError

#: SAM's encoder input: the longest side of every image (or block) is resized to this.
ENCODER_INPUT = 1024
#: Smallest object diameter (px of the encoder input) that SAM resolves: one encoder patch.
MIN_OBJECT_INPUT_PX = 16
#: Object diameter (px of the image) that ``auto`` assumes when none is given.
DEFAULT_OBJECT_SIZE = 32
#: Core and halo of the default tiling: blocks of 1024 px, embedded at their own resolution.
DEFAULT_TILE = (768, 768)
DEFAULT_HALO = (128, 128)
#: Smallest block ``auto`` makes (smaller blocks cost many tiles for little gain).
MIN_AUTO_BLOCK = 256

Box = tuple[int, int, int, int]
TilingChoice = Literal["auto", "off"] | tuple[int, int] | None


@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TileGrid`.

    Attributes
    ----------
    index : int
        Position in :attr:`TileGrid.tiles` (row-major).
    row, col : int
        Position in the grid.
    core : tuple of int
        ``(y0, x0, y1, x1)``: the pixels this tile owns (cores never overlap).
    block : tuple of int
        ``(y0, x0, y1, x1)``: the pixels it embeds (the core and its halo).
    """

    index: int
    row: int
    col: int
    core: Box
    block: Box

    @property
    def block_shape(self) -> tuple[int, int]:
        """(h, w) of the block."""
        y0, x0, y1, x1 = self.block
        return y1 - y0, x1 - x0

    def block_slices(self) -> tuple[slice, slice]:
        """Index the block in the full image: ``image[tile.block_slices()]``."""
        y0, x0, y1, x1 = self.block
        return slice(y0, y1), slice(x0, x1)

    def core_in_block(self) -> tuple[slice, slice]:
        """The core in block coordinates."""
        y0, x0, y1, x1 = self.core
        by, bx = self.block[:2]
        return slice(y0 - by, y1 - by), slice(x0 - bx, x1 - bx)


def _cores(n: int, size: int) -> list[tuple[int, int]]:
    """Cut ``0..n`` into ``ceil(n / size)`` nearly equal intervals."""
    k = max(1, -(-n // size))
    bounds = [(i * n) // k for i in range(k + 1)]
    return list(itertools.pairwise(bounds))


def _block(core: tuple[int, int], n: int, length: int) -> tuple[int, int]:
    """An interval of ``length`` centred on ``core``, shifted to lie inside ``0..n``."""
    a, b = core
    start = min(max((a + b - length) // 2, 0), n - length)
    return start, start + length


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one image (see the module documentation for the geometry).

    Parameters
    ----------
    image_shape : tuple of int
        (H, W) of the image.
    tile : tuple of int
        Largest core (rows, cols).
    halo : tuple of int
        Context added on each side of a core (rows, cols).
    """

    image_shape: tuple[int, int]
    tile: tuple[int, int] = DEFAULT_TILE
    halo: tuple[int, int] = DEFAULT_HALO

    def __post_init__(self) -> None:
        for name in ("image_shape", "tile", "halo"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 2:
                raise NapariSamError(f"{name} must be two numbers (rows, cols), got {value}")
            object.__setattr__(self, name, value)
        if min(self.image_shape) < 1:
            raise NapariSamError(f"cannot tile an empty image of shape {self.image_shape}")
        if min(self.tile) < 1:
            raise NapariSamError(f"tile must be at least 1 x 1 px, got {self.tile}")
        if min(self.halo) < 0:
            raise NapariSamError(f"halo must not be negative, got {self.halo}")

    @property
    def block_shape(self) -> tuple[int, int]:
        """(h, w) of every block: ``min(image, tile + 2 * halo)`` per axis."""
        return tuple(  # type: ignore[return-value]
            min(n, t + 2 * h)
            for n, t, h in zip(self.image_shape, self.tile, self.halo, strict=True)
        )

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of tiles."""
        return len(self._row_cores), len(self._col_cores)

    @cached_property
    def _row_cores(self) -> list[tuple[int, int]]:
        return _cores(self.image_shape[0], self.tile[0])

    @cached_property
    def _col_cores(self) -> list[tuple[int, int]]:
        return _cores(self.image_shape[1], self.tile[1])

    @cached_property
    def tiles(self) -> list[Tile]:
        """Every tile, row by row."""
        (h, w), (bh, bw) = self.image_shape, self.block_shape
        cols = self._col_cores
        out = []
        for r, (y0, y1) in enumerate(self._row_cores):
            by0, by1 = _block((y0, y1), h, bh)
            for c, (x0, x1) in enumerate(cols):
                bx0, bx1 = _block((x0, x1), w, bw)
                out.append(Tile(len(out), r, c, (y0, x0, y1, x1), (by0, bx0, by1, bx1)))
        return out

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    @property
    def scale(self) -> float:
        """Resize factor of every block into SAM's input (> 1: objects are enlarged)."""
        return ENCODER_INPUT / max(self.block_shape)

    def tile_at(self, row: float, col: float) -> int:
        """Index of the tile whose core holds pixel (row, col) (pixel centres at integers)."""
        h, w = self.image_shape
        r = min(max(math.floor(row + 0.5), 0), h - 1)
        c = min(max(math.floor(col + 0.5), 0), w - 1)
        i = next(k for k, (a, b) in enumerate(self._row_cores) if a <= r < b)
        j = next(k for k, (a, b) in enumerate(self._col_cores) if a <= c < b)
        return i * self.shape[1] + j

    def tiles_touching(self, box: Box) -> list[int]:
        """Tiles whose core meets the half-open ``(y0, x0, y1, x1)`` box."""
        y0, x0, y1, x1 = box
        return [
            t.index
            for t in self.tiles
            if t.core[0] < y1 and y0 < t.core[2] and t.core[1] < x1 and x0 < t.core[3]
        ]

    def best_block_for(self, box: Box) -> int | None:
        """The tile whose block holds the whole half-open box with the most room around it.

        Room is the smallest distance from the box to a block edge that is not the image's
        edge (beyond the image there is nothing to miss). None when no block holds the box.
        """
        y0, x0, y1, x1 = box
        h, w = self.image_shape
        best, best_room = None, -1.0
        for t in self.tiles:
            by0, bx0, by1, bx1 = t.block
            if not (by0 <= y0 and bx0 <= x0 and y1 <= by1 and x1 <= bx1):
                continue
            sides = [
                (y0 - by0) if by0 > 0 else math.inf,
                (x0 - bx0) if bx0 > 0 else math.inf,
                (by1 - y1) if by1 < h else math.inf,
                (bx1 - x1) if bx1 < w else math.inf,
            ]
            room = min(sides)
            if room > best_room:
                best, best_room = t.index, room
        return best

    def to_dict(self) -> dict[str, list[int]]:
        """Plain form, for signatures and provenance."""
        return {
            "image_shape": list(self.image_shape),
            "tile": list(self.tile),
            "halo": list(self.halo),
            "block_shape": list(self.block_shape),
        }

    def describe(self) -> str:
        """E.g. ``"2 x 3 tiles (core <= 768 x 768 px, halo 128 x 128, blocks 1024 x 1024)"``."""
        rows, cols = self.shape
        bh, bw = self.block_shape
        return (
            f"{rows} x {cols} tiles (core <= {self.tile[0]} x {self.tile[1]} px, halo "
            f"{self.halo[0]} x {self.halo[1]}, blocks {bh} x {bw}, scale {self.scale:.2f})"
        )


def default_halo(tile: tuple[int, int]) -> tuple[int, int]:
    """Halo used with a tile when none is given: a sixth of it, 16 to 128 px, multiple of 8."""
    return tuple(int(min(128, max(16, 8 * round(t / 48)))) for t in tile)  # type: ignore[return-value]


def needs_tiling(image_shape: tuple[int, int], object_size: float | None = None) -> bool:
    """Whether resizing to SAM's input shrinks an object of ``object_size`` px below a patch."""
    d = DEFAULT_OBJECT_SIZE if object_size is None else float(object_size)
    return d * ENCODER_INPUT / max(image_shape) < MIN_OBJECT_INPUT_PX


def auto_grid(image_shape: tuple[int, int], object_size: float | None = None) -> TileGrid:
    """The tiling ``auto`` uses: blocks as large as possible (<= 1024) keeping objects >= 16 px."""
    d = DEFAULT_OBJECT_SIZE if object_size is None else float(object_size)
    block = int(d * ENCODER_INPUT / MIN_OBJECT_INPUT_PX) // 16 * 16
    block = min(ENCODER_INPUT, max(MIN_AUTO_BLOCK, block))
    halo = max(block // 8, 8 * math.ceil(d / 8))
    tile = block - 2 * halo
    return TileGrid(image_shape, (tile, tile), (halo, halo))


def choose_tiling(
    image_shape: tuple[int, int],
    tile: TilingChoice = "auto",
    halo: tuple[int, int] | None = None,
    *,
    object_size: float | None = None,
) -> TileGrid | None:
    """The tile grid for an image, or None to embed it whole.

    Parameters
    ----------
    image_shape : tuple of int
        (H, W).
    tile : "auto", "off", None or (rows, cols)
        ``"auto"``: tile only when :func:`needs_tiling` (then :func:`auto_grid`, or the given
        halo); ``"off"``/None: never; a shape: always, with cores of at most that size.
    halo : tuple of int, optional
        Default: :func:`default_halo` of the tile (``auto``: its own).
    object_size : float, optional
        Expected object diameter in pixels, for ``auto`` (default 32).
    """
    if tile is None or tile == "off":
        return None
    if tile == "auto":
        if not needs_tiling(image_shape, object_size):
            return None
        grid = auto_grid(image_shape, object_size)
        return grid if halo is None else TileGrid(image_shape, grid.tile, halo)
    if isinstance(tile, str):
        raise NapariSamError(f"tiling must be 'auto', 'off' or (rows, cols), not {tile!r}")
    tile = tuple(int(v) for v in np.ravel(tile))  # type: ignore[assignment]
    return TileGrid(image_shape, tile, default_halo(tile) if halo is None else halo)  # type: ignore[arg-type]
