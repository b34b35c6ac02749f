"""What the command-line modules share: exit codes, the input read for a command, small
formatting helpers. Below both :mod:`napari_sam.cli` and :mod:`napari_sam._cli_volume`."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when used, so that ``--version`` and ``--help`` stay fast
    import numpy as np

    from .core.geometry import VolumeGeometry
    from .core.normalize import Normalization

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass
class _Input:
    """An image or volume read for a command, with the normalisation of all its planes.

    ``planes`` holds 2D planes (``(1, H, W[, C])`` for an image, ``(Z, H, W[, C])`` for a
    volume, every ``(t, z)`` plane for 4D); ``norm`` is fixed once for all of them (see
    :func:`napari_sam.core.windows.volume_normalization`), so neighbouring slices look alike
    to SAM and slices embedded by ``embed`` are found again by ``segment``.
    """

    path: Path
    planes: np.ndarray
    norm: Normalization
    rgb: bool | None
    geometry: VolumeGeometry | None
    is_volume: bool

    @property
    def plane_shape(self) -> tuple[int, int]:
        return tuple(self.planes.shape[1:3])  # type: ignore[return-value]

    def rgb_plane(self, index: int) -> np.ndarray:
        """The uint8 RGB SAM input of plane ``index``."""
        return self.norm.apply(self.planes[index], rgb=self.rgb)

    def describe(self) -> str:
        g = self.geometry
        return g.describe() if g is not None else " x ".join(map(str, self.planes.shape[1:3]))


def _coords(values: list[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _embeddings_dir(args) -> Path:
    """The folder of stored embeddings: ``--embeddings`` or the user cache's."""
    from .core.locations import embeddings_dir

    return args.embeddings or embeddings_dir()


def _auto_params(args):
    from .core.automatic import AutoParams

    return AutoParams(
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=args.box_nms_thresh,
        crop_n_layers=args.crop_n_layers,
        min_size=args.min_size,
    )


def _write_table(path: Path, table: dict) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(table)
        w.writerows(zip(*table.values(), strict=True))
