"""Automatic segmentation of a large image, tile by tile, stitched into one label image.

Each tile's block (core + halo, see :mod:`napari_sam.core.tiling`) is segmented as an image
of its own, exactly as :func:`~napari_sam.core.automatic.segment_automatically` segments a
whole image. The masks of all tiles are then stitched (the rule, also in
docs/large-images.md):

1. **Matching** (halo + overlap): two masks from different tiles whose blocks overlap are the
   same object when, inside the overlap of the two blocks, their IoU is at least
   ``match_iou`` (0.5). Pairs are joined from the highest IoU down, and a stitched object
   takes at most one mask from each tile (so that objects SAM kept apart in one tile, such
   as a nucleus inside its cell, stay apart).
2. **One mask per object**: inside a tile's core, a stitched object is what that tile's mask
   says (each tile is trusted where it sees the most context); elsewhere it is the union of
   its masks. An object cut by block edges is thus joined across tiles, and an object seen
   whole by two tiles is neither doubled nor cut at the seam.
3. **Ownership**: an object none of whose masks has a pixel in its own tile's core, and all
   of whose masks touch an inner edge of their block, is dropped: it is a piece of something
   cut by the block's edge, which the tile owning those pixels answers for. (An object seen
   whole in a halo only, because the tile owning it missed it, is kept.)
4. The objects become labels as in the untiled case (larger below smaller, ``min_size``);
   predicted IoU and stability are means over the object's masks, weighted by the pixels
   each has in its own core (by their areas when none has any).

Memory follows the tiles: one tile's embedding at a time (unless a store or the caller
keeps more), masks kept only inside their bounding boxes, and the label image itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .automatic import (
    AutoParams,
    AutoSegmentation,
    count_steps,
    generate_records,
    masks_to_labels,
)
from .embedding import CancelCheck, ProgressCallback
from .engine import SamEngine
from .errors import Cancelled, NapariSamError
from .region_mask import RegionMask
from .tiled_embedding import TileCallback, TiledEmbedding
from .tiling import Tile

#: IoU inside the shared region above which masks of two tiles are one object.
MATCH_IOU = 0.5


@dataclass
class _Mask:
    """One tile's mask in image coordinates, with its scores and pixels in the tile's core."""

    tile: int
    region: RegionMask
    predicted_iou: float
    stability: float
    owned: int
    cut: bool

    @property
    def box(self) -> tuple[int, int, int, int]:
        h, w = self.region.mask.shape
        return self.region.y0, self.region.x0, self.region.y0 + h, self.region.x0 + w


def _trimmed(segmentation: RegionMask | np.ndarray, y0: int, x0: int) -> RegionMask | None:
    """A record's mask as a RegionMask cut to its bounding box, moved by (y0, x0)."""
    r = segmentation if isinstance(segmentation, RegionMask) else RegionMask(0, 0, segmentation)
    r = r.trimmed()
    if not r.mask.size:
        return None
    return RegionMask(r.y0 + y0, r.x0 + x0, r.mask)


def _crop(region: RegionMask, box: tuple[int, int, int, int]) -> np.ndarray:
    """The mask's pixels inside the half-open image ``box`` (a box-shaped boolean array)."""
    y0, x0, y1, x1 = box
    out = np.zeros((max(0, y1 - y0), max(0, x1 - x0)), bool)
    h, w = region.mask.shape
    a0, b0 = max(y0, region.y0), max(x0, region.x0)
    a1, b1 = min(y1, region.y0 + h), min(x1, region.x0 + w)
    if a0 < a1 and b0 < b1:
        out[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0] = region.mask[
            a0 - region.y0 : a1 - region.y0, b0 - region.x0 : b1 - region.x0
        ]
    return out


def _overlap(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    y0, x0 = max(a[0], b[0]), max(a[1], b[1])
    y1, x1 = min(a[2], b[2]), min(a[3], b[3])
    return (y0, x0, y1, x1) if y0 < y1 and x0 < x1 else None


def _cut(region: RegionMask, block: tuple[int, int, int, int], shape: tuple[int, int]) -> bool:
    """Whether the mask touches an edge of its block that is not the image's edge."""
    y0, x0, y1, x1 = block
    h, w = region.mask.shape
    return (
        (region.y0 == y0 and y0 > 0)
        or (region.x0 == x0 and x0 > 0)
        or (region.y0 + h == y1 and y1 < shape[0])
        or (region.x0 + w == x1 and x1 < shape[1])
    )


def tile_masks(tile: Tile, records: list[dict], image_shape: tuple[int, int]) -> list[_Mask]:
    """One tile's records (block coordinates) as masks in image coordinates."""
    by0, bx0 = tile.block[:2]
    out = []
    for r in records:
        region = _trimmed(r["segmentation"], by0, bx0)
        if region is None:
            continue
        out.append(
            _Mask(
                tile=tile.index,
                region=region,
                predicted_iou=r["predicted_iou"],
                stability=r["stability_score"],
                owned=int(_crop(region, tile.core).sum()),
                cut=_cut(region, tile.block, image_shape),
            )
        )
    return out


def _matches(
    tiles: list[Tile], masks: list[_Mask], match_iou: float
) -> list[tuple[float, int, int]]:
    """(IoU in the shared region, i, j) for masks of different tiles that are one object."""
    by_tile: dict[int, list[int]] = {}
    for i, m in enumerate(masks):
        by_tile.setdefault(m.tile, []).append(i)
    blocks = np.array([t.block for t in tiles]).reshape(-1, 4)
    # Pairs of tiles whose blocks overlap (a few neighbours each), found at once.
    meets = (
        (blocks[:, None, 0] < blocks[None, :, 2])
        & (blocks[None, :, 0] < blocks[:, None, 2])
        & (blocks[:, None, 1] < blocks[None, :, 3])
        & (blocks[None, :, 1] < blocks[:, None, 3])
    )
    pairs = []
    for ia, ib in zip(*np.nonzero(np.triu(meets, 1)), strict=True):
        a, b = tiles[ia], tiles[ib]
        if a.index in by_tile and b.index in by_tile:
            shared = _overlap(a.block, b.block)
            pairs += _pairs_in(shared, by_tile[a.index], by_tile[b.index], masks, match_iou)
    pairs.sort(key=lambda p: -p[0])
    return pairs


def _pairs_in(
    shared: tuple[int, int, int, int] | None,
    first: list[int],
    second: list[int],
    masks: list[_Mask],
    match_iou: float,
) -> list[tuple[float, int, int]]:
    """Matching pairs between two tiles' masks, judged inside their shared region."""
    pairs: list[tuple[float, int, int]] = []
    if shared is None:
        return pairs
    for i in first:
        box_i = _overlap(masks[i].box, shared)
        if box_i is None:
            continue
        for j in second:
            if _overlap(masks[j].box, box_i) is None:
                continue
            mi, mj = _crop(masks[i].region, shared), _crop(masks[j].region, shared)
            union = np.logical_or(mi, mj).sum()
            score = np.logical_and(mi, mj).sum() / union if union else 0.0
            if score >= match_iou:
                pairs.append((float(score), i, j))
    return pairs


def stitch(
    tiles: list[Tile], masks: list[_Mask], match_iou: float = MATCH_IOU
) -> list[tuple[RegionMask, float, float]]:
    """Objects from the masks of all tiles (see the module rule).

    Returns (mask, predicted IoU, stability) per object.
    """
    group = list(range(len(masks)))
    members = {i: [i] for i in group}

    def root(i: int) -> int:
        while group[i] != i:
            group[i] = group[group[i]]
            i = group[i]
        return i

    for _, i, j in _matches(tiles, masks, match_iou):
        gi, gj = root(i), root(j)
        if gi == gj:
            continue
        if {masks[k].tile for k in members[gi]} & {masks[k].tile for k in members[gj]}:
            continue  # at most one mask per tile in an object
        group[gj] = gi
        members[gi] += members.pop(gj)
    objects = []
    for idx in members.values():
        parts = [masks[k] for k in idx]
        weight = np.array([p.owned for p in parts], float)
        if weight.sum() == 0:
            if all(p.cut for p in parts):
                continue
            weight = np.array([p.region.mask.sum() for p in parts], float)
        objects.append(
            (
                _merge(tiles, parts),
                float((weight * [p.predicted_iou for p in parts]).sum() / weight.sum()),
                float((weight * [p.stability for p in parts]).sum() / weight.sum()),
            )
        )
    return objects


def _merge(tiles: list[Tile], parts: list[_Mask]) -> RegionMask:
    """Union of the parts, except that inside a part's own core that part decides."""
    if len(parts) == 1:
        return parts[0].region
    y0 = min(p.box[0] for p in parts)
    x0 = min(p.box[1] for p in parts)
    y1 = max(p.box[2] for p in parts)
    x1 = max(p.box[3] for p in parts)
    box = (y0, x0, y1, x1)
    out = np.zeros((y1 - y0, x1 - x0), bool)
    for p in parts:
        out |= _crop(p.region, box)
    for p in parts:
        core = _overlap(tiles[p.tile].core, box)
        if core is not None:
            cy0, cx0, cy1, cx1 = core
            out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = _crop(p.region, core)
    return RegionMask(y0, x0, out)


def segment_tiled(
    engine: SamEngine,
    tiled: TiledEmbedding,
    params: AutoParams | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    on_tile: TileCallback | None = None,
    fast: bool | None = None,
    match_iou: float = MATCH_IOU,
) -> AutoSegmentation:
    """Segment every object of a tiled image (see the module rule).

    Parameters
    ----------
    engine : SamEngine
    tiled : TiledEmbedding
        From :func:`~napari_sam.core.tiled_embedding.open_tiled` (nothing needs to be
        embedded yet: missing tiles are embedded on the way, and written to its store).
    params : AutoParams, optional
        Applied to each tile as to a whole image (``points_per_side`` prompts per side of
        each block).
    progress : callable, optional
        ``progress(done, total)`` over all tiles' steps (an embedding and the prompt
        batches of each).
    cancel : callable, optional
        Polled between steps.
    on_tile : callable, optional
        Called with each tile's index once it is segmented.
    fast : bool, optional
        As in :func:`~napari_sam.core.automatic.segment_automatically`.
    match_iou : float
        IoU in the shared region above which masks of two tiles are one object.

    Returns
    -------
    AutoSegmentation
        The same label image and table as the untiled segmentation.
    """
    params = params or AutoParams()
    if not 0.0 < match_iou <= 1.0:
        raise NapariSamError("match_iou must be in (0, 1]")
    tiles = tiled.grid.tiles
    per_tile = count_steps(tiled.grid.block_shape, params)
    total = per_tile * len(tiles)
    masks: list[_Mask] = []
    for tile in tiles:
        if cancel is not None and cancel():
            raise Cancelled("automatic segmentation cancelled")
        tiled.ensure(engine, [tile.index], cancel=cancel)
        emb = tiled.tile(tile.index, device=engine.model.device)

        def step(done: int, _total: int, base: int = tile.index * per_tile) -> None:
            if progress is not None:
                progress(base + min(done, per_tile), total)

        records = generate_records(
            engine,
            tiled.block(tile.index),
            params,
            progress=step,
            cancel=cancel,
            fast=fast,
            embedding=emb,
        )
        masks += tile_masks(tile, records, tiled.grid.image_shape)
        if on_tile is not None:
            on_tile(tile.index)
    objects = stitch(tiles, masks, match_iou)
    labels, table = masks_to_labels(
        [o[0] for o in objects],
        tiled.grid.image_shape,
        predicted_iou=np.array([o[1] for o in objects]),
        stability_score=np.array([o[2] for o in objects]),
        min_size=params.min_size,
    )
    return AutoSegmentation(labels=labels, table=table, params=params)
