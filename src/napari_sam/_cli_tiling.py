"""Large images on the command line: ``--tile ROWS,COLS`` and ``--halo ROWS,COLS``.

``segment``, ``auto`` and ``embed`` take them (see :mod:`napari_sam.cli`). A 2D image that
is tiled (explicitly, or by ``--tile auto``, the default, when its objects would otherwise
shrink below what SAM resolves: :mod:`napari_sam.core.tiling`) is embedded tile by tile into a
zarr store in the embeddings folder (``tiles/<model>/<image>-<tiling>.zarr``), where later
commands on the same image, model, normalisation and tiling find it. A store made differently
(another napari-sam version, say) is recomputed with a note, never silently reused.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._cli_common import EXIT_OK, _auto_params, _embeddings_dir, _Input, _plural, _write_table

if TYPE_CHECKING:  # imported when used, so that ``--help`` stays fast
    from .core.engine import SamEngine
    from .core.prepared_plane import PreparedPlane
    from .core.tiled_embedding import TiledEmbedding
    from .core.tiling import TileGrid

_TILE_HELP = (
    "tile large 2D images: ROWS,COLS is the largest tile (each is embedded with its halo "
    "around it); auto (default) tiles only images large enough to shrink objects of 32 px "
    "below 16 px in SAM's 1024 px input (longest side over 2048 px); off never tiles"
)
_HALO_HELP = (
    "context around each tile, ROWS,COLS pixels (default: a sixth of the tile, 16-128 px; "
    "with auto tiling 128,128); objects up to about this size near a tile's edge are whole"
)


def _pair(text: str, what: str, minimum: int) -> tuple[int, int]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} {text!r}: expected ROWS,COLS integers") from None
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"{what} {text!r}: expected ROWS,COLS (two integers)")
    if min(values) < minimum:
        raise argparse.ArgumentTypeError(f"{what} {text!r}: values must be at least {minimum}")
    return values  # type: ignore[return-value]


def _tile(text: str) -> str | tuple[int, int]:
    if text.strip().lower() in ("auto", "off"):
        return text.strip().lower()
    return _pair(text, "--tile", 16)


def _halo(text: str) -> tuple[int, int]:
    return _pair(text, "--halo", 0)


def add_tiling_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tile`` and ``--halo`` (for the commands that embed: segment, auto, embed)."""
    g = parser.add_argument_group("large images (tiling; see docs/large-images.md)")
    g.add_argument(
        "--tile", type=_tile, default="auto", metavar="ROWS,COLS|auto|off", help=_TILE_HELP
    )
    g.add_argument("--halo", type=_halo, default=None, metavar="ROWS,COLS", help=_HALO_HELP)


def tiling_for(args: argparse.Namespace, inp: _Input) -> TileGrid | None:
    """The tile grid for ``inp`` (None: embed it whole), checked before the model loads."""
    from .core.errors import ImageError
    from .core.tiling import choose_tiling

    if inp.is_volume:
        if isinstance(args.tile, tuple) or args.halo is not None:
            raise ImageError(
                f"{inp.path} is a volume ({inp.describe()}): --tile and --halo apply to 2D "
                "images; the slices of a volume are embedded whole"
            )
        return None
    grid = choose_tiling(inp.plane_shape, args.tile, args.halo)
    if grid is None and args.halo is not None:
        h, w = inp.plane_shape
        print(
            f"note: {inp.path} ({h} x {w}) is embedded whole (--tile {args.tile}); --halo has "
            "no effect",
            file=sys.stderr,
        )
    return grid


def _store_path(args: argparse.Namespace, model_id: str, key: str, grid: TileGrid) -> Path:
    from .core.tile_store import store_path

    return store_path(_embeddings_dir(args), model_id, key, grid)


def tile_source(inp: _Input) -> np.ndarray | PreparedPlane:
    """What ``inp``'s tiles are cut from: a :class:`PreparedPlane` of a lazy image (OME-Zarr,
    a large TIFF, mapped or not), which reads and converts only the blocks of the tiles used;
    the prepared image otherwise."""
    if not inp.is_lazy:
        return inp.rgb_plane(0)
    from .core.prepared_plane import PreparedPlane

    return PreparedPlane(inp.planes[0], inp.norm, rgb=inp.rgb)


def open_tiles(
    args: argparse.Namespace,
    engine: SamEngine,
    inp: _Input,
    grid: TileGrid,
    rgb: np.ndarray | PreparedPlane,
) -> TiledEmbedding:
    """``rgb``'s tiles (:func:`tile_source`), with their store in the embeddings folder
    (unless disabled)."""
    from .core.prepared_plane import PreparedPlane
    from .core.tile_store import StoreSignature, TileStore
    from .core.tiled_embedding import open_tiled, plane_key

    store = None
    if not args.no_embedding_cache:
        # A prepared plane's percentiles are fixed to contrast limits: those go in the store.
        norm = rgb.norm.describe() if isinstance(rgb, PreparedPlane) else None
        signature = StoreSignature.make(
            engine.model, norm or inp.norm.describe(inp.planes.dtype), grid, n_planes=1
        )
        path = _store_path(args, engine.model_id, plane_key(rgb), grid)
        path.parent.mkdir(parents=True, exist_ok=True)
        store = TileStore.open(path, signature, on_mismatch="recompute")
        for note in store.notes:
            print(f"note: {note}", file=sys.stderr)
    # Each tile is used once by the commands: keep few in memory (the store has them all).
    return open_tiled(engine, rgb, grid, store=store, on_mismatch="recompute", max_in_memory=4)


def _tile_reporter(n: int) -> Any:
    """An ``on_tile`` callback printing ``embedding tiles: k/n``."""
    count = [0]

    def on_tile(_index: int) -> None:
        count[0] += 1
        print(f"\rembedding tiles: {count[0]}/{n}", end="", file=sys.stderr)

    return on_tile


def _embed_tiles(engine: SamEngine, tiled: TiledEmbedding, tiles: list[int] | None = None) -> None:
    """Embed ``tiles`` (default all) with progress; say how many were computed and reused."""
    wanted = list(range(len(tiled.grid))) if tiles is None else sorted(set(tiles))
    before = set(tiled.embedded)
    t0 = time.perf_counter()
    tiled.ensure(engine, wanted, on_tile=_tile_reporter(len(wanted)))
    reused = len(before & set(wanted))
    m, grid = engine.model, tiled.grid
    print(
        f"\rtile embeddings ({engine.model_id}, {m.device}, {m.precision}): {grid.describe()}"
        f"; {len(wanted) - reused} computed, {reused} reused in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )


def embed_tiles(args: argparse.Namespace, engine: SamEngine, inp: _Input, grid: TileGrid) -> None:
    """``napari-sam embed`` of a tiled image: every tile into its store."""
    tiled = open_tiles(args, engine, inp, grid, tile_source(inp))
    _embed_tiles(engine, tiled)
    where = f" in {tiled.store.path}" if tiled.store is not None else ""
    print(f"{inp.path}: {_plural(len(grid), 'tile embedding')} stored{where}")


def segment_tiles(
    args: argparse.Namespace, engine: SamEngine, inp: _Input, prompts: Any, grid: TileGrid
) -> int:
    """``napari-sam segment`` of a tiled image: only the tiles the prompts need are embedded."""
    from .core.io import write_labels
    from .core.tiled_prompts import plan_tiles, predict_tiled

    tiled = open_tiles(args, engine, inp, grid, tile_source(inp))
    needed = sorted({t for parts in plan_tiles(grid, prompts) for t, _ in parts})
    _embed_tiles(engine, tiled, needed)
    pred = predict_tiled(engine, tiled, prompts)
    labels = np.zeros(inp.plane_shape, np.int32)
    for obj in range(pred.n_objects):
        pred.region(obj).paint(labels, obj + 1)
    for obj in range(pred.n_objects):
        tiles = pred.tiles_of(obj)
        where = f"tile {tiles[0]}" if len(tiles) == 1 else f"merged from tiles {tiles}"
        print(
            f"object {obj + 1}: {int((labels == obj + 1).sum())} px, predicted IoU "
            f"{pred.score(obj):.3f} ({where})",
            file=sys.stderr,
        )
    out = write_labels(args.output, labels, geometry=inp.geometry)
    print(f"wrote {out} ({_plural(pred.n_objects, 'object')})")
    return EXIT_OK


def auto_tiles(args: argparse.Namespace, engine: SamEngine, inp: _Input, grid: TileGrid) -> int:
    """``napari-sam auto`` of a tiled image: tile by tile, stitched into one label image."""
    from .core.io import write_labels
    from .core.tiled_automatic import segment_tiled

    tiled = open_tiles(args, engine, inp, grid, tile_source(inp))
    n = len(grid)
    print(f"automatic segmentation in {grid.describe()}", file=sys.stderr)
    last = [-1]
    done_tiles = [0]

    def progress(done: int, total: int) -> None:
        pct = int(100 * done / max(total, 1))
        if pct != last[0]:
            last[0] = pct
            print(
                f"\rautomatic segmentation: {pct:3d}% (tile {min(done_tiles[0] + 1, n)}/{n})",
                end="",
                file=sys.stderr,
            )

    def on_tile(_index: int) -> None:
        done_tiles[0] += 1

    t0 = time.perf_counter()
    result = segment_tiled(engine, tiled, _auto_params(args), progress=progress, on_tile=on_tile)
    print(
        f"\rautomatic segmentation: done in {time.perf_counter() - t0:.1f} s ({n} tiles)",
        file=sys.stderr,
    )
    out = write_labels(args.output, result.labels, geometry=inp.geometry)
    if args.table:
        _write_table(args.table, result.table)
    print(f"wrote {out} ({_plural(result.n_objects, 'object')})")
    return EXIT_OK
