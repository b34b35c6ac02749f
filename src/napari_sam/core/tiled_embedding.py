"""Embeddings of a large image, tile by tile (see :mod:`napari_sam.core.tiling`).

A :class:`TiledEmbedding` is the tiled counterpart of an
:class:`~napari_sam.core.embedding.ImageEmbedding`: it embeds each tile's block as an image of
its own, when the tile is first needed (or all at once with :func:`embed_tiled`), keeps the
results in memory and, with a :class:`~napari_sam.core.tile_store.TileStore`, on disk, from
where a later session reads them instead of running the encoder again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .embedding import (
    CancelCheck,
    ImageEmbedding,
    ProgressCallback,
    image_key,
)
from .errors import Cancelled, EmbeddingStoreError, ImageError
from .prepared_plane import PreparedPlane, check_prepared
from .tile_store import OnMismatch, TileStore

if TYPE_CHECKING:  # pragma: no cover
    from .engine import SamEngine
    from .tiling import TileGrid

#: ``on_tile(index)``: a tile's embedding became available (computed or read from a store).
TileCallback = Callable[[int], None]


@dataclass
class TiledEmbedding:
    """The tiles of one prepared image and those of their embeddings made so far.

    Attributes
    ----------
    grid : TileGrid
    rgb : ndarray or PreparedPlane
        The prepared uint8 (H, W, 3) image (not copied), or a
        :class:`~napari_sam.core.prepared_plane.PreparedPlane` of a lazy plane; blocks are
        cut from it (read and converted, for a lazy plane) when needed.
    model_id : str
    key : str
        Content hash of ``rgb`` (:func:`plane_key`).
    store : TileStore, optional
        Where tiles are read from and written to.
    plane : int
        This image's plane in ``store``.
    max_in_memory : int, optional
        Keep at most this many tiles' features in memory (least recently used go first; they
        are read again from ``store``, or computed again). None: keep all.
    """

    grid: TileGrid
    rgb: np.ndarray | PreparedPlane
    model_id: str
    key: str
    store: TileStore | None = None
    plane: int = 0
    max_in_memory: int | None = None
    _tiles: OrderedDict[int, ImageEmbedding] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def original_size(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return self.grid.image_shape

    @property
    def embedded(self) -> list[int]:
        """Indices of the tiles whose embedding is available (in memory or in the store)."""
        with self._lock:
            ready = set(self._tiles)
        if self.store is not None:
            ready.update(self.store.done_tiles(self.plane))
        return sorted(ready)

    @property
    def complete(self) -> bool:
        """Whether every tile is available."""
        return len(self.embedded) == len(self.grid)

    def block(self, index: int) -> np.ndarray:
        """The prepared pixels tile ``index`` embeds (contiguous)."""
        return np.ascontiguousarray(self.rgb[self.grid.tiles[index].block_slices()])

    def tile(self, index: int, *, device: str = "cpu") -> ImageEmbedding | None:
        """The embedding of tile ``index`` if it is in memory or in the store; None otherwise."""
        with self._lock:
            emb = self._tiles.get(index)
            if emb is not None:
                self._tiles.move_to_end(index)
                return emb
        if self.store is None or self.store.input_size is None:
            return None
        if not self.store.has(self.plane, index):
            return None
        key = image_key(self.block(index))  # the tile's pixels now: stored from the same?
        features = self.store.load(self.plane, index, device=device, key=key)
        if features is None:
            return None
        emb = ImageEmbedding(
            features=features,
            original_size=self.grid.block_shape,
            input_size=self.store.input_size,
            model_id=self.model_id,
            key=key,
        )
        self._keep(index, emb)
        return emb

    def _keep(self, index: int, emb: ImageEmbedding) -> None:
        with self._lock:
            self._tiles[index] = emb
            self._tiles.move_to_end(index)
            while self.max_in_memory is not None and len(self._tiles) > self.max_in_memory:
                self._tiles.popitem(last=False)

    def ensure(
        self,
        engine: SamEngine,
        tiles: Iterable[int] | None = None,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
        on_tile: TileCallback | None = None,
    ) -> None:
        """Make the embeddings of ``tiles`` (default: all) available, computing what is missing.

        Parameters
        ----------
        engine : SamEngine
            Runs the encoder (one forward pass at a time, through its lock).
        tiles : iterable of int, optional
        progress : callable, optional
            ``progress(done, total)`` in encoder blocks over the tiles to compute (so a bar
            moves during each tile); not called when every tile is already available.
        cancel : callable, optional
            Polled before each tile and between encoder blocks;
            :class:`~napari_sam.core.errors.Cancelled` is raised when it returns True.
        on_tile : callable, optional
            Called with each tile's index once its embedding is available.
        """
        if engine.model_id != self.model_id:
            raise ImageError(
                f"these tiles were embedded by {self.model_id}, not by {engine.model_id}"
            )
        wanted = range(len(self.grid)) if tiles is None else sorted(set(tiles))
        device = engine.model.device
        todo = []
        for i in wanted:
            if self.tile(i, device=device) is None:
                todo.append(i)
            elif on_tile is not None:
                on_tile(i)
        n_blocks = len(engine.model.sam.image_encoder.blocks)
        total = len(todo) * n_blocks
        for done, i in enumerate(todo):
            if cancel is not None and cancel():
                raise Cancelled("embedding cancelled")

            def step(k: int, _n: int, base: int = done * n_blocks) -> None:
                if progress is not None:
                    progress(base + k, total)

            emb = engine.embed(self.block(i), progress=step, cancel=cancel, save=False)
            if self.store is not None:
                self.store.save(self.plane, i, emb.features, emb.input_size, key=emb.key)
            self._keep(i, emb)
            if on_tile is not None:
                on_tile(i)


def plane_key(rgb: np.ndarray | PreparedPlane) -> str:
    """The key of a plane for its tile store: the content hash of a prepared image, the
    identity of a :class:`~napari_sam.core.prepared_plane.PreparedPlane` (no full read)."""
    return rgb.key if isinstance(rgb, PreparedPlane) else image_key(rgb)


def open_tiled(
    engine: SamEngine,
    rgb: np.ndarray | PreparedPlane,
    grid: TileGrid,
    *,
    store: TileStore | None = None,
    plane: int = 0,
    on_mismatch: OnMismatch = "error",
    max_in_memory: int | None = None,
) -> TiledEmbedding:
    """A :class:`TiledEmbedding` of ``rgb`` with nothing computed yet (tiles in ``store`` count).

    ``rgb`` is a prepared image or a :class:`~napari_sam.core.prepared_plane.PreparedPlane`
    (a lazy plane: only the blocks of the tiles used are ever read). ``store``'s plane
    ``plane`` is bound to (or checked against) :func:`plane_key` of ``rgb``; see
    :meth:`TileStore.check_plane` for ``on_mismatch``. Each stored tile is used only if the
    pixels of its block are those it was computed from.
    """
    check_prepared(rgb)
    if tuple(rgb.shape[:2]) != grid.image_shape:
        raise ImageError(
            f"the tile grid is for a {grid.image_shape[0]} x {grid.image_shape[1]} image, "
            f"not {rgb.shape[0]} x {rgb.shape[1]}"
        )
    key = plane_key(rgb)
    if store is not None:
        if store.signature.tiling != grid.to_dict():
            raise EmbeddingStoreError(
                f"the embedding store {store.path} holds another tile grid "
                f"({store.signature.tiling}, not {grid.to_dict()})"
            )
        if store.signature.model_id != engine.model_id:
            raise EmbeddingStoreError(
                f"the embedding store {store.path} holds embeddings of "
                f"{store.signature.model_id}, not of {engine.model_id}"
            )
        store.check_plane(plane, key, on_mismatch=on_mismatch)
    return TiledEmbedding(
        grid=grid,
        rgb=rgb,
        model_id=engine.model_id,
        key=key,
        store=store,
        plane=plane,
        max_in_memory=max_in_memory,
    )


def embed_tiled(
    engine: SamEngine,
    rgb: np.ndarray | PreparedPlane,
    grid: TileGrid,
    *,
    store: TileStore | None = None,
    plane: int = 0,
    tiles: Iterable[int] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    on_tile: TileCallback | None = None,
    on_mismatch: OnMismatch = "error",
    max_in_memory: int | None = None,
) -> TiledEmbedding:
    """Embed ``tiles`` (default: all) of a prepared image: :func:`open_tiled`, then ``ensure``.

    Examples
    --------
    >>> grid = choose_tiling(rgb.shape[:2], (768, 768))  # doctest: +SKIP
    >>> tiled = embed_tiled(engine, rgb, grid)  # doctest: +SKIP
    >>> pred = predict_tiled(engine, tiled, boxes=[[1200, 3000, 1230, 3040]])  # doctest: +SKIP
    """
    tiled = open_tiled(
        engine,
        rgb,
        grid,
        store=store,
        plane=plane,
        on_mismatch=on_mismatch,
        max_in_memory=max_in_memory,
    )
    tiled.ensure(engine, tiles, progress=progress, cancel=cancel, on_tile=on_tile)
    return tiled
