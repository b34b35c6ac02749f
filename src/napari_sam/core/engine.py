"""The SAM engine: image -> embedding (cached) -> masks from prompts.

Qt-free; used by the napari widget, the CLI and the automatic segmentation.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .embedding import (
    CancelCheck,
    EmbeddingCache,
    EmbeddingStore,
    ImageEmbedding,
    ProgressCallback,
    compute_embedding,
    image_key,
)
from .errors import PromptError
from .prompts import Prompts, make_prompts
from .region_mask import CandidateMasks, RegionMask

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from segment_anything.modeling import Sam

    from .loaded_model import LoadedModel


def upsample_logits(
    low_res: torch.Tensor, embedding: ImageEmbedding, image_size: int = 1024
) -> torch.Tensor:
    """Low-resolution (..., 256, 256) logits -> (..., H, W) at the original resolution.

    Same geometry as ``Sam.postprocess_masks``: to the padded input frame, crop the padding,
    then to the original size.
    """
    import torch.nn.functional as F

    shape = low_res.shape
    x = low_res.reshape(-1, 1, *shape[-2:]).float()
    x = F.interpolate(x, (image_size, image_size), mode="bilinear", align_corners=False)
    h, w = embedding.input_size
    x = x[..., :h, :w]
    x = F.interpolate(x, embedding.original_size, mode="bilinear", align_corners=False)
    return x.reshape(*shape[:-2], *embedding.original_size)


def decode(
    sam: Sam,
    features: torch.Tensor,
    *,
    points: tuple[torch.Tensor, torch.Tensor] | None = None,
    boxes: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    multimask: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt encoder + mask decoder on SAM-frame prompts: (B, K, 256, 256) logits, (B, K) IoU.

    ``points`` is (coords (B, N, 2) as x, y in the 1024 input frame, labels (B, N)).
    """
    import torch

    with torch.inference_mode():
        sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=masks)
        return sam.mask_decoder(
            image_embeddings=features,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )


def _span(lo: int, hi: int, n_in: int, n_out: int) -> tuple[int, int, int, int]:
    """Input rows [a, b) and output rows [A, B) of a bilinear resize n_in -> n_out.

    The spans hold every output row that reads input rows ``lo..hi-1`` and start and end on
    rows where the input and output grids line up (multiples of n_in / gcd and n_out / gcd),
    so that resizing the input span to the output span uses the very source coordinates and
    scale of the full resize (only float rounding can differ).
    """
    if n_in == n_out:
        return lo, hi, lo, hi
    g = math.gcd(n_in, n_out)
    q, p = n_in // g, n_out // g
    a = q * (max(lo - 1, 0) // q)
    b = min(n_in, q * -(-(hi + 1) // q))
    return a, b, p * (a // q), n_out if b == n_in else p * (b // q)


class _Geometry(Protocol):
    input_size: tuple[int, int]
    original_size: tuple[int, int]


def _first_stage(
    low_res: torch.Tensor, geometry: _Geometry, threshold: float, image_size: int
) -> tuple[torch.Tensor, tuple[int, int, int, int], tuple[int, int, int, int]] | None:
    """Low-resolution logits -> the resized input frame, only where they can exceed threshold.

    Returns the logits of input rows ya..yb-1 and columns xa..xb-1 and the output box
    (Ya, Yb, Xa, Xb) they resize to, or None when no pixel can exceed ``threshold``.
    """
    import torch.nn.functional as F

    low = low_res.float()
    above = low > threshold
    rows = above.any(1).nonzero()
    if len(rows) == 0:
        return None
    cols = above.any(0).nonzero()
    n_low = low.shape[-1]
    f = image_size // n_low
    if f * n_low != image_size or low.shape[-2] != n_low:  # pragma: no cover - not SAM
        raise ValueError(f"expected square low-resolution logits dividing {image_size}")
    spans = []
    for first, last, n_in, n_out in (
        (int(rows[0]), int(rows[-1]), geometry.input_size[0], geometry.original_size[0]),
        (int(cols[0]), int(cols[-1]), geometry.input_size[1], geometry.original_size[1]),
    ):
        # Rows of the padded input frame that can be above the threshold: those reading
        # low-resolution rows first..last (with a margin).
        lo, hi = max(0, f * (first - 1)), min(n_in, f * (last + 2))
        if lo >= hi:  # only the padding outside the image is above it
            return None
        a, b, big_a, big_b = _span(lo, hi, n_in, n_out)
        # Low-resolution rows whose exact upsampling covers input rows a..b-1.
        la, lb = max(0, a // f - 1), min(n_low, -(-b // f) + 1)
        spans.append((a, b, big_a, big_b, la, lb))
    (ya, yb, big_ya, big_yb, ly0, ly1), (xa, xb, big_xa, big_xb, lx0, lx1) = spans
    x = low[ly0:ly1, lx0:lx1][None, None]
    x = F.interpolate(x, (f * (ly1 - ly0), f * (lx1 - lx0)), mode="bilinear", align_corners=False)
    x = x[..., ya - f * ly0 : yb - f * ly0, xa - f * lx0 : xb - f * lx0]
    return x, (ya, yb, xa, xb), (big_ya, big_yb, big_xa, big_xb)


def upsample_region(
    low_res: torch.Tensor,
    embedding: _Geometry,
    threshold: float = 0.0,
    image_size: int = 1024,
) -> tuple[torch.Tensor, tuple[int, int, int, int]] | None:
    """Upsample one low-resolution logit map only where it can exceed ``threshold``.

    Bilinear interpolation is a convex combination, so an output pixel can only be above
    ``threshold`` if one of the low-resolution logits it is made of is. This computes
    :func:`upsample_logits` inside the box around those, expanded to the rows and columns
    where the grids of each resize line up, so that the source coordinates are those of the
    full computation. Values above ``threshold`` equal the full computation's (float
    rounding can differ in the last bit when the size ratio is not a power of two); values
    at or below it in the outermost rows and columns of the box may differ, but stay at or
    below it.

    Parameters
    ----------
    low_res : Tensor
        (256, 256) logits of one mask.
    embedding : ImageEmbedding
        Gives the input (resized) and original sizes (anything with ``input_size`` and
        ``original_size``, e.g. a ``SamPredictor``, will do).
    threshold : float
        Outside the returned box, every pixel is at or below it.
    image_size : int
        The encoder's input size (1024).

    Returns
    -------
    (Tensor, (y0, y1, x0, x1)) or None
        float32 logits of rows y0..y1-1 and columns x0..x1-1 of the original image, or None
        when no pixel can exceed ``threshold``.
    """
    import torch.nn.functional as F

    first = _first_stage(low_res, embedding, threshold, image_size)
    if first is None:
        return None
    x, (ya, yb, xa, xb), (big_ya, big_yb, big_xa, big_xb) = first
    if (big_yb - big_ya, big_xb - big_xa) != (yb - ya, xb - xa):
        x = F.interpolate(
            x, (big_yb - big_ya, big_xb - big_xa), mode="bilinear", align_corners=False
        )
    return x[0, 0], (big_ya, big_yb, big_xa, big_xb)


#: Output rows resized at once by :func:`mask_region` (a few MiB of float32 at 4096 wide).
_ROWS_PER_CHUNK = 256


def mask_region(
    low_res: torch.Tensor,
    embedding: _Geometry,
    threshold: float = 0.0,
    image_size: int = 1024,
) -> RegionMask:
    """``upsample_logits(low_res) > threshold`` as a :class:`RegionMask` (trimmed to the mask).

    See :func:`upsample_region`: the work and the memory are proportional to the object's
    bounding box, not to the image. The final resize runs over bands of rows (again where
    the grids line up) and is thresholded straight into the box, so no full-size array (float
    or boolean) is made. An empty mask is a (0, 0) region.
    """
    import torch.nn.functional as F

    first = _first_stage(low_res, embedding, threshold, image_size)
    if first is None:
        return RegionMask(0, 0, np.zeros((0, 0), bool))
    x, (ya, yb, xa, xb), (big_ya, big_yb, big_xa, big_xb) = first
    h, big_h = embedding.input_size[0], embedding.original_size[0]
    width = big_xb - big_xa
    out = np.zeros((big_yb - big_ya, width), bool)
    if (big_yb - big_ya, width) == (yb - ya, xb - xa):  # the original size is the input size
        np.greater(x[0, 0].cpu().numpy(), threshold, out=out)
        return RegionMask(big_ya, big_xa, out).trimmed()
    g = math.gcd(h, big_h)
    q, p = h // g, big_h // g  # q input rows resize to exactly p output rows
    step = q * max(1, round(_ROWS_PER_CHUNK / p))  # input rows per band, a multiple of q
    for a in range(ya, yb, step):
        b = min(a + step, yb)
        # The band plus one aligned period on each side (where it exists), so that the rows
        # kept are interpolated from the same neighbours as in the full resize.
        ma, mb = max(ya, a - q), min(yb, b + q)
        big_ma = big_ya + p * (ma - ya) // q
        big_mb = big_yb if mb == yb else big_ya + p * (mb - ya) // q
        band = F.interpolate(
            x[:, :, ma - ya : mb - ya],
            (big_mb - big_ma, width),
            mode="bilinear",
            align_corners=False,
        )
        big_a = big_ya + p * (a - ya) // q
        big_b = big_yb if b == yb else big_ya + p * (b - ya) // q
        np.greater(
            band[0, 0, big_a - big_ma : big_b - big_ma].cpu().numpy(),
            threshold,
            out=out[big_a - big_ya : big_b - big_ya],
        )
    return RegionMask(big_ya, big_xa, out).trimmed()


def upsample_mask(
    low_res: torch.Tensor,
    embedding: _Geometry,
    threshold: float = 0.0,
    image_size: int = 1024,
) -> np.ndarray:
    """Boolean (H, W) mask ``upsample_logits(low_res) > threshold``, computed by region.

    The full-size form of :func:`mask_region`.
    """
    return mask_region(low_res, embedding, threshold, image_size).full(embedding.original_size)


@dataclass
class Prediction(CandidateMasks):
    """Masks for one or more objects, with SAM's candidates and scores.

    Attributes
    ----------
    scores : ndarray
        float32 (B, K): predicted IoU of each candidate (K = 3 for multimask output, else 1).
    best : ndarray
        int (B,): index of the candidate with the highest predicted IoU.
    low_res_logits : torch.Tensor
        (B, K, 256, 256) logits, usable as a mask prompt for the next prediction.
    embedding : ImageEmbedding
        The embedding the masks came from (its geometry maps masks back to the image).
    """

    scores: np.ndarray
    best: np.ndarray
    low_res_logits: torch.Tensor
    embedding: ImageEmbedding
    _image_size: int = 1024
    _cache: dict[tuple[int, int], RegionMask] = field(default_factory=dict, repr=False)

    @property
    def n_objects(self) -> int:
        """Number of objects (B)."""
        return int(self.scores.shape[0])

    def region(self, obj: int = 0, candidate: int | None = None) -> RegionMask:
        """The mask of one object inside its bounding box; the best candidate by default.

        Computed once per candidate (and only when asked for); it costs memory in
        proportion to the object, not to the image.
        """
        obj, k = self._index(obj, candidate)
        if (obj, k) not in self._cache:
            self._cache[(obj, k)] = mask_region(
                self.low_res_logits[obj, k], self.embedding, 0.0, self._image_size
            )
        return self._cache[(obj, k)]

    def logits(self, obj: int = 0, candidate: int | None = None) -> np.ndarray:
        """Low-resolution (256, 256) logits of a candidate, to pass back as ``mask_input``."""
        obj, k = self._index(obj, candidate)
        return self.low_res_logits[obj, k].float().cpu().numpy()

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the full image the masks belong to."""
        return tuple(self.embedding.original_size)  # type: ignore[return-value]


class SamEngine:
    """Embeddings and prompt-to-mask prediction for one loaded model.

    Parameters
    ----------
    model : LoadedModel
        From :func:`napari_sam.core.checkpoints.load_model`.
    cache : EmbeddingCache, optional
        In-memory cache (a private one of 32 entries by default).
    store : EmbeddingStore, optional
        On-disk embeddings to read, and to write new embeddings to.

    Examples
    --------
    >>> engine = SamEngine.from_name("tiny")  # doctest: +SKIP
    >>> emb = engine.embed(prepare_image(image))  # doctest: +SKIP
    >>> pred = engine.predict(emb, points=[[120, 80]])  # doctest: +SKIP
    >>> mask = pred.mask()  # doctest: +SKIP
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        cache: EmbeddingCache | None = None,
        store: EmbeddingStore | None = None,
    ) -> None:
        self.model = model
        self.cache = cache if cache is not None else EmbeddingCache()
        self.store = store
        # One forward pass at a time: torch modules are not re-entrant across threads here,
        # and two concurrent encoders would only fight for the same cores.
        self._lock = threading.RLock()
        self._inside = threading.local()  # how deep this thread is in a locked forward pass

    @classmethod
    def from_name(
        cls,
        model: str = "vit_b",
        *,
        checkpoint: str | None = None,
        device: str = "auto",
        progress: ProgressCallback | None = None,
        store: EmbeddingStore | None = None,
        fast: bool | None = None,
        precision: str | None = None,
        skip_pickled_objects: bool = False,
    ) -> SamEngine:
        """Load a model (downloading a registry checkpoint if needed) and wrap it.

        ``fast``, ``precision`` and ``skip_pickled_objects`` are passed to
        :func:`~napari_sam.core.checkpoints.load_model` (defaults: fast modules, ``"auto"``,
        files holding pickled objects refused).
        """
        from .checkpoints import load_model

        loaded = load_model(
            model,
            checkpoint=checkpoint,
            device=device,
            progress=progress,
            fast=fast,
            precision=precision,
            skip_pickled_objects=skip_pickled_objects,
        )
        return cls(loaded, store=store)

    @property
    def model_id(self) -> str:
        """Identity of the model, part of every embedding's cache key."""
        return self.model.model_id

    @contextlib.contextmanager
    def _forward(self) -> Iterator[None]:
        """Hold the engine's lock for one forward pass, remembering it per thread."""
        with self._lock:
            self._inside.depth = getattr(self._inside, "depth", 0) + 1
            try:
                yield
            finally:
                self._inside.depth -= 1

    def in_forward(self) -> bool:
        """Whether the calling thread is inside a forward pass (holding the engine's lock).

        Progress callbacks run there; a scheduler must not pause such a thread in favour of
        another that needs this engine (it would wait for the lock forever).
        """
        return getattr(self._inside, "depth", 0) > 0

    def cached_embedding(self, rgb: np.ndarray) -> ImageEmbedding | None:
        """The embedding of ``rgb`` if it is in memory or in the store, without computing."""
        key = image_key(rgb)
        emb = self.cache.get(self.model_id, key)
        if emb is None and self.store is not None:
            emb = self.store.load(self.model_id, key, device=self.model.device)
            if emb is not None:
                self.cache.put(emb)
        return emb

    def embed(
        self,
        rgb: np.ndarray,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
        save: bool = True,
    ) -> ImageEmbedding:
        """Embedding of a prepared uint8 (H, W, 3) image, computed at most once.

        Parameters
        ----------
        rgb : ndarray
            From :func:`napari_sam.core.normalize.prepare_image`.
        progress, cancel : callable, optional
            See :func:`napari_sam.core.embedding.compute_embedding`.
        save : bool
            Write a newly computed embedding to the engine's store (tiles of a large image
            go to their own store instead: :mod:`napari_sam.core.tile_store`).
        """
        emb = self.cached_embedding(rgb)
        if emb is not None:
            return emb
        with self._forward():
            # Another thread may have computed it while this one waited for the lock.
            emb = self.cache.get(self.model_id, image_key(rgb))
            if emb is not None:
                return emb
            emb = compute_embedding(self.model, rgb, progress=progress, cancel=cancel)
        self.cache.put(emb)
        if save and self.store is not None:
            self.store.save(emb)
        return emb

    def predict(
        self,
        embedding: ImageEmbedding,
        prompts: Prompts | None = None,
        *,
        points: np.ndarray | list | None = None,
        point_labels: np.ndarray | list | None = None,
        boxes: np.ndarray | list | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool | None = None,
    ) -> Prediction:
        """Masks for the prompted objects.

        Parameters
        ----------
        embedding : ImageEmbedding
            From :meth:`embed`.
        prompts : Prompts, optional
            Validated prompts; or give ``points``/``point_labels``/``boxes`` directly, in
            (row, col) pixel coordinates.
        mask_input : ndarray, optional
            (256, 256) or (B, 256, 256) low-resolution logits of a previous prediction
            (:meth:`Prediction.logits`), to refine it.
        multimask : bool, optional
            Ask for three candidates per object. Default: only for a single click, where
            SAM's answer is ambiguous (part / object / whole); the best one by predicted IoU
            is chosen and the others stay available.

        Returns
        -------
        Prediction
            One object per box (points shared by all boxes), or one object for points only.
        """
        import torch

        from .resize import resize_boxes, resize_coords

        if prompts is None:
            prompts = make_prompts(
                points, point_labels, boxes, image_shape=embedding.original_size
            )
        if multimask is None:
            multimask = prompts.is_single_click
        sam = self.model.sam
        device = sam.device
        # SAM's own transform: x and y are scaled separately, by the *rounded* resized width
        # and height over the original ones, exactly as the image was resized. (One common
        # factor would shift prompts by up to half a resized pixel along the shorter side.)
        side = sam.image_encoder.img_size
        n_obj = prompts.n_objects

        point_arg = None
        if len(prompts.points):
            xy = resize_coords(prompts.sam_points(), embedding.original_size, side)
            coords = torch.as_tensor(xy, dtype=torch.float32, device=device)
            labels = torch.as_tensor(prompts.point_labels, device=device, dtype=torch.int)
            point_arg = (
                coords[None].expand(n_obj, -1, -1),
                labels[None].expand(n_obj, -1),
            )
        box_arg = None
        if len(prompts.boxes):
            xyxy = resize_boxes(prompts.sam_boxes(), embedding.original_size, side)
            box_arg = torch.as_tensor(xyxy, dtype=torch.float32, device=device)
        mask_arg = None
        if mask_input is not None:
            m = np.asarray(mask_input, np.float32)
            if m.shape[-2:] != (256, 256) or m.ndim not in (2, 3):
                raise PromptError(f"mask_input must be (256, 256) logits, got shape {m.shape}")
            m = m.reshape(-1, 256, 256)
            if len(m) not in (1, n_obj):
                raise PromptError(
                    f"mask_input holds {len(m)} masks for {n_obj} objects; give one per object "
                    "or a single (256, 256) mask for all"
                )
            m = np.broadcast_to(m, (n_obj, 256, 256))
            mask_arg = torch.as_tensor(np.array(m), device=device)[:, None]

        with self._forward():
            low_res, iou = decode(
                sam,
                embedding.features,
                points=point_arg,
                boxes=box_arg,
                masks=mask_arg,
                multimask=multimask,
            )
        scores = iou.float().cpu().numpy()
        return Prediction(
            scores=scores,
            best=scores.argmax(axis=1),
            low_res_logits=low_res,
            embedding=embedding,
            _image_size=sam.image_encoder.img_size,
        )

    def segment(
        self,
        rgb: np.ndarray,
        prompts: Prompts | None = None,
        **kwargs: object,
    ) -> Prediction:
        """Convenience: :meth:`embed` then :meth:`predict`."""
        return self.predict(self.embed(rgb), prompts, **kwargs)  # type: ignore[arg-type]
