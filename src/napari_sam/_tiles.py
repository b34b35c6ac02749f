"""Tiling in the widget, without napari or Qt: which tiles a plane has, which ones prompts
need, opening a plane's tiles with their on-disk store, and the tiles' display.

The widget's tiling part (:mod:`napari_sam.widget.tiling_panel`) reads its controls and draws;
what the tiles of a plane are, where their store lives and what state each tile is in is
decided here (see docs/large-images.md for the geometry and the store).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ._layers import Plane
    from ._session import PromptObject
    from .core.engine import SamEngine
    from .core.normalize import Normalization
    from .core.prepared_plane import PreparedPlane
    from .core.tiled_embedding import TiledEmbedding
    from .core.tiling import TileGrid, TilingChoice

#: Tiles whose features the widget keeps in memory when they are also in a store (64 ViT
#: tiles are 256 MiB); without a store (memory only) every tile is kept, or it would be lost.
MAX_TILES_IN_MEMORY = 64

#: States of a tile in the display, and their colours (edge, face) as RGBA.
EMBEDDED, PENDING, MISSING = "embedded", "pending", "not embedded"
TILE_COLOURS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    EMBEDDED: ((0.2, 0.9, 0.3, 1.0), (0.2, 0.9, 0.3, 0.12)),
    PENDING: ((1.0, 0.65, 0.0, 1.0), (1.0, 0.65, 0.0, 0.25)),
    MISSING: ((0.6, 0.6, 0.6, 0.8), (0.0, 0.0, 0.0, 0.0)),
}


@dataclass(frozen=True)
class TilingSettings:
    """What the widget's tiling controls say.

    Attributes
    ----------
    choice : "off", "auto" or (rows, cols)
        As :func:`~napari_sam.core.tiling.choose_tiling` takes it.
    halo : tuple of int, optional
        (rows, cols); None: the default for the choice.
    object_size : float, optional
        Expected object diameter (px) for ``auto``.
    store : Path, optional
        A store the user chose (made earlier, e.g. by ``napari-sam embed``); None: the
        embeddings folder's.
    """

    choice: TilingChoice = "off"
    halo: tuple[int, int] | None = None
    object_size: float | None = None
    store: Path | None = None

    def grid(self, plane_shape: tuple[int, int]) -> TileGrid | None:
        """The tile grid of a plane of this shape, or None to embed it whole."""
        from .core.tiling import choose_tiling

        return choose_tiling(
            tuple(int(v) for v in plane_shape[:2]),  # type: ignore[arg-type]
            self.choice,
            self.halo,
            object_size=self.object_size,
        )


def is_tiled(embedding: Any) -> bool:
    """Whether ``embedding`` is a :class:`~napari_sam.core.tiled_embedding.TiledEmbedding`."""
    from .core.tiled_embedding import TiledEmbedding

    return isinstance(embedding, TiledEmbedding)


def lazy_plane(data: Any, plane: Plane, norm: Normalization, *, rgb: bool) -> PreparedPlane | None:
    """The plane of lazy ``data`` as a prepared plane read tile by tile; None for data in memory.

    Data on disk or computed (dask, zarr, the level 0 of a multiscale image, a memory-mapped
    TIFF) is not read whole when the plane is tiled: the blocks of the tiles that prompts or
    automatic segmentation need are read and converted when they are embedded, and only a
    sample of patches is read before that (percentiles, the plane's identity). NumPy data in
    memory is converted whole, as before (exact percentiles, the store keys of earlier runs).
    """
    from .core.lazy_arrays import PlaneView, is_on_disk
    from .core.prepared_plane import PreparedPlane

    if not is_on_disk(data):
        return None
    return PreparedPlane(PlaneView(data, plane.index, plane.axes), norm, rgb=rgb)


def open_plane_tiles(
    engine: SamEngine,
    rgb: np.ndarray | PreparedPlane,
    grid: TileGrid,
    normalization: str,
    *,
    folder: Path | None,
    store: Path | None = None,
) -> TiledEmbedding:
    """A plane's tiles with their store (nothing embedded here; stored tiles count).

    Runs in a worker: hashes ``rgb`` and opens (or makes) the zarr store.

    Parameters
    ----------
    engine : SamEngine
    rgb : ndarray or PreparedPlane
        The plane as SAM's uint8 RGB, or a lazy plane (:func:`lazy_plane`).
    grid : TileGrid
    normalization : str
        How the plane was made into ``rgb`` (part of the store's signature).
    folder : Path, optional
        The embeddings folder (its ``tiles/`` hold the stores); None: keep nothing on disk.
    store : Path, optional
        A store the user chose: it must match exactly (else
        :class:`~napari_sam.core.errors.EmbeddingStoreError`), since it is not ours to empty.

    Returns
    -------
    TiledEmbedding
        Its store's ``notes`` say what was recomputed and why (a store made differently).
    """
    from .core.tile_store import StoreSignature, TileStore, store_path
    from .core.tiled_embedding import open_tiled, plane_key

    if store is None and folder is None:
        return open_tiled(engine, rgb, grid)
    signature = StoreSignature.make(engine.model, normalization, grid, n_planes=1)
    mismatch = "error" if store is not None else "recompute"
    if store is None:
        store = store_path(folder, engine.model_id, plane_key(rgb), grid)  # type: ignore[arg-type]
        store.parent.mkdir(parents=True, exist_ok=True)
    tile_store = TileStore.open(store, signature, on_mismatch=mismatch)
    # The store holds every tile: memory keeps the most recently used ones only, so that
    # auto segment of a large slide does not hold all of its tiles' features.
    return open_tiled(
        engine,
        rgb,
        grid,
        store=tile_store,
        on_mismatch=mismatch,
        max_in_memory=MAX_TILES_IN_MEMORY,
    )


def needed_tiles(grid: TileGrid, objects: Iterable[PromptObject]) -> list[int]:
    """The tiles that decode the objects of these SAM calls (see core.tiled_prompts)."""
    from .core.tiled_prompts import plan_tiles

    needed: set[int] = set()
    for obj in objects:
        for parts in plan_tiles(grid, obj.prompts):
            needed.update(t for t, _ in parts)
    return sorted(needed)


def tile_states(n_tiles: int, embedded: Iterable[int], pending: Iterable[int]) -> list[str]:
    """State of every tile: embedded, pending (a job is embedding it) or not embedded.

    Indices beyond ``n_tiles`` (a job of the previous tiling still reporting) are ignored.
    """
    states = [MISSING] * n_tiles
    for i in pending:
        if 0 <= i < n_tiles:
            states[i] = PENDING
    for i in embedded:
        if 0 <= i < n_tiles:
            states[i] = EMBEDDED
    return states


def tile_rectangles(grid: TileGrid, axes: tuple[int, int], index: tuple) -> list[np.ndarray]:
    """The tiles' cores as rectangles in the data coordinates of the plane's layer.

    Parameters
    ----------
    grid : TileGrid
    axes : tuple of int
        Data axes of the plane's rows and columns (:attr:`napari_sam._layers.Plane.axes`).
    index : tuple
        The plane's index on every data axis, None on the two displayed ones.

    Returns
    -------
    list of ndarray
        (4, ndim) corners per tile; edges lie between pixels (pixel centres are integers).
    """
    out = []
    for t in grid.tiles:
        y0, x0, y1, x1 = (v - 0.5 for v in t.core)
        corners = np.zeros((4, len(index)), float)
        for axis, i in enumerate(index):
            if i is not None:
                corners[:, axis] = i
        corners[:, axes[0]] = [y0, y0, y1, y1]
        corners[:, axes[1]] = [x0, x1, x1, x0]
        out.append(corners)
    return out


def describe_tiles(grid: TileGrid | None, states: list[str], shape: tuple[int, int]) -> str:
    """The status line, e.g. ``"15 tiles of 384 x 384 (halo 64): 5 embedded, 1 pending"``."""
    if grid is None:
        h, w = shape
        return f"not tiled: {h} x {w} px is embedded whole"
    bh, bw = grid.block_shape
    hy, hx = grid.halo
    halo = f"{hy}" if hy == hx else f"{hy} x {hx}"
    text = f"{len(grid)} tiles of {bh} x {bw} (halo {halo}): {states.count(EMBEDDED)} embedded"
    pending = states.count(PENDING)
    return text + (f", {pending} pending" if pending else "")
