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
