"""What the command-line modules share: exit codes, the input read for a command, small
formatting helpers. Below both :mod:`napari_sam.cli` and :mod:`napari_sam._cli_volume`."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when used, so that ``--version`` and ``--help`` stay fast
    import numpy as np

    from .core.geometry import VolumeGeometry
    from .core.normalize import Normalization

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _OnePlane:
    """A lazy 2D image (an OME-Zarr level, a large TIFF's zarr view) as ``planes`` of one:
    ``planes[0]`` is the image itself, unread, with its channels where the file has them
    (``channel_axis``); :attr:`shape` is that of other ``planes``, ``(1, H, W[, C])``.
    Nothing here reads pixels."""

    def __init__(self, plane: Any, channel_axis: int | None) -> None:
        self.plane = plane
        shape = [int(s) for s in plane.shape]
        if channel_axis is not None and len(shape) == 3:
            shape.append(shape.pop(channel_axis))
        self.shape = (1, *shape)
        self.dtype = plane.dtype

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> Any:
        if index not in (0, -1):
            raise IndexError(f"plane {index} of a single 2D image")
        return self.plane


@dataclass
class _Input:
    """An image or volume read for a command, with the normalisation of all its planes.

    ``planes`` holds 2D planes (``(1, H, W[, C])`` for an image, ``(Z, H, W[, C])`` for a
    volume, every ``(t, z)`` plane for 4D); ``norm`` is fixed once for all of them (see
    :func:`napari_sam.core.windows.volume_normalization`), so neighbouring slices look alike
    to SAM and slices embedded by ``embed`` are found again by ``segment``. A 2D image read
    lazily (OME-Zarr, a large compressed TIFF) has ``planes`` a :class:`_OnePlane`, its
    channels where the file has them (``norm.channel_axis``), and its ``geometry``.
    """

    path: Path
    planes: np.ndarray | _OnePlane
    norm: Normalization
    rgb: bool | None
    geometry: VolumeGeometry | None
    is_volume: bool

    @property
    def plane_shape(self) -> tuple[int, int]:
        return tuple(self.planes.shape[1:3])  # type: ignore[return-value]

    @property
    def is_lazy(self) -> bool:
        """A 2D image whose pixels stay in its file (zarr, a large TIFF, memory-mapped or
        not): tiled commands read it tile by tile."""
        from .core.lazy_arrays import is_on_disk

        return not self.is_volume and is_on_disk(self.planes[0])

    def rgb_plane(self, index: int) -> np.ndarray:
        """The uint8 RGB SAM input of plane ``index`` (a lazy image is read whole)."""
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
    """Write a table (column -> values) as CSV, atomically: a run cut short leaves no half file."""
    from .core.locations import atomic_write

    buffer = io.StringIO()
    w = csv.writer(buffer, lineterminator="\r\n")  # csv's own default, as before
    w.writerow(table)
    w.writerows(zip(*table.values(), strict=True))
    atomic_write(Path(path), buffer.getvalue().encode())


def known_error(exc: BaseException) -> str | None:
    """The one-line message for an error the user can act on (bad input, a missing file, too
    little memory); None for anything else, which is a bug to report with its traceback."""
    from .core.errors import NapariSamError

    if isinstance(exc, NapariSamError | OSError):  # e.g. output folder missing or not writable
        return str(exc)
    if isinstance(exc, MemoryError):
        return "not enough memory; use a smaller image, --tile, or a smaller model"
    if isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower():
        return (
            "the GPU ran out of memory; use --device cpu or a smaller model (vit_b instead of "
            "vit_h)"
        )
    return None
