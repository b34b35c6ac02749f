"""Procedural cell-like images with known instance masks.

Used to train and evaluate the tiny test model, by the test suite (known answers) and for
offline sample data. Everything is NumPy/SciPy and deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass
class SyntheticImage:
    """A generated image and its ground truth.

    Attributes
    ----------
    image : ndarray
        float32 (H, W) grey or (H, W, 3) colour image, values roughly in [0, 1].
    labels : ndarray
        int32 (H, W) instance labels, 0 is background; later objects occlude earlier ones.
    """

    image: np.ndarray
    labels: np.ndarray


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    field -= field.mean()
    return field / (field.std() + 1e-6)


def _paint_object(
    rng: np.random.Generator,
    labels: np.ndarray,
    label: int,
    cy: float,
    cx: float,
    radius: float,
    kind: str,
) -> bool:
    """Draw one ellipse or wobbly blob with id ``label``; return False if it fell outside."""
    h, w = labels.shape
    r_major = radius * rng.uniform(1.0, 1.5)
    r_minor = radius * rng.uniform(0.55, 1.0)
    theta = rng.uniform(0, np.pi)
    reach = int(np.ceil(r_major * 1.35)) + 1
    y0, y1 = max(0, int(cy) - reach), min(h, int(cy) + reach + 1)
    x0, x1 = max(0, int(cx) - reach), min(w, int(cx) + reach + 1)
    if y1 - y0 < 2 or x1 - x0 < 2:
        return False
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    rr = np.sqrt((u / r_major) ** 2 + (v / r_minor) ** 2)
    if kind == "blob":
        # A radius that wobbles with the angle: cell-like, not a perfect ellipse.
        angle = np.arctan2(v, u)
        wobble = np.zeros_like(angle)
        for k in (2, 3, 5):
            wobble += rng.uniform(0, 0.08) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
        rr = rr / (1.0 + wobble)
    inside = rr <= 1.0
    if inside.sum() < 6:
        return False
    labels[y0:y1, x0:x1][inside] = label
    return True


def make_cells(
    shape: tuple[int, int] = (256, 256),
    *,
    n_objects: int | None = None,
    radius_range: tuple[float, float] = (4.0, 40.0),
    seed: int | np.random.Generator | None = 0,
    polarity: str | None = None,
    colour: bool | None = None,
    touching: float = 0.3,
) -> SyntheticImage:
    """Generate a fluorescence/brightfield-like image of cells with their instance labels.

    Parameters
    ----------
    shape : tuple of int
        Image height and width.
    n_objects : int, optional
        How many objects to try to place; random (scaled to the area) when None.
    radius_range : tuple of float
        Object radii in pixels (4-60 px covers nuclei to whole cells at typical zooms).
    seed : int or Generator, optional
        Randomness; the same seed gives the same image.
    polarity : {"bright", "dark"}, optional
        Bright objects on dark background or the reverse; random when None.
    colour : bool, optional
        Produce an H&E-like RGB image instead of grey; random (25%) when None.
    touching : float
        Fraction of objects placed so that they touch a previous one.

    Returns
    -------
    SyntheticImage
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    h, w = shape
    if polarity is None:
        polarity = "bright" if rng.random() < 0.6 else "dark"
    if colour is None:
        colour = rng.random() < 0.25
    if n_objects is None:
        mean_r = float(np.sqrt(radius_range[0] * radius_range[1]))
        capacity = h * w / (np.pi * (1.6 * mean_r) ** 2)
        n_objects = int(np.clip(rng.uniform(0.15, 0.6) * capacity, 1, 60))
    labels = np.zeros(shape, np.int32)
    centres: list[tuple[float, float, float]] = []
    next_id = 1
    for _ in range(n_objects * 3):
        if next_id > n_objects:
            break
        radius = float(np.exp(rng.uniform(np.log(radius_range[0]), np.log(radius_range[1]))))
        if centres and rng.random() < touching:
            py, px, pr = centres[rng.integers(len(centres))]
            ang = rng.uniform(0, 2 * np.pi)
            dist = (pr + radius) * rng.uniform(0.8, 1.0)
            cy, cx = py + dist * np.sin(ang), px + dist * np.cos(ang)
        else:
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            # Keep mostly separate objects apart so that GT instances are not swallowed.
            if any(np.hypot(cy - y, cx - x) < 0.9 * (r + radius) for y, x, r in centres):
                continue
        kind = "blob" if rng.random() < 0.6 else "ellipse"
        trial = labels.copy()
        if not _paint_object(rng, trial, next_id, cy, cx, radius, kind):
            continue
        # Reject placements that would hide most of an existing object.
        covered = labels[(trial == next_id) & (labels > 0)]
        if covered.size and np.bincount(covered).max() > 0.4 * np.pi * radius**2 * 0.5:
            continue
        labels = trial
        centres.append((cy, cx, radius))
        next_id += 1
    # Drop ids that occlusion reduced to slivers, then renumber 1..N.
    ids, counts = np.unique(labels, return_counts=True)
    for i, c in zip(ids, counts, strict=True):
        if i and c < 12:
            labels[labels == i] = 0
    labels = _relabel_sequential(labels)

    image = _render(rng, labels, polarity=polarity)
    if colour:
        image = _stain(rng, image, labels, polarity)
    return SyntheticImage(image=image, labels=labels)


def _relabel_sequential(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]


def _render(rng: np.random.Generator, labels: np.ndarray, *, polarity: str) -> np.ndarray:
    h, w = labels.shape
    fg = labels > 0
    img = np.zeros((h, w), np.float32)
    ids = np.unique(labels)[1:]
    # Per-object brightness and texture: nuclei-like granularity, dimmer rims or bright rims.
    texture = _smooth_noise(rng, (h, w), rng.uniform(0.8, 2.5))
    dist = ndi.distance_transform_edt(fg).astype(np.float32)
    for i in ids:
        m = labels == i
        level = rng.uniform(0.45, 1.0)
        style = rng.integers(3)
        if style == 0:  # flat with texture
            img[m] = level * (1 + 0.15 * texture[m])
        elif style == 1:  # brighter centre
            d = dist[m] / (dist[m].max() + 1e-6)
            img[m] = level * (0.6 + 0.4 * d) * (1 + 0.1 * texture[m])
        else:  # visible rim
            d = dist[m]
            img[m] = level * (0.7 + 0.5 * (d < 2.5)) * (1 + 0.1 * texture[m])
    # Touching objects: a faint dark seam where labels change, as in real clusters.
    edges = ndi.morphological_gradient(labels, size=3) > 0
    img[edges & fg] *= rng.uniform(0.5, 0.9)
    contrast = rng.uniform(0.25, 1.0)
    background = rng.uniform(0.0, 0.25) + 0.15 * rng.uniform(0, 1) * _smooth_noise(
        rng, (h, w), max(h, w) / 4
    )
    img = background + contrast * img
    if polarity == "dark":
        img = 1.0 - img
    img = ndi.gaussian_filter(img, rng.uniform(0.0, 1.5))
    img = img + rng.uniform(0.0, 0.08) * rng.standard_normal((h, w)).astype(np.float32)
    return img.astype(np.float32)


def _stain(
    rng: np.random.Generator, grey: np.ndarray, labels: np.ndarray, polarity: str
) -> np.ndarray:
    """Turn a grey rendering into an H&E-like colour image (purple objects, pink background)."""
    v = grey if polarity == "dark" else 1.0 - grey
    v = (v - v.min()) / (np.ptp(v) + 1e-6)
    nucleus = np.array([0.35, 0.2, 0.55], np.float32) + rng.uniform(-0.1, 0.1, 3)
    tissue = np.array([0.95, 0.75, 0.85], np.float32) + rng.uniform(-0.08, 0.05, 3)
    rgb = nucleus[None, None] + (tissue - nucleus)[None, None] * v[..., None]
    return np.clip(rgb, 0, 1).astype(np.float32)


def make_nuclei_volume(
    shape: tuple[int, int, int] = (24, 128, 128), *, n_objects: int = 12, seed: int = 0
) -> SyntheticImage:
    """Generate a 3D volume of ellipsoidal nuclei with instance labels (for 3D demos/tests).

    Parameters
    ----------
    shape : tuple of int
        (Z, Y, X) size.
    n_objects : int
        Number of nuclei.
    seed : int
        Randomness.

    Returns
    -------
    SyntheticImage
        ``image`` is float32 (Z, Y, X); ``labels`` int32 (Z, Y, X).
    """
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape, dtype=np.float32)
    labels = np.zeros(shape, np.int32)
    placed: list[tuple[float, float, float, float]] = []
    for _ in range(n_objects * 20):
        if len(placed) >= n_objects:
            break
        r = rng.uniform(6, 14)
        c = (rng.uniform(r / 2, shape[0] - r / 2), rng.uniform(r, shape[1] - r),
             rng.uniform(r, shape[2] - r))  # fmt: skip
        if any(np.hypot(np.hypot((c[0] - p[0]) * 2, c[1] - p[1]), c[2] - p[2]) < r + p[3]
               for p in placed):  # fmt: skip
            continue
        ell = ((zz - c[0]) / (r / 2)) ** 2 + ((yy - c[1]) / r) ** 2 + ((xx - c[2]) / r) ** 2
        labels[(ell <= 1) & (labels == 0)] = len(placed) + 1
        placed.append((*c, r))
    img = 0.1 + 0.8 * (labels > 0) * rng.uniform(0.6, 1.0, labels.max() + 1)[labels]
    img = ndi.gaussian_filter(img.astype(np.float32), 1.0)
    img += 0.05 * rng.standard_normal(shape).astype(np.float32)
    return SyntheticImage(image=img.astype(np.float32), labels=labels)


def make_moving_nuclei(
    shape: tuple[int, int, int] = (12, 128, 128),
    *,
    n_objects: int = 6,
    speed: float = 2.0,
    seed: int = 0,
) -> SyntheticImage:
    """Generate a (T, Y, X) time-lapse of elliptical nuclei drifting across the frame.

    Each nucleus keeps its label (its track id) in every frame; it moves ``speed`` pixels per
    frame in its own direction (bouncing off the borders), turns slowly and breathes a little,
    so that consecutive frames overlap as in a live-cell movie. Nuclei never overlap.

    Parameters
    ----------
    shape : tuple of int
        (T, Y, X) size.
    n_objects : int
        Number of nuclei (tracks).
    speed : float
        Pixels moved per frame.
    seed : int
        Randomness.

    Returns
    -------
    SyntheticImage
        ``image`` float32 (T, Y, X), values roughly in [0, 1]; ``labels`` int32 (T, Y, X),
        label k is track k in every frame.
    """
    rng = np.random.default_rng(seed)
    n_t, h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    nuclei = []  # (y, x, radius, aspect, angle, direction)
    for _ in range(n_objects * 50):
        if len(nuclei) >= n_objects:
            break
        r = rng.uniform(6, 11)
        y, x = rng.uniform(r + 2, h - r - 2), rng.uniform(r + 2, w - r - 2)
        if all(np.hypot(y - n[0], x - n[1]) > r + n[2] + 4 for n in nuclei):
            nuclei.append([y, x, r, rng.uniform(0.7, 1.0), rng.uniform(0, np.pi),
                           rng.uniform(0, 2 * np.pi)])  # fmt: skip
    labels = np.zeros(shape, np.int32)
    brightness = rng.uniform(0.6, 1.0, len(nuclei) + 1)
    for t in range(n_t):
        for k, (y, x, r, aspect, angle, _) in enumerate(nuclei, start=1):
            r_t = r * (1 + 0.05 * np.sin(t / 2 + k))
            c, s_ = np.cos(angle), np.sin(angle)
            u, v = (yy - y) * c + (xx - x) * s_, -(yy - y) * s_ + (xx - x) * c
            labels[t][((u / r_t) ** 2 + (v / (r_t * aspect)) ** 2 <= 1) & (labels[t] == 0)] = k
        for k, n in enumerate(nuclei):  # move, unless that would touch another nucleus
            n[5] += rng.normal(0, 0.15)
            y, x = n[0] + speed * np.sin(n[5]), n[1] + speed * np.cos(n[5])
            if not (n[2] + 1 < y < h - n[2] - 1 and n[2] + 1 < x < w - n[2] - 1):
                n[5] += np.pi  # bounce off the border
                continue
            if all(np.hypot(y - m[0], x - m[1]) > n[2] + m[2] + 2 for j, m in enumerate(nuclei)
                   if j != k):  # fmt: skip
                n[0], n[1] = y, x
    img = 0.1 + 0.8 * (labels > 0) * brightness[labels]
    img = ndi.gaussian_filter(img.astype(np.float32), (0, 1.0, 1.0))
    img += 0.05 * rng.standard_normal(shape).astype(np.float32)
    return SyntheticImage(image=img.astype(np.float32), labels=labels)


def make_montage(
    grid: tuple[int, int] = (2, 4),
    piece_shape: tuple[int, int] = (256, 256),
    *,
    radius_range: tuple[float, float] = (5.0, 12.0),
    n_objects: int = 12,
    seed: int = 0,
) -> SyntheticImage:
    """A large grey image of small bright objects: :func:`make_cells` pieces side by side.

    The known answer for tiling: every piece is drawn like the small images the tiny model
    was trained on, but the whole is many times larger than SAM's input, so that resizing it
    whole shrinks the objects below what the model resolves.

    Parameters
    ----------
    grid : tuple of int
        Pieces per column and per row.
    piece_shape : tuple of int
        Size of each piece.
    radius_range : tuple of float
        Object radii in pixels.
    n_objects : int
        Objects tried per piece.
    seed : int
        Randomness (piece ``k`` uses ``seed + k``).

    Returns
    -------
    SyntheticImage
        float32 (H, W) image and int32 labels, ids unique over the montage.
    """
    rows, cols = grid
    ph, pw = piece_shape
    image = np.zeros((rows * ph, cols * pw), np.float32)
    labels = np.zeros(image.shape, np.int32)
    for k in range(rows * cols):
        piece = make_cells(
            piece_shape,
            n_objects=n_objects,
            radius_range=radius_range,
            seed=seed + k,
            polarity="bright",
            colour=False,
        )
        r, c = divmod(k, cols)
        window = np.s_[r * ph : (r + 1) * ph, c * pw : (c + 1) * pw]
        lo, hi = np.percentile(piece.image, (1, 99.8))
        image[window] = (piece.image - lo) / max(hi - lo, 1e-6)  # the same contrast everywhere
        offset = labels.max()
        labels[window] = np.where(piece.labels > 0, piece.labels + offset, 0)
    return SyntheticImage(image=image, labels=labels)
