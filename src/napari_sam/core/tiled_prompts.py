"""Clicks and boxes on a tiled image: each object decoded in its tile, masks at full size.

Which tile decodes an object (the rule, also in docs/large-images.md):

1. The object's *extent* is its box, or for points alone the bounding box of its positive
   points. If the block (core + halo) of one or more tiles holds the whole extent, the object
   is decoded in the one where the extent has the most room to the block's inner edges (a
   click near a core's edge goes to the tile where it is most central). Its mask is the
   tile's mask wherever it reaches inside that block, beyond the core too.
2. Otherwise (an extent larger than a block allows) the object is **merged**: every tile
   whose core meets the box (for points alone: every tile whose core holds a positive point)
   decodes the box clipped to its block, with the points that lie in its block; each keeps
   the part of its mask inside its core, and the object is the union of those parts (one
   object, one label). Its predicted IoU is the pieces' mean weighted by their areas.

Points shared by several boxes go to each box's tile if they lie in its block (SAM's points
are local: one far outside a tile does not describe what lies inside it). Masks are decoded
by the engine at each block's own resolution and placed back at full resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .prompts import POSITIVE, Prompts, make_prompts
from .region_mask import CandidateMasks, RegionMask

if TYPE_CHECKING:  # pragma: no cover
    from .embedding import CancelCheck, ProgressCallback
    from .engine import Prediction, SamEngine
    from .tiled_embedding import TiledEmbedding
    from .tiling import Tile, TileGrid


def _pixel(v: float) -> int:
    """The pixel holding coordinate ``v`` (pixel centres at integers)."""
    return math.floor(v + 0.5)


def _extent(prompts: Prompts, obj: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Half-open (y0, x0, y1, x1) pixels an object's prompt covers (see the module rule)."""
    if len(prompts.boxes):
        r0, c0, r1, c1 = prompts.boxes[obj]
        y0, x0, y1, x1 = _pixel(r0), _pixel(c0), _pixel(r1) + 1, _pixel(c1) + 1
    else:
        pos = prompts.points[prompts.point_labels == POSITIVE]
        y0, x0 = (_pixel(v) for v in pos.min(axis=0))
        y1, x1 = (_pixel(v) + 1 for v in pos.max(axis=0))
    h, w = shape
    return max(0, y0), max(0, x0), min(h, y1), min(w, x1)


def plan_tiles(grid: TileGrid, prompts: Prompts) -> list[list[tuple[int, bool]]]:
    """For each object, the tiles that decode it and whether each keeps only its core."""
    plan = []
    for obj in range(prompts.n_objects):
        extent = _extent(prompts, obj, grid.image_shape)
        best = grid.best_block_for(extent)
        if best is not None:
            plan.append([(best, False)])
        elif len(prompts.boxes):
            plan.append([(t, True) for t in grid.tiles_touching(extent)])
        else:
            pos = prompts.points[prompts.point_labels == POSITIVE]
            tiles = sorted({grid.tile_at(r, c) for r, c in pos})
            plan.append([(t, True) for t in tiles])
    return plan


def _local_prompts(tile: Tile, prompts: Prompts, objects: list[int]) -> Prompts:
    """The prompts of ``objects`` in ``tile``'s block coordinates (boxes clipped to it)."""
    by0, bx0, by1, bx1 = tile.block
    pts = prompts.points
    inside = np.array(
        [by0 <= _pixel(r) < by1 and bx0 <= _pixel(c) < bx1 for r, c in pts], dtype=bool
    ).reshape(-1)
    boxes = None
    if len(prompts.boxes):
        b = prompts.boxes[objects]
        boxes = np.stack(
            [
                np.maximum(b[:, 0], by0) - by0,
                np.maximum(b[:, 1], bx0) - bx0,
                np.minimum(b[:, 2], by1 - 1) - by0,
                np.minimum(b[:, 3], bx1 - 1) - bx0,
            ],
            axis=1,
        )
    return make_prompts(
        pts[inside] - [by0, bx0],
        prompts.point_labels[inside],
        boxes,
        image_shape=tile.block_shape,
    )


@dataclass(frozen=True)
class Piece:
    """One tile's part of an object: object ``obj`` of ``prediction``, made in ``tile``."""

    tile: int
    prediction: Prediction
    obj: int
    core_only: bool

    def region(self, tile: Tile, candidate: int) -> RegionMask:
        """The piece's mask in image coordinates (only inside the core when ``core_only``)."""
        r = self.prediction.region(self.obj, candidate)
        by0, bx0 = tile.block[:2]
        r = RegionMask(r.y0 + by0, r.x0 + bx0, r.mask)
        if not self.core_only:
            return r
        y0, x0, y1, x1 = tile.core
        h, w = r.mask.shape
        a0, b0 = max(y0, r.y0), max(x0, r.x0)
        a1, b1 = min(y1, r.y0 + h), min(x1, r.x0 + w)
        if a0 >= a1 or b0 >= b1:
            return RegionMask(0, 0, np.zeros((0, 0), bool))
        inside = r.mask[a0 - r.y0 : a1 - r.y0, b0 - r.x0 : b1 - r.x0]
        return RegionMask(a0, b0, inside).trimmed()


@dataclass
class TiledPrediction(CandidateMasks):
    """Masks of the prompted objects of a tiled image; the interface of ``Prediction``.

    Attributes
    ----------
    grid : TileGrid
    pieces : list of list of Piece
        Per object, the tiles that made it.
    scores : ndarray
        float32 (B, K) predicted IoU of each candidate.
    best : ndarray
        int (B,) candidate with the highest predicted IoU.
    """

    grid: TileGrid
    pieces: list[list[Piece]]
    scores: np.ndarray
    best: np.ndarray
    _cache: dict[tuple[int, int], RegionMask] = field(default_factory=dict, repr=False)

    @property
    def n_objects(self) -> int:
        """Number of objects (B)."""
        return len(self.pieces)

    def tiles_of(self, obj: int = 0) -> list[int]:
        """The tiles that decoded object ``obj``."""
        return [p.tile for p in self.pieces[obj]]

    def region(self, obj: int = 0, candidate: int | None = None) -> RegionMask:
        """The mask of one object inside its bounding box, in full-image coordinates.

        Computed once per candidate; memory and work follow the object, not the image.
        """
        obj, k = self._index(obj, candidate)
        if (obj, k) not in self._cache:
            parts = [p.region(self.grid.tiles[p.tile], k) for p in self.pieces[obj]]
            parts = [r for r in parts if r.mask.size]
            if len(parts) <= 1:
                merged = parts[0] if parts else RegionMask(0, 0, np.zeros((0, 0), bool))
            else:
                y0 = min(r.y0 for r in parts)
                x0 = min(r.x0 for r in parts)
                y1 = max(r.y0 + r.mask.shape[0] for r in parts)
                x1 = max(r.x0 + r.mask.shape[1] for r in parts)
                out = np.zeros((y1 - y0, x1 - x0), bool)
                for r in parts:
                    h, w = r.mask.shape
                    out[r.y0 - y0 : r.y0 - y0 + h, r.x0 - x0 : r.x0 - x0 + w] |= r.mask
                merged = RegionMask(y0, x0, out)
            self._cache[(obj, k)] = merged
        return self._cache[(obj, k)]

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the full image the masks belong to."""
        return tuple(self.grid.image_shape)  # type: ignore[return-value]


def predict_tiled(
    engine: SamEngine,
    tiled: TiledEmbedding,
    prompts: Prompts | None = None,
    *,
    points: np.ndarray | list | None = None,
    point_labels: np.ndarray | list | None = None,
    boxes: np.ndarray | list | None = None,
    multimask: bool | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> TiledPrediction:
    """Masks for the prompted objects of a tiled image (see the module rule).

    Tiles that are needed and not embedded yet are embedded first (``progress`` and
    ``cancel`` as in :meth:`TiledEmbedding.ensure`). The other arguments are those of
    :meth:`SamEngine.predict <napari_sam.core.engine.SamEngine.predict>`, in full-image
    (row, col) pixels; mask refinement (``mask_input``) is not offered here, since low
    resolution logits belong to one tile.

    Returns
    -------
    TiledPrediction
        One object per box (points shared by all boxes), or one object for points only.
    """
    grid = tiled.grid
    if prompts is None:
        prompts = make_prompts(points, point_labels, boxes, image_shape=grid.image_shape)
    if multimask is None:
        multimask = prompts.is_single_click
    plan = plan_tiles(grid, prompts)
    needed = sorted({t for parts in plan for t, _ in parts})
    tiled.ensure(engine, needed, progress=progress, cancel=cancel)
    pieces: list[list[Piece]] = [[] for _ in plan]
    device = engine.model.device
    for t in needed:
        users = [(o, core) for o, parts in enumerate(plan) for tt, core in parts if tt == t]
        local = _local_prompts(grid.tiles[t], prompts, [o for o, _ in users])
        emb = tiled.tile(t, device=device)
        if emb is None:  # dropped from memory since (max_in_memory) and not stored
            tiled.ensure(engine, [t], cancel=cancel)
            emb = tiled.tile(t, device=device)
        pred = engine.predict(emb, local, multimask=multimask)
        for j, (o, core) in enumerate(users):
            pieces[o].append(Piece(t, pred, j if len(prompts.boxes) else 0, core))
    scores = np.stack([_object_scores(grid, parts) for parts in pieces]).astype(np.float32)
    return TiledPrediction(grid=grid, pieces=pieces, scores=scores, best=scores.argmax(axis=1))


def _object_scores(grid: TileGrid, parts: list[Piece]) -> np.ndarray:
    """(K,) predicted IoUs of an object: its piece's, or the area-weighted mean of its pieces."""
    first = parts[0]
    if len(parts) == 1:
        return first.prediction.scores[first.obj]
    k_count = first.prediction.scores.shape[1]
    out = np.zeros(k_count)
    for k in range(k_count):
        s = np.array([p.prediction.scores[p.obj, k] for p in parts], float)
        area = np.array([p.region(grid.tiles[p.tile], k).area for p in parts], float)
        out[k] = (s * area).sum() / area.sum() if area.sum() else s.mean()
    return out
