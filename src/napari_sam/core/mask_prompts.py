"""Masks and drawn shapes -> SAM's low-resolution mask prompt (256 x 256 logits).

SAM's prompt encoder takes a mask as (256, 256) logits over its padded 1024 x 1024 input
frame: the image, resized so that its longer side is 1024 (see :mod:`.resize`), sits in the
top-left corner, and each low-resolution pixel covers 4 x 4 input pixels. The functions here
put a mask or a shape into that frame the way SAM's own geometry does, so that the prompt
lands exactly on the object, in any image shape:

- :func:`mask_to_logits`: a boolean (H, W) mask (e.g. an existing label to refine);
- :func:`shape_prompt`: an ellipse, polygon, path or rectangle drawn on the image plane,
  given by its vertices in (row, col) pixel coordinates, with the box around it;
- :class:`StartMask`: where a chain of clicks starts (a drawn shape or an existing label),
  kept as the shape or the mask itself so that a session replays it exactly.

Each low-resolution pixel gets the fraction of it the mask or shape covers, turned into a
logit clipped to :data:`MASK_LOGIT`: inside +8, outside -8, and the border in between, so
that the prompt is as sharp as the grid allows. Whether a model gets such prompts by default
is :func:`napari_sam.core.refinement.uses_mask_prompts`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import PromptError
from .resize import preprocess_shape

__all__ = [
    "LOW_RES",
    "MASK_LOGIT",
    "SHAPE_KINDS",
    "ShapePrompt",
    "StartMask",
    "coverage_to_logits",
    "mask_to_logits",
    "shape_prompt",
    "shape_vertices",
]

#: Side of SAM's low-resolution mask (its encoder input side / 4).
LOW_RES = 256
#: |logit| of a low-resolution pixel fully inside or outside (sigmoid: 0.99966).
MASK_LOGIT = 8.0
#: Shape types of a napari Shapes layer that :func:`shape_prompt` takes.
SHAPE_KINDS = ("ellipse", "polygon", "path", "rectangle")
#: Vertices of the polygon that stands for an ellipse (the error is under 0.1% of the area).
_ELLIPSE_VERTICES = 128


@dataclass(frozen=True)
class ShapePrompt:
    """What a drawn shape asks SAM for: a mask prompt and the box around the shape.

    Attributes
    ----------
    logits : ndarray
        float32 (256, 256) low-resolution logits, to pass as ``mask_input``.
    box : ndarray
        float (4,) ``(row0, col0, row1, col1)``: the shape's extent, clipped to the image
        (the convention of :func:`napari_sam.core.prompts.make_prompts`).
    """

    logits: np.ndarray
    box: np.ndarray


def coverage_to_logits(coverage: np.ndarray) -> np.ndarray:
    """Fractions in [0, 1] -> logits clipped to +-:data:`MASK_LOGIT` (float32)."""
    eps = 1.0 / (1.0 + np.exp(MASK_LOGIT))
    p = np.clip(np.asarray(coverage, np.float64), eps, 1.0 - eps)
    return np.log(p / (1.0 - p)).astype(np.float32)


def _pool(frame: np.ndarray, side: int) -> np.ndarray:
    """A (h, w) input-frame coverage padded to (side, side), then the mean of each 4 x 4."""
    padded = np.zeros((side, side), np.float32)
    padded[: frame.shape[0], : frame.shape[1]] = frame
    f = side // LOW_RES
    return padded.reshape(LOW_RES, f, LOW_RES, f).mean(axis=(1, 3))


def mask_to_logits(mask: np.ndarray, *, image_size: int = 1024) -> np.ndarray:
    """A boolean (H, W) mask of the image -> SAM's (256, 256) low-resolution mask prompt.

    The mask is resized to the encoder's input frame as the image is (bilinear, longer side
    ``image_size``), padded, and averaged over each low-resolution pixel.

    Parameters
    ----------
    mask : ndarray
        (H, W) boolean mask at the image's resolution (e.g. ``labels == label_id``).
    image_size : int
        The encoder's input side (1024 for every SAM).

    Returns
    -------
    ndarray
        float32 (256, 256) logits, for ``SamEngine.predict(..., mask_input=...)``.
    """
    from PIL import Image

    mask = np.asarray(mask)
    if mask.ndim != 2 or 0 in mask.shape:
        raise PromptError(f"a mask prompt must be a 2D (H, W) mask, got shape {mask.shape}")
    h, w = preprocess_shape(mask.shape[0], mask.shape[1], image_size)
    image = Image.fromarray(mask.astype(np.float32), mode="F")
    frame = np.asarray(image.resize((w, h), Image.Resampling.BILINEAR), np.float32)
    return coverage_to_logits(np.clip(_pool(frame, image_size), 0.0, 1.0))


def shape_vertices(kind: str, vertices: np.ndarray) -> np.ndarray:
    """The closed outline of a shape as polygon vertices, (N, 2) (row, col).

    An ellipse is given as napari stores it, by the 4 corners of its (possibly rotated)
    bounding rectangle in order around it; a rectangle by its 4 corners. A path (an open
    line) is closed by joining its last vertex to its first, as a lasso drawn around an
    object would be.
    """
    v = np.asarray(vertices, np.float64)
    if kind not in SHAPE_KINDS:
        raise PromptError(f"unknown shape type {kind!r}; expected one of {', '.join(SHAPE_KINDS)}")
    if v.ndim != 2 or v.shape[1] != 2:
        raise PromptError(f"{kind} vertices must be (N, 2) row/col pairs, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise PromptError(f"{kind} vertices must be finite numbers")
    if kind in ("ellipse", "rectangle") and len(v) != 4:
        raise PromptError(f"an {kind} is given by the 4 corners of its box, got {len(v)}")
    if kind != "ellipse":
        if len(v) < 3:
            raise PromptError(
                f"a {kind} needs at least 3 vertices to enclose an area, got {len(v)}"
            )
        return v
    centre = v.mean(axis=0)
    # Half-axes: from the centre to the middles of two adjacent sides of the box.
    a, b = (v[1] - v[0]) / 2.0, (v[3] - v[0]) / 2.0
    t = np.linspace(0.0, 2.0 * np.pi, _ELLIPSE_VERTICES, endpoint=False)
    return centre + np.cos(t)[:, None] * a + np.sin(t)[:, None] * b


def shape_prompt(
    kind: str,
    vertices: np.ndarray,
    image_shape: tuple[int, int],
    *,
    image_size: int = 1024,
) -> ShapePrompt:
    """A shape drawn on the image plane -> SAM's mask prompt and the shape's box.

    Parameters
    ----------
    kind : {"ellipse", "polygon", "path", "rectangle"}
        napari's shape type (see :func:`shape_vertices` for how each is read).
    vertices : ndarray
        (N, 2) vertices in (row, col) pixel coordinates of the image plane (pixel centres at
        integers, as :func:`napari_sam._layers.plane_prompts` gives them).
    image_shape : tuple of int
        (H, W) of the plane.
    image_size : int
        The encoder's input side (1024 for every SAM).

    Returns
    -------
    ShapePrompt
        Pass ``logits`` as ``mask_input`` and ``box`` as the object's box.

    Raises
    ------
    PromptError
        For an unknown shape type, wrong vertices, or a shape that encloses no pixel of the
        image (a line, or a shape off the image).
    """
    from skimage.draw import polygon2mask

    outline = shape_vertices(kind, vertices)
    height, width = image_shape
    lo, hi = outline.min(axis=0), outline.max(axis=0)
    if hi[0] < -0.5 or hi[1] < -0.5 or lo[0] > height - 0.5 or lo[1] > width - 0.5:
        raise PromptError(f"the {kind} lies outside the {height}x{width} image")
    h, w = preprocess_shape(height, width, image_size)
    # napari pixel (row, col) spans row - 0.5 .. row + 0.5; scaled to the input frame
    # (x and y separately, as SAM resizes), then back to pixel-centre coordinates.
    frame = np.empty_like(outline)
    frame[:, 0] = (outline[:, 0] + 0.5) * (h / height) - 0.5
    frame[:, 1] = (outline[:, 1] + 0.5) * (w / width) - 0.5
    inside = polygon2mask((h, w), frame).astype(np.float32)
    if not inside.any():
        raise PromptError(
            f"the {kind} encloses no pixel of the image; draw around the object "
            "(a line is not an outline)"
        )
    box = np.array(
        [
            np.clip(lo[0], 0, height - 1),
            np.clip(lo[1], 0, width - 1),
            np.clip(hi[0], 0, height - 1),
            np.clip(hi[1], 0, width - 1),
        ]
    )
    return ShapePrompt(logits=coverage_to_logits(_pool(inside, image_size)), box=box)


@dataclass(frozen=True, eq=False)
class StartMask:
    """The mask prompt a chain of predictions starts from: a drawn shape or an existing label.

    Kept as what the user gave (the shape's vertices, the label's mask), not as logits, so
    that a session records it compactly and replays it exactly (:meth:`logits` is
    deterministic). Give either ``shape`` and ``vertices`` or ``mask``.

    Attributes
    ----------
    shape : str or None
        napari's shape type (``"ellipse"``, ``"polygon"``, ``"path"``), see
        :func:`shape_prompt`.
    vertices : ndarray or None
        (N, 2) (row, col) vertices of the shape on the plane.
    mask : ndarray or None
        Boolean (H, W) mask of the plane (an existing label being edited).
    label : int or None
        The label id the mask was taken from (what a commit then replaces).
    """

    shape: str | None = None
    vertices: np.ndarray | None = None
    mask: np.ndarray | None = None
    label: int | None = None

    def __post_init__(self) -> None:
        if (self.shape is None) == (self.mask is None):
            raise PromptError("a start mask is either a drawn shape or a label's mask")
        if self.shape is not None and self.vertices is None:
            raise PromptError(f"the {self.shape} of a start mask needs its vertices")

    def logits(self, image_shape: tuple[int, int]) -> np.ndarray:
        """float32 (256, 256) mask prompt on a plane of ``image_shape`` (H, W)."""
        if self.mask is not None:
            if tuple(self.mask.shape) != tuple(image_shape):
                raise PromptError(
                    f"the start mask is {self.mask.shape[0]}x{self.mask.shape[1]}, "
                    f"the plane {image_shape[0]}x{image_shape[1]}"
                )
            return mask_to_logits(self.mask)
        assert self.shape is not None and self.vertices is not None
        return shape_prompt(self.shape, self.vertices, image_shape).logits

    def describe(self) -> str:
        """E.g. ``"label 3"`` or ``"ellipse"``."""
        return f"label {self.label}" if self.mask is not None else str(self.shape)
