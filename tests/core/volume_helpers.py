"""Volumes with known objects and an engine whose answers are the reference objects."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from napari_sam.core.embedding import EmbeddingCache, ImageEmbedding, image_key
from napari_sam.core.prompts import make_prompts
from napari_sam.core.stack import SliceStack


def ball(shape, centre, radii) -> np.ndarray:
    """Boolean ellipsoid of ``shape`` with the given centre and radii (per axis)."""
    grid = np.indices(shape, dtype=np.float32)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1


def image_of(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A float image of a label volume: bright objects, noise (so every slice differs)."""
    rng = np.random.default_rng(seed)
    return (labels > 0) * 0.8 + 0.1 + 0.05 * rng.standard_normal(labels.shape).astype(np.float32)


class _Prediction:
    def __init__(self, mask: np.ndarray, score: float) -> None:
        self._mask, self._score = mask, score

    def mask(self, obj: int = 0) -> np.ndarray:
        return self._mask

    def score(self, obj: int = 0) -> float:
        return self._score

    def logits(self, obj: int = 0) -> np.ndarray:
        return np.zeros((256, 256), np.float32)


class OracleEngine:
    """Answers every prompt with the reference object it points at, on the prompted slice.

    A box gives the reference label with the most pixels inside the box, a positive point
    the label under it (nothing: an empty mask). ``score(slice, label)`` sets the predicted
    IoU (0.9 by default). Embeddings are bookkeeping only (no network), cached like the real
    engine's; ``embedded`` and ``calls`` record what was asked.
    """

    model_id = "oracle"

    def __init__(
        self,
        stack: SliceStack,
        reference: np.ndarray,
        score: Callable[[int, int], float] | None = None,
    ) -> None:
        self.cache = EmbeddingCache(max_items=4)
        self._slices = {image_key(stack.rgb(i)): i for i in range(stack.n_slices)}
        assert len(self._slices) == stack.n_slices, "two slices look the same"
        self._planes = stack.planes(reference)
        self._score = score or (lambda i, label: 0.9)
        self.embedded: list[int] = []
        self.calls: list[dict] = []

    def embed(self, rgb, *, progress=None, cancel=None) -> ImageEmbedding:
        key = image_key(rgb)
        emb = self.cache.get(self.model_id, key)
        if emb is None:
            self.embedded.append(self._slices[key])
            emb = ImageEmbedding(None, rgb.shape[:2], rgb.shape[:2], self.model_id, key, 1.0)
            self.cache.put(emb)
        return emb

    def predict(self, embedding, prompts=None, **kwargs) -> _Prediction:
        i = self._slices[embedding.key]
        self.calls.append({"slice": i, **kwargs})
        if prompts is None:
            kwargs.pop("mask_input", None)
            prompts = make_prompts(image_shape=embedding.original_size, **kwargs)
        plane = self._planes[i]
        label = 0
        if len(prompts.boxes):
            r0, c0, r1, c1 = np.round(prompts.boxes[0]).astype(int)
            inside = plane[r0 : r1 + 1, c0 : c1 + 1]
            counts = np.bincount(inside.ravel())
            counts[0] = 0
            label = int(counts.argmax()) if counts.any() else 0
        else:
            r, c = np.round(prompts.points[prompts.point_labels == 1][0]).astype(int)
            label = int(plane[r, c])
        mask = (plane == label) if label else np.zeros(plane.shape, bool)
        return _Prediction(mask, self._score(i, label) if label else 0.1)
