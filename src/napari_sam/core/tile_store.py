"""An on-disk store of embeddings that scales: zarr (v3), one chunk per tile of each plane.

One store holds the embeddings of one image or volume, made one way: the
:class:`StoreSignature` (model identity, checkpoint hash, encoder precision, normalisation,
tile geometry, image shape, software and format versions) is written when the store is made
and checked whenever it is opened. A store made differently is never silently reused: it is
reported (:class:`~napari_sam.core.errors.EmbeddingStoreError`, naming what differs) or, when
the caller asks for it, emptied and recomputed. Each plane's content key (the hash of its
prepared image, or for a lazy plane an identity that does not read every pixel) is checked
the same way before its tiles are used, and each tile's own content hash before it is used.

Layout (zarr v3)::

    STORE.zarr/           group; attributes: "napari_sam_embeddings" (the format),
                          "signature", "plane_keys", "input_size"
      features            float32 (planes, tiles, C, E, E), one chunk per tile of a plane
      keys                uint8 (planes, tiles, 16): content hash of the pixels of each tile's
                          block (blake2b-128 of the prepared block, as ``image_key``)
      done                uint8 (planes, tiles): 1 once a tile's chunk is completely written

A tile's ``done`` flag is set only after its chunk is written, so a run that stops half-way
leaves a store whose finished tiles are reused and whose other tiles are computed later.
Features are stored uncompressed float32: exactly what the encoder gave.
"""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import EmbeddingStoreError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .checkpoints import LoadedModel
    from .tiling import TileGrid

#: Bytes of a tile's content hash (:func:`~napari_sam.core.embedding.image_key`, blake2b-128).
_KEY_BYTES = 16

#: Version of the layout above; a store of another format is not read.
STORE_FORMAT = 2
_MARK = "napari_sam_embeddings"
OnMismatch = Literal["error", "recompute"]


@dataclass(frozen=True)
class StoreSignature:
    """How the embeddings of a store were made; two stores are interchangeable iff equal.

    Attributes
    ----------
    model_id : str
        :attr:`~napari_sam.core.checkpoints.LoadedModel.model_id` (name, hash, precision).
    checkpoint_sha256 : str or None
        Full SHA-256 of the checkpoint (None for random weights).
    precision : str
        Encoder precision (``fp32``, ``bf16``, ``fp16``).
    normalization : str
        How the image was turned into SAM's uint8 RGB (e.g. ``"percentile 1-99.8"``).
    tiling : dict
        :meth:`~napari_sam.core.tiling.TileGrid.to_dict` (image shape, tile, halo, block).
    n_planes : int
        Planes (slices) of the image.
    software_version : str
        napari-sam's version.
    format : int
        :data:`STORE_FORMAT`.
    """

    model_id: str
    checkpoint_sha256: str | None
    precision: str
    normalization: str
    tiling: dict[str, list[int]]
    n_planes: int
    software_version: str
    format: int = STORE_FORMAT

    @classmethod
    def make(
        cls, model: LoadedModel, normalization: str, grid: TileGrid, n_planes: int = 1
    ) -> StoreSignature:
        """The signature of embeddings made by ``model`` with these settings, now."""
        from .. import __version__

        return cls(
            model_id=model.model_id,
            checkpoint_sha256=model.sha256,
            precision=model.precision,
            normalization=normalization,
            tiling=grid.to_dict(),
            n_planes=int(n_planes),
            software_version=__version__,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return json.loads(json.dumps(asdict(self)))

    def differences(self, stored: dict[str, Any]) -> list[str]:
        """What differs between ``stored`` (a :meth:`to_dict`) and this, one line per field."""
        mine = self.to_dict()
        return [
            f"{k}: store has {stored.get(k)!r}, expected {mine[k]!r}"
            for k in mine
            if stored.get(k) != mine[k]
        ]


class TileStore:
    """A zarr store of tile embeddings; use :meth:`open`.

    Attributes
    ----------
    path : Path
    signature : StoreSignature
    notes : list of str
        What :meth:`open` and :meth:`check_plane` recomputed and why (for the user).
    """

    def __init__(self, path: Path, group: Any, signature: StoreSignature) -> None:
        self.path = path
        self.signature = signature
        self.notes: list[str] = []
        self._group = group
        self._lock = threading.Lock()
        n_tiles = _n_tiles(signature)
        if "done" not in group:
            group.create_array(
                "done",
                shape=(signature.n_planes, n_tiles),
                chunks=(1, n_tiles),
                dtype="uint8",
                fill_value=0,
                compressors=None,
            )
        if "keys" not in group:
            group.create_array(
                "keys",
                shape=(signature.n_planes, n_tiles, _KEY_BYTES),
                chunks=(1, n_tiles, _KEY_BYTES),
                dtype="uint8",
                fill_value=0,
                compressors=None,
            )
        self._done = np.asarray(group["done"][:], dtype=bool)
        self._keys = np.asarray(group["keys"][:], dtype=np.uint8)

    @classmethod
    def open(
        cls,
        path: str | Path,
        signature: StoreSignature,
        *,
        on_mismatch: OnMismatch = "error",
    ) -> TileStore:
        """Open (or create) the store at ``path`` for embeddings made as ``signature`` says.

        Parameters
        ----------
        path : path
            A folder, conventionally ending in ``.zarr``; created when missing.
        signature : StoreSignature
        on_mismatch : {"error", "recompute"}
            What to do when the store was made differently, or is damaged: raise
            :class:`EmbeddingStoreError` naming the differences, or empty it (its embeddings
            are then computed again). A folder that is not a napari-sam store is never
            emptied.
        """
        import zarr

        path = Path(path)
        if path.exists() and not path.is_dir():
            raise EmbeddingStoreError(f"embedding store {path} is a file, not a zarr folder")
        if path.is_dir() and any(path.iterdir()):
            stored, problem, ours = _read_signature(path)
            if problem is None:
                diffs = signature.differences(stored)
                if not diffs:
                    group = zarr.open_group(path, mode="r+", zarr_format=3)
                    return cls(path, group, signature)
                problem = "it was made differently: " + "; ".join(diffs)
            if not ours:
                raise EmbeddingStoreError(
                    f"cannot use {path} as an embedding store: {problem}; choose another path"
                )
            if on_mismatch != "recompute":
                raise EmbeddingStoreError(
                    f"cannot use the embedding store {path}: {problem}",
                    cli_hint="delete it or choose another path",
                    gui_hint="choose another store, or let napari-sam recompute it",
                )
            shutil.rmtree(path)
            store = cls._create(path, signature)
            store.notes.append(f"recomputing the embeddings in {path}: {problem}")
            return store
        return cls._create(path, signature)

    @classmethod
    def _create(cls, path: Path, signature: StoreSignature) -> TileStore:
        import zarr

        attrs = {
            _MARK: STORE_FORMAT,
            "signature": signature.to_dict(),
            "plane_keys": [None] * signature.n_planes,
        }
        group = zarr.open_group(path, mode="w", zarr_format=3, attributes=attrs)
        return cls(path, group, signature)

    @property
    def n_tiles(self) -> int:
        """Tiles per plane."""
        return _n_tiles(self.signature)

    def check_plane(self, plane: int, key: str, *, on_mismatch: OnMismatch = "error") -> None:
        """Bind ``plane`` to the content ``key`` of its prepared image, or check it is bound so.

        A plane whose stored tiles came from other content is reported, or emptied with
        ``on_mismatch="recompute"``.
        """
        self._check_index(plane, 0)
        with self._lock:
            keys = list(self._group.attrs["plane_keys"])
            if keys[plane] == key:
                return
            if keys[plane] is not None and self._done[plane].any():
                problem = (
                    f"plane {plane} of the embedding store {self.path} holds another image "
                    "(or the same image normalised differently)"
                )
                if on_mismatch != "recompute":
                    raise EmbeddingStoreError(
                        problem, cli_hint="delete the store or choose another path"
                    )
                self.notes.append(f"recomputing {problem}")
                self._done[plane] = False
                self._group["done"][plane] = self._done[plane].astype(np.uint8)
            keys[plane] = key
            self._group.attrs["plane_keys"] = keys

    def has(self, plane: int, tile: int) -> bool:
        """Whether the tile's features are stored."""
        self._check_index(plane, tile)
        return bool(self._done[plane, tile])

    def done_tiles(self, plane: int = 0) -> list[int]:
        """Indices of the stored tiles of ``plane``."""
        self._check_index(plane, 0)
        return [int(i) for i in np.flatnonzero(self._done[plane])]

    @property
    def input_size(self) -> tuple[int, int] | None:
        """Resized (h, w) of every block in SAM's input (all blocks have one shape)."""
        value = self._group.attrs.get("input_size")
        return None if value is None else (int(value[0]), int(value[1]))

    def tile_key(self, plane: int, tile: int) -> str | None:
        """Content hash of the pixels a stored tile was computed from (None: not stored)."""
        if not self.has(plane, tile):
            return None
        return bytes(self._keys[plane, tile]).hex()

    def load(
        self, plane: int, tile: int, *, device: str = "cpu", key: str | None = None
    ) -> torch.Tensor | None:
        """(1, C, E, E) float32 features of a stored tile; None when absent or unreadable.

        With ``key`` (the content hash of the tile's block now, see
        :func:`~napari_sam.core.embedding.image_key`), a tile computed from other pixels is
        not returned either (it is noted in :attr:`notes` and computed again by its user):
        the plane's key of a lazy plane does not cover every pixel, each tile's does.
        """
        import torch

        if not self.has(plane, tile):
            return None
        if key is not None and self.tile_key(plane, tile) != key:
            self.notes.append(
                f"recomputing tile {tile} of plane {plane} in {self.path}: its pixels changed"
            )
            return None
        try:
            data = np.asarray(self._group["features"][plane, tile], dtype=np.float32)
        except Exception:
            # A damaged chunk is only a lost speed-up: the tile is computed again.
            self._mark(plane, tile, False)
            return None
        return torch.from_numpy(np.ascontiguousarray(data))[None].to(device)

    def save(
        self,
        plane: int,
        tile: int,
        features: torch.Tensor,
        input_size: tuple[int, int],
        *,
        key: str | None = None,
    ) -> None:
        """Write a tile's (1, C, E, E) features and the content hash ``key`` of its block,
        then mark it done."""
        self._check_index(plane, tile)
        if self._done[plane, tile]:  # rewritten: never done with a half-written chunk or old key
            self._mark(plane, tile, False)
        digest = np.zeros(_KEY_BYTES, np.uint8)
        if key is not None:
            digest[:] = np.frombuffer(bytes.fromhex(key), np.uint8)[:_KEY_BYTES]
        data = features.detach().float().cpu().numpy()[0]
        with self._lock:
            if "features" not in self._group:
                c, e1, e2 = data.shape
                self._group.create_array(
                    "features",
                    shape=(self.signature.n_planes, self.n_tiles, c, e1, e2),
                    chunks=(1, 1, c, e1, e2),
                    dtype="float32",
                    fill_value=0.0,
                    compressors=None,
                )
                self._group.attrs["input_size"] = [int(v) for v in input_size]
            elif self.input_size != tuple(input_size):
                raise EmbeddingStoreError(
                    f"tile {tile} of plane {plane} was resized to {tuple(input_size)}, but the "
                    f"store {self.path} holds tiles resized to {self.input_size}"
                )
            self._group["features"][plane, tile] = data
            self._group["keys"][plane, tile] = digest
            self._keys[plane, tile] = digest
        self._mark(plane, tile, True)

    def _mark(self, plane: int, tile: int, done: bool) -> None:
        with self._lock:
            self._done[plane, tile] = done
            self._group["done"][plane] = self._done[plane].astype(np.uint8)

    def _check_index(self, plane: int, tile: int) -> None:
        if not (0 <= plane < self.signature.n_planes and 0 <= tile < self.n_tiles):
            raise IndexError(
                f"plane {plane}, tile {tile} outside the store "
                f"({self.signature.n_planes} planes of {self.n_tiles} tiles)"
            )


def store_path(folder: str | Path, model_id: str, key: str, grid: TileGrid) -> Path:
    """Where a tiled image's store lives in an embeddings folder.

    ``FOLDER/tiles/<model>/<image key>-tile<R>x<C>-halo<R>x<C>.zarr``: the command line and
    the widget both look here, so a store made by one is found by the other for the same
    image (content ``key`` of its prepared RGB), model and tiling.
    """
    t, h = grid.tile, grid.halo
    name = f"{key}-tile{t[0]}x{t[1]}-halo{h[0]}x{h[1]}.zarr"
    return Path(folder) / "tiles" / model_id / name


def stored_tiling(path: str | Path) -> dict[str, list[int]]:
    """The tile geometry (:meth:`TileGrid.to_dict`) a napari-sam store at ``path`` holds.

    Raises
    ------
    EmbeddingStoreError
        When ``path`` is not a napari-sam embedding store this version reads.
    """
    path = Path(path)
    if not path.is_dir():
        raise EmbeddingStoreError(f"{path} is not an embedding store (not a folder)")
    stored, problem, _ = _read_signature(path)
    tiling = stored.get("tiling")
    if problem is None and not isinstance(tiling, dict):
        problem = "its signature has no tile geometry"
    if problem is not None:
        raise EmbeddingStoreError(f"cannot use {path} as an embedding store: {problem}")
    return tiling


def _n_tiles(signature: StoreSignature) -> int:
    from .tiling import TileGrid

    t = signature.tiling
    return len(TileGrid(tuple(t["image_shape"]), tuple(t["tile"]), tuple(t["halo"])))


def _read_signature(path: Path) -> tuple[dict[str, Any], str | None, bool]:
    """(stored signature, why it cannot be used or None, whether napari-sam made the folder).

    Only a folder known to be a napari-sam store may be emptied for recomputing.
    """
    meta = path / "zarr.json"
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except FileNotFoundError:
        return {}, "it is a folder that is not a zarr store (no zarr.json)", False
    except (OSError, ValueError, AttributeError) as exc:
        return {}, f"its zarr.json cannot be read ({type(exc).__name__})", False
    if not isinstance(attrs, dict) or _MARK not in attrs:
        return {}, "it is a zarr store made by something else than napari-sam", False
    if attrs[_MARK] != STORE_FORMAT:
        return {}, f"it has format {attrs[_MARK]!r}, this napari-sam reads {STORE_FORMAT}", True
    signature = attrs.get("signature")
    if not isinstance(signature, dict):
        return {}, "its signature is missing", True
    return signature, None, True
