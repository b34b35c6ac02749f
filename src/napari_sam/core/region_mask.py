"""A boolean mask kept inside its bounding box: memory follows the object, not the image.

A click's three candidates on a 4096 x 4096 plane are 48 MiB as full boolean masks, and a
nucleus a few kilobytes as a :class:`RegionMask`. The engine returns masks this way
(:meth:`napari_sam.core.engine.Prediction.region`), automatic segmentation keeps them this
way, and they are drawn into label images (:func:`napari_sam.core.commits.draw_objects`)
without ever being made full size.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["RegionMask"]


class RegionMask(NamedTuple):
    """A boolean mask stored inside a box of the image: ``mask`` placed at row y0, column x0.

    An empty mask is a (0, 0) array (at 0, 0).
    """

    y0: int
    x0: int
    mask: np.ndarray

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> RegionMask:
        """The region of a full boolean mask, trimmed to its True pixels."""
        return cls(0, 0, np.asarray(mask, bool)).trimmed()

    def trimmed(self) -> RegionMask:
        """The same mask in the smallest box holding all its True pixels."""
        rows = np.flatnonzero(self.mask.any(axis=1))
        if not len(rows):
            return RegionMask(0, 0, np.zeros((0, 0), bool))
        cols = np.flatnonzero(self.mask.any(axis=0))
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        if (r0, c0) == (0, 0) and (r1, c1) == self.mask.shape:
            return self
        return RegionMask(self.y0 + r0, self.x0 + c0, self.mask[r0:r1, c0:c1].copy())

    @property
    def area(self) -> int:
        """Number of True pixels."""
        return int(np.count_nonzero(self.mask))

    def paint(self, image: np.ndarray, value: int) -> None:
        """Set ``image`` to ``value`` where the mask is True."""
        h, w = self.mask.shape
        image[self.y0 : self.y0 + h, self.x0 : self.x0 + w][self.mask] = value

    def full(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask as a boolean array of the whole image."""
        out = np.zeros(shape, bool)
        self.paint(out, True)
        return out


class CandidateMasks:
    """What predictions share: objects, each with K candidate masks kept as RegionMasks.

    For :class:`napari_sam.core.engine.Prediction` and
    :class:`napari_sam.core.tiled_prompts.TiledPrediction`. A subclass has ``scores``
    (float32 (B, K) predicted IoU), ``best`` (int (B,)), ``n_objects``, ``image_shape``
    ((H, W) of the full image) and :meth:`region`.
    """

    @property
    def n_candidates(self) -> int:
        """Candidates per object (K)."""
        return int(self.scores.shape[1])  # type: ignore[attr-defined]

    def _index(self, obj: int, candidate: int | None) -> tuple[int, int]:
        """Validated (object, candidate) indices; the best candidate when none is named."""
        from .errors import PromptError

        n = self.n_objects  # type: ignore[attr-defined]
        obj = int(obj)
        if not 0 <= obj < n:
            raise PromptError(f"object {obj} does not exist (0..{n - 1})")
        k = int(self.best[obj]) if candidate is None else int(candidate)  # type: ignore[attr-defined]
        if not 0 <= k < self.n_candidates:
            raise PromptError(f"candidate {k} does not exist (0..{self.n_candidates - 1})")
        return obj, k

    def region(self, obj: int = 0, candidate: int | None = None) -> RegionMask:
        """The mask of one object inside its bounding box (the best candidate by default)."""
        raise NotImplementedError

    def mask(self, obj: int = 0, candidate: int | None = None) -> np.ndarray:
        """Boolean (H, W) mask of one object; the best candidate unless one is named.

        A new full-size array on every call (from :meth:`region`).
        """
        return self.region(obj, candidate).full(self.image_shape)  # type: ignore[attr-defined]

    @property
    def masks(self) -> np.ndarray:
        """Boolean (B, H, W): the best candidate of every object."""
        return np.stack([self.mask(b) for b in range(self.n_objects)])  # type: ignore[attr-defined]

    def score(self, obj: int = 0, candidate: int | None = None) -> float:
        """Predicted IoU of a candidate (the best one by default)."""
        obj, k = self._index(obj, candidate)
        return float(self.scores[obj, k])  # type: ignore[attr-defined]
