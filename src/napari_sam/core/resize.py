"""SAM's resize of an image and its prompts to the encoder's input (longest side to 1024).

The same results as ``segment_anything.utils.transforms.ResizeLongestSide`` (tests compare
them), without importing torchvision for it (see :mod:`.lazy_segment_anything`): the image is
resized by PIL's bilinear filter (what torchvision's ``resize`` does with a PIL image), and
x and y are scaled separately, by the *rounded* resized width and height over the original
ones.
"""

from __future__ import annotations

import numpy as np

__all__ = ["preprocess_shape", "resize_boxes", "resize_coords", "resize_image"]


def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(height, width) scaled so that the longer side is ``long_side``, rounded half up."""
    scale = long_side * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_image(rgb: np.ndarray, long_side: int) -> np.ndarray:
    """A uint8 (H, W, 3) image resized (bilinear, antialiased) to its encoder input size."""
    from PIL import Image

    h, w = preprocess_shape(rgb.shape[0], rgb.shape[1], long_side)
    image = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    return np.array(image.resize((w, h), Image.Resampling.BILINEAR))


def resize_coords(
    coords: np.ndarray, original_size: tuple[int, int], long_side: int
) -> np.ndarray:
    """(..., 2) x, y coordinates in the original image -> in the resized image (float64)."""
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(old_h, old_w, long_side)
    out = np.array(coords, dtype=float)
    out[..., 0] *= new_w / old_w
    out[..., 1] *= new_h / old_h
    return out


def resize_boxes(boxes: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """(B, 4) x0, y0, x1, y1 boxes in the original image -> in the resized image."""
    xy = resize_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size, long_side)
    return xy.reshape(-1, 4)
