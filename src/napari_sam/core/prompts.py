"""Prompts in napari's convention, validated, and their conversion to SAM's.

napari (and NumPy) address pixels as (row, col) with pixel centres at integer coordinates.
SAM takes (x, y) with pixel *edges* at integers (its point grids put centres at +0.5). All
public functions here take (row, col) / (y0, x0, y1, x1) in napari's convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import PromptError

POSITIVE = 1
NEGATIVE = 0


@dataclass(frozen=True)
class Prompts:
    """Points and boxes for one image plane, in (row, col) pixel coordinates.

    Attributes
    ----------
    points : ndarray
        float (N, 2) of (row, col).
    point_labels : ndarray
        int (N,) of 1 (positive, "this is the object") or 0 (negative, "not this").
    boxes : ndarray
        float (B, 4) of (row0, col0, row1, col1); each box asks for one object.
    """

    points: np.ndarray
    point_labels: np.ndarray
    boxes: np.ndarray

    @property
    def n_objects(self) -> int:
        """How many objects these prompts ask for (one per box, else one)."""
        return max(1, len(self.boxes))

    @property
    def is_single_click(self) -> bool:
        """One point and no box: the ambiguous case where SAM offers three candidates."""
        return len(self.points) == 1 and len(self.boxes) == 0

    def sam_points(self) -> np.ndarray:
        """Points as SAM's (x, y), float32 (N, 2)."""
        return (self.points[:, ::-1] + 0.5).astype(np.float32)

    def sam_boxes(self) -> np.ndarray:
        """Boxes as SAM's (x0, y0, x1, y1), float32 (B, 4), covering the corner pixels."""
        b = self.boxes
        return (
            np.stack([b[:, 1], b[:, 0], b[:, 3] + 1.0, b[:, 2] + 1.0], axis=1).astype(np.float32)
            if len(b)
            else np.zeros((0, 4), np.float32)
        )


def make_prompts(
    points: np.ndarray | list | None = None,
    point_labels: np.ndarray | list | None = None,
    boxes: np.ndarray | list | None = None,
    *,
    image_shape: tuple[int, int] | None = None,
) -> Prompts:
    """Validate and normalise prompts.

    Parameters
    ----------
    points : array-like, optional
        (N, 2) (row, col) coordinates.
    point_labels : array-like, optional
        (N,) 1 for positive, 0 for negative; all positive when omitted.
    boxes : array-like, optional
        (B, 4) (row0, col0, row1, col1); corners in any order, inclusive of the corner pixels.
    image_shape : tuple of int, optional
        (H, W): when given, points must lie inside the image and boxes must overlap it
        (they are clipped to it).

    Returns
    -------
    Prompts

    Raises
    ------
    PromptError
        With a message saying what is wrong with which prompt.
    """
    pts = np.zeros((0, 2), np.float64) if points is None else np.asarray(points, np.float64)
    if pts.size == 0:
        pts = np.zeros((0, 2), np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise PromptError(f"points must be (N, 2) row/col pairs, got shape {pts.shape}")
    if point_labels is None:
        labels = np.ones(len(pts), np.int64)
    else:
        labels = np.asarray(point_labels).reshape(-1)
    if len(labels) != len(pts):
        raise PromptError(f"{len(pts)} points but {len(labels)} point labels")
    # Checked before the cast to int, which would silently turn e.g. 0.5 into 0.
    if not np.isin(labels, (POSITIVE, NEGATIVE)).all():
        raise PromptError("point labels must be 1 (positive) or 0 (negative)")
    labels = labels.astype(np.int64)
    bx = np.zeros((0, 4), np.float64) if boxes is None else np.asarray(boxes, np.float64)
    if bx.size == 0:
        bx = np.zeros((0, 4), np.float64)
    if bx.ndim == 1 and bx.shape[0] == 4:
        bx = bx[None]
    if bx.ndim != 2 or bx.shape[1] != 4:
        raise PromptError(f"boxes must be (B, 4) row0/col0/row1/col1, got shape {bx.shape}")
    if not (np.isfinite(pts).all() and np.isfinite(bx).all()):
        raise PromptError("prompt coordinates must be finite numbers")
    bx = np.concatenate(
        [np.minimum(bx[:, :2], bx[:, 2:]), np.maximum(bx[:, :2], bx[:, 2:])], axis=1
    )
    if len(bx) == 0 and not (labels == POSITIVE).any():
        raise PromptError(
            "add at least one positive point or a box: negatives alone select nothing"
        )
    if image_shape is not None:
        h, w = image_shape
        outside = (
            (pts[:, 0] < -0.5) | (pts[:, 0] > h - 0.5) | (pts[:, 1] < -0.5) | (pts[:, 1] > w - 0.5)
        )
        if outside.any():
            r, c = pts[np.argmax(outside)]
            raise PromptError(
                f"point ({r:.1f}, {c:.1f}) lies outside the {h}x{w} image; "
                "prompts must be on the image"
            )
        if len(bx):
            miss = (bx[:, 2] < 0) | (bx[:, 3] < 0) | (bx[:, 0] > h - 1) | (bx[:, 1] > w - 1)
            if miss.any():
                raise PromptError(f"box {bx[np.argmax(miss)].round(1).tolist()} misses the image")
            bx = np.clip(bx, 0, [h - 1, w - 1, h - 1, w - 1])
    return Prompts(points=pts, point_labels=labels, boxes=bx)
