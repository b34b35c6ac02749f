"""Image embeddings: computing them once, and keeping them (in memory and on disk).

An embedding is identified by the *prepared* uint8 RGB image (so it already reflects the
channel choice and intensity normalisation) and by the model identity (architecture + checkpoint
hash). The same image and model never pay for the encoder twice in a session, and
``napari-sam embed`` can precompute embeddings on disk for later sessions.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import Cancelled, ImageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .loaded_model import LoadedModel

#: ``progress(done, total)``; called from the thread doing the work.
ProgressCallback = Callable[[int, int], None]
#: Returns True when the user asked to stop.
CancelCheck = Callable[[], bool]


@dataclass(frozen=True)
class ImageEmbedding:
    """The image encoder's output for one image, with the geometry needed to decode masks.

    Attributes
    ----------
    features : torch.Tensor
        (1, C, 64, 64) float32 on the model's device.
    original_size : tuple of int
        (H, W) of the image the user sees.
    input_size : tuple of int
        (h, w) after resizing the longest side to the model's input size, before padding.
    model_id : str
        Identity of the model that produced it.
    key : str
        Content hash of the prepared image.
    seconds : float
        Time the encoder took (0 when it came from a cache).
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model_id: str
    key: str
    seconds: float = 0.0

    @property
    def nbytes(self) -> int:
        """Memory held by the features."""
        return self.features.numel() * self.features.element_size()


def image_key(rgb: np.ndarray) -> str:
    """Content hash of a prepared (H, W, 3) uint8 image (shape included)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((rgb.shape, str(rgb.dtype))).encode())
    h.update(np.ascontiguousarray(rgb).data)
    return h.hexdigest()


def check_rgb(rgb: np.ndarray) -> None:
    """Raise :class:`ImageError` unless ``rgb`` is what the encoder takes: uint8 (H, W, 3)."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3:
        raise ImageError(
            "the encoder takes a uint8 (H, W, 3) image; prepare it with "
            "napari_sam.core.normalize.prepare_image"
        )
    if rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        raise ImageError(f"expected a (H, W, 3) image, got shape {rgb.shape}")


def check_not_too_thin(shape: tuple[int, int], size: int) -> None:
    """Raise :class:`ImageError` when SAM's resize would leave ``shape`` under a pixel across.

    SAM scales the longest side to ``size`` pixels (rounding the other side), so an image
    more than ``2 * size`` times longer than it is wide (a 1x3000 line scan) would become
    zero pixels across, and the encoder would fail with a message no user can act on.
    """
    h, w = (int(v) for v in shape)
    longest, shortest = max(h, w), min(h, w)
    if int(shortest * size / longest + 0.5) < 1:
        raise ImageError(
            f"the image is {h}x{w} pixels, too thin for SAM: it scales the longest side to "
            f"{size} pixels, which leaves less than one pixel across (the longest side may "
            f"be at most {2 * size} times the shortest); use a wider region of the image"
        )


def compute_embedding(
    model: LoadedModel,
    rgb: np.ndarray,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> ImageEmbedding:
    """Run SAM's image encoder on a prepared image.

    The encoder runs at the model's precision (``model.precision``, see
    :mod:`napari_sam.core.acceleration`); the features are always float32.

    Parameters
    ----------
    model : LoadedModel
        The network.
    rgb : ndarray
        uint8 (H, W, 3), e.g. from :func:`napari_sam.core.normalize.prepare_image`.
    progress : callable, optional
        Called with (blocks done, total) as the encoder's transformer blocks run.
    cancel : callable, optional
        Polled between blocks; when it returns True, :class:`Cancelled` is raised.

    Returns
    -------
    ImageEmbedding
    """
    import torch

    from .acceleration import autocast
    from .resize import resize_image

    check_rgb(rgb)
    sam = model.sam
    encoder = sam.image_encoder
    check_not_too_thin(rgb.shape[:2], encoder.img_size)
    t0 = time.perf_counter()
    resized = resize_image(rgb, encoder.img_size)
    x = torch.as_tensor(resized, device=sam.device).permute(2, 0, 1).contiguous()[None]
    input_size = (int(x.shape[-2]), int(x.shape[-1]))

    total = len(encoder.blocks)
    handles = []
    # Checked before any hook is registered: raising after registering would leave the hooks
    # on the encoder, and every later run would call this run's callbacks.
    if cancel is not None and cancel():
        raise Cancelled("embedding cancelled")
    if progress is not None or cancel is not None:

        def hook(module: Any, args: Any, output: Any, index: list[int] = [0]) -> None:  # noqa: B006
            index[0] += 1
            if cancel is not None and cancel():
                raise Cancelled("embedding cancelled")
            if progress is not None:
                progress(index[0], total)

        handles = [b.register_forward_hook(hook) for b in encoder.blocks]
    try:
        with torch.inference_mode():
            x = sam.preprocess(x.float())
            with autocast(model):
                features = encoder(x)
            features = features.float()  # a no-op in fp32; the decoder runs in fp32
    finally:
        for h in handles:
            h.remove()
    return ImageEmbedding(
        features=features,
        original_size=(int(rgb.shape[0]), int(rgb.shape[1])),
        input_size=input_size,
        model_id=model.model_id,
        key=image_key(rgb),
        seconds=time.perf_counter() - t0,
    )


class EmbeddingCache:
    """A bounded, thread-safe, least-recently-used store of embeddings in memory.

    Parameters
    ----------
    max_items : int
        How many embeddings to keep (one ViT embedding is 4 MiB; slices of a stack each take
        one entry).
    """

    def __init__(self, max_items: int = 32) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple[str, str], ImageEmbedding] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_id: str, key: str) -> ImageEmbedding | None:
        """Return the cached embedding, marking it recently used, or None."""
        with self._lock:
            item = self._items.get((model_id, key))
            if item is not None:
                self._items.move_to_end((model_id, key))
            return item

    def put(self, embedding: ImageEmbedding) -> None:
        """Store an embedding, evicting the least recently used beyond ``max_items``."""
        with self._lock:
            self._items[(embedding.model_id, embedding.key)] = embedding
            self._items.move_to_end((embedding.model_id, embedding.key))
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class EmbeddingStore:
    """Embeddings saved as ``.npz`` files in a folder, for reuse across sessions.

    Parameters
    ----------
    folder : path
        Where the files live; created on first write.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def files(self) -> list[Path]:
        """The stored embeddings (one ``.npz`` per image and model), in no order."""
        try:
            return [p for p in self.folder.glob("*/*.npz") if p.is_file()]
        except OSError:  # pragma: no cover - an unreadable folder holds nothing we can use
            return []

    def usage(self) -> tuple[int, int]:
        """(number of stored embeddings, bytes they take on disk)."""
        files = self.files()
        size = 0
        for p in files:
            with contextlib.suppress(OSError):  # removed meanwhile by another process
                size += p.stat().st_size
        return len(files), size

    def clear(self) -> int:
        """Delete every stored embedding (and left-over partial writes); return how many.

        Only this store's files go: other things in the folder (the zarr stores of tiled
        images, :mod:`napari_sam.core.tile_store`) are left alone.
        """
        removed = 0
        for p in [*self.files(), *self.folder.glob("*/*.npz.part")]:
            with contextlib.suppress(OSError):
                p.unlink()
                removed += p.suffix == ".npz"
        for d in self.folder.glob("*"):
            with contextlib.suppress(OSError):
                if d.is_dir() and not d.name.endswith(".zarr") and not any(d.iterdir()):
                    d.rmdir()
        return removed

    def path_for(self, model_id: str, key: str) -> Path:
        """File that holds (or would hold) the embedding of ``key`` by ``model_id``."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)
        return self.folder / safe / f"{key}.npz"

    def load(self, model_id: str, key: str, device: str = "cpu") -> ImageEmbedding | None:
        """Return the stored embedding, or None when absent or unreadable."""
        import torch

        path = self.path_for(model_id, key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return ImageEmbedding(
                    features=torch.from_numpy(z["features"]).to(device),
                    original_size=tuple(int(v) for v in z["original_size"]),
                    input_size=tuple(int(v) for v in z["input_size"]),
                    model_id=str(z["model_id"]),
                    key=str(z["key"]),
                    seconds=0.0,
                )
        except Exception:
            # A damaged cache file (truncated: BadZipFile, EOFError; altered: bad CRC, wrong
            # member types: TypeError; ...) is only a lost speed-up: recompute, overwrite it.
            return None

    def save(self, embedding: ImageEmbedding) -> Path:
        """Write ``embedding`` atomically; return its path."""
        path = self.path_for(embedding.model_id, embedding.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".npz.part", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    features=embedding.features.detach().float().cpu().numpy(),
                    original_size=np.array(embedding.original_size),
                    input_size=np.array(embedding.input_size),
                    model_id=np.array(embedding.model_id),
                    key=np.array(embedding.key),
                )
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path
