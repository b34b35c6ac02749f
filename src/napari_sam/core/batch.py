"""Many images in one run: inputs, output names, the manifest that makes runs resumable, and
the summary of a run. Plain Python (no torch, no dask); the command line drives it
(:mod:`napari_sam._cli_batch`, docs/batch.md).

Outputs of an image ``NAME.EXT`` in the output folder: ``NAME_labels.tif`` (medical volumes
keep their format: ``NAME_labels.nii.gz``, ``.nrrd``, ``.mha``; a DICOM series gives
``.nii.gz``; an OME-Zarr folder ``NAME.ome.zarr`` gives ``NAME_labels.tif``) and, for
automatic segmentation, ``NAME_objects.csv``. The folder also holds :data:`MANIFEST` (what
each output was made from) and :data:`SUMMARY` (the last run's rows).

An output is **up to date** when its manifest entry is complete and its signature (the input's
path, size and modification time, the model's identity, the options, the prompts and the
napari-sam version) equals the one the run would write; it is then skipped. Before a run writes
an output, its entry is marked incomplete, so an output whose writing was cut short is never
trusted later. An existing output with no entry at all was not made by a batch run (perhaps
labels drawn by hand) and is not overwritten without ``force``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import NapariSamError
from .io import file_suffix
from .lazy_images import is_zarr_folder
from .locations import atomic_write
from .volume_io import DICOM_SUFFIXES, ITK_SUFFIXES, ITK_WRITE_SUFFIXES, READABLE_SUFFIXES

__all__ = [
    "MANIFEST",
    "SUMMARY",
    "SUMMARY_COLUMNS",
    "BatchItem",
    "ImageResult",
    "Manifest",
    "expand_inputs",
    "format_summary",
    "input_identity",
    "model_identity",
    "plan_outputs",
    "write_summary",
]

#: The record of what each output was made from (JSON), in the output folder.
MANIFEST = "napari-sam-manifest.json"
#: One row per image of the last run (CSV), in the output folder.
SUMMARY = "napari-sam-summary.csv"
SUMMARY_COLUMNS = ("image", "labels", "objects", "seconds", "status", "error")
_FORMAT = 1


def _image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (not DICOM: a folder of DICOM is one series),
    and the OME-Zarr images (``*.zarr`` folders) in it."""
    wanted = tuple(s for s in READABLE_SUFFIXES if s not in DICOM_SUFFIXES)
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".")
        and ((p.is_file() and file_suffix(p) in wanted) or (p.is_dir() and is_zarr_folder(p)))
    )


def is_image_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding images (a folder without any is a DICOM series,
    read as one volume; an OME-Zarr folder is one image)."""
    try:
        return path.is_dir() and not is_zarr_folder(path) and bool(_image_files(path))
    except OSError:
        return False


def expand_inputs(paths: Iterable[Path], output: Path) -> tuple[list[Path], list[str]]:
    """The images a batch runs on: files as given, folders expanded, the output folder left out.

    Parameters
    ----------
    paths : iterable of Path
        Files and folders from the command line (a shell glob gives many).
    output : Path
        The output folder: it and what is in it are never inputs (``data/*`` may name it).

    Returns
    -------
    tuple of (list of Path, list of str)
        The inputs (in the order given, folders' images sorted by name, each once) and notes
        on what was left out.
    """
    out = output.resolve()
    inputs: list[Path] = []
    inside: list[str] = []
    seen: set[Path] = set()
    for path in paths:
        resolved = path.resolve()
        if resolved == out or out in resolved.parents:
            inside.append(path.name)
            continue
        found = _image_files(path) if is_image_folder(path) else [path]
        for p in found:
            if p.resolve() not in seen:
                seen.add(p.resolve())
                inputs.append(p)
    notes = []
    if inside:
        names = ", ".join(inside[:3]) + (" ..." if len(inside) > 3 else "")
        notes.append(f"left out {len(inside)} input(s) in the output folder {output}: {names}")
    return inputs, notes


def _stem(path: Path) -> str:
    if path.name.lower().endswith(".ome.zarr"):
        return path.name[: -len(".ome.zarr")]
    suffix = file_suffix(path)
    name = path.name
    return name[: len(name) - len(suffix)] if suffix and name.lower().endswith(suffix) else name


def _labels_suffix(path: Path) -> str:
    """Medical volumes keep their format (with their geometry); everything else is TIFF."""
    suffix = file_suffix(path)
    if suffix in ITK_WRITE_SUFFIXES:
        return suffix
    if suffix in ITK_SUFFIXES:  # header + data files: their one-file forms
        return {".nhdr": ".nrrd", ".mhd": ".mha"}.get(suffix, ".nii.gz")
    if is_zarr_folder(path):
        return ".tif"
    if path.is_dir() or suffix in DICOM_SUFFIXES:
        return ".nii.gz"
    return ".tif"


@dataclass(frozen=True)
class BatchItem:
    """One image of a batch and the files it writes (names inside the output folder)."""

    image: Path
    labels: str
    table: str | None

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.labels,) if self.table is None else (self.labels, self.table)


def plan_outputs(inputs: Sequence[Path], *, table: bool) -> list[BatchItem]:
    """Name every input's outputs: ``NAME_labels.tif`` (see the module), ``NAME_objects.csv``.

    Raises
    ------
    NapariSamError
        When two inputs would write the same file (same name in two folders, or ``a.tif``
        and ``a.png``), naming both.
    """
    items: list[BatchItem] = []
    owner: dict[str, Path] = {}
    for path in inputs:
        stem = _stem(path)
        item = BatchItem(
            path, f"{stem}_labels{_labels_suffix(path)}", f"{stem}_objects.csv" if table else None
        )
        for name in item.outputs:
            key = name.lower()  # case-insensitive file systems would merge them
            if key in owner:
                raise NapariSamError(
                    f"{owner[key]} and {path} would both write {name}; rename one or run them "
                    "into separate output folders"
                )
            owner[key] = path
        items.append(item)
    return items


def input_identity(path: Path) -> dict[str, Any]:
    """What identifies the version of an input: its size and modification time (ns); for a
    folder (a DICOM series, an OME-Zarr image), those of every file in it."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return {
            "files": [
                [str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files
            ]
        }
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def model_identity(model: str, checkpoint: Path | None) -> dict[str, Any]:
    """The identity of the weights a run uses, known without loading them.

    A checkpoint file: its SHA-256 (computed once per version of the file, see
    :mod:`.hashing`). A registry model: its name and published hash (the downloaded file is
    checked against it); a bundled one (``tiny``), the SHA-256 of its file. Random weights:
    the name (``random:vit_b``; the seed is fixed).

    Raises
    ------
    CheckpointError
        For an unknown model name.
    OSError
        If the checkpoint cannot be read.
    """
    if checkpoint is not None:
        from .hashing import file_sha256

        return {"model": model, "checkpoint_sha256": file_sha256(checkpoint)}
    if model.startswith("random:"):
        return {"model": model}
    from .registry import get_spec

    spec = get_spec(model)
    if spec.bundled_path is not None:
        from .hashing import file_sha256

        return {"model": spec.name, "sha256": file_sha256(spec.bundled_path)}
    return {"model": spec.name, **spec.hashes}


class Manifest:
    """What each output in a folder was made from (:data:`MANIFEST`), saved atomically.

    Entries are keyed by output name (an image's labels file) and hold ``signature`` (what the
    output depends on), ``outputs`` (its files), ``complete`` and ``result`` (objects,
    seconds, the loaded model's id).
    """

    def __init__(self, folder: Path, entries: dict[str, dict[str, Any]] | None = None) -> None:
        self.folder = folder
        self.entries: dict[str, dict[str, Any]] = entries or {}
        self._saved_at = 0.0

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST

    @classmethod
    def load(cls, folder: Path, *, ignore_damaged: bool = False) -> Manifest:
        """The folder's manifest (empty when there is none).

        Raises
        ------
        NapariSamError
            When the file exists but cannot be read as a manifest (unless ``ignore_damaged``).
        """
        path = folder / MANIFEST
        if not path.exists():
            return cls(folder)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != _FORMAT or not isinstance(data.get("outputs"), dict):
                raise ValueError(f"not a napari-sam manifest of format {_FORMAT}")
        except (OSError, ValueError, AttributeError) as exc:
            if ignore_damaged:
                return cls(folder)
            raise NapariSamError(
                f"cannot read {path} ({exc}); move it away, or use --force to redo every image"
            ) from None
        return cls(folder, data["outputs"])

    def up_to_date(self, item: BatchItem, signature: dict[str, Any]) -> bool:
        """Whether ``item``'s outputs exist and were made, completely, as ``signature`` says."""
        entry = self.entries.get(item.labels)
        return (
            entry is not None
            and entry.get("complete") is True
            and entry.get("signature") == signature
            and list(entry.get("outputs", [])) == list(item.outputs)
            and all((self.folder / name).is_file() for name in item.outputs)
        )

    def foreign_outputs(self, item: BatchItem) -> list[str]:
        """``item``'s files that exist but that no batch run recorded (not ours to replace)."""
        known = {n for e in self.entries.values() for n in e.get("outputs", [])}
        return [n for n in item.outputs if n not in known and (self.folder / n).exists()]

    def start(self, item: BatchItem, signature: dict[str, Any]) -> None:
        """Record that ``item``'s outputs are about to be (re)written: not complete yet."""
        self.entries[item.labels] = {
            "input": str(item.image),
            "signature": signature,
            "outputs": list(item.outputs),
            "complete": False,
        }

    def finish(self, item: BatchItem, result: dict[str, Any]) -> None:
        """Record that ``item``'s outputs were written, with what the run reported."""
        entry = self.entries[item.labels]
        entry["complete"] = True
        entry["result"] = result
        entry["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def save(self, *, at_most_every: float = 0.0) -> None:
        """Write the manifest atomically; with ``at_most_every`` (s), only if that long has
        passed since the last write (so that thousands of images do not rewrite it each)."""
        now = time.monotonic()
        if at_most_every and now - self._saved_at < at_most_every:
            return
        data = {"format": _FORMAT, "outputs": self.entries}
        atomic_write(self.path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
        self._saved_at = now


@dataclass
class ImageResult:
    """One row of a batch's summary."""

    image: Path
    labels: str
    status: str  # "done", "skipped" (up to date), "failed", "not run" (interrupted)
    objects: int | None = None
    seconds: float | None = None
    error: str = ""

    def row(self) -> list[str]:
        return [
            str(self.image),
            self.labels,
            "" if self.objects is None else str(self.objects),
            "" if self.seconds is None else f"{self.seconds:.2f}",
            self.status,
            self.error,
        ]


def write_summary(path: Path, results: Sequence[ImageResult]) -> None:
    """Write the summary CSV (:data:`SUMMARY_COLUMNS`) atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    writer.writerows(r.row() for r in results)
    atomic_write(path, buffer.getvalue().encode())


def format_summary(results: Sequence[ImageResult], width: int | None = None) -> str:
    """The summary as an aligned text table (errors cut to fit ``width`` columns; default
    the terminal's width)."""
    if width is None:
        import shutil

        width = shutil.get_terminal_size((100, 24)).columns
    rows = [["image", "objects", "seconds", "status", "error"]]
    for r in results:
        full = r.row()
        rows.append([os.path.basename(full[0]) or full[0], *full[2:]])
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for row in rows:
        head = "  ".join(
            c.rjust(w) if i in (1, 2) else c.ljust(w)
            for i, (c, w) in enumerate(zip(row[:4], widths, strict=True))
        )
        room = max(20, width - len(head) - 2)
        error = row[4] if len(row[4]) <= room else row[4][: room - 3] + "..."
        lines.append(f"{head}  {error}".rstrip())
    return "\n".join(lines)
