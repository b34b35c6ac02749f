"""Prompt files: the boxes and points of many images, for ``napari-sam segment`` in batch.

Two forms (docs/batch.md has examples):

CSV
    A header row, then one prompt per row. Columns: ``image`` and ``kind`` (``box`` or
    ``point``) always; ``row0, col0, row1, col1`` for a box; ``row, col`` and optionally
    ``label`` (1 object, default; 0 not the object) for a point; ``z`` (the slice) for the
    prompts of a volume. A row leaves the columns of the other kind empty; other columns are
    refused (a misspelt header would otherwise drop a coordinate).
JSON
    An object mapping each image to ``{"boxes": [...], "points": [...]}``, each box and point a
    list of numbers exactly as ``--box`` and ``--point`` take them on the command line
    (``[ROW0, COL0, ROW1, COL1]`` or ``[Z, ROW0, ...]``; ``[ROW, COL]``, ``[ROW, COL, LABEL]``,
    ``[Z, ROW, COL]`` or ``[Z, ROW, COL, LABEL]``: three numbers are a label on a 2D image and
    a slice on a volume, as on the command line).

``image`` names an input by its file name (a path may be given; only its last part is
compared). The form of each prompt is checked here, with messages naming the file, the line
(CSV; for JSON the key) and the field; whether prompts fit their image is checked when the
image is read, as for ``--box`` and ``--point``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from .errors import PromptError

__all__ = ["CSV_COLUMNS", "ImagePrompts", "image_name", "read_prompt_file"]

#: Columns a CSV prompt file may have (``image`` and ``kind`` are required).
CSV_COLUMNS = ("image", "kind", "z", "row0", "col0", "row1", "col1", "row", "col", "label")
_BOX = ("row0", "col0", "row1", "col1")
_POINT = ("row", "col")


@dataclass
class ImagePrompts:
    """The prompts of one image, in the command line's forms.

    Attributes
    ----------
    image : str
        The image's file name, as the inputs are matched.
    boxes : list of list of float
        ``[ROW0, COL0, ROW1, COL1]`` or ``[Z, ROW0, COL0, ROW1, COL1]`` (what ``--box`` gives).
    points : list of list of float
        As ``--point`` gives them; from a CSV file always with their label, ``[ROW, COL, LABEL]``
        or ``[Z, ROW, COL, LABEL]``.
    volume : bool or None
        From a CSV file: whether the prompts have a ``z`` (the image must then be a volume, else
        a 2D image). None for JSON, whose prompts are read as the command line's are.
    where : str
        Where they were read, for messages (``"prompts.csv lines 2-5"``).
    """

    image: str
    boxes: list[list[float]] = field(default_factory=list)
    points: list[list[float]] = field(default_factory=list)
    volume: bool | None = None
    where: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The prompts as plain data (boxes, points, volume), e.g. for a record of a run."""
        return {"boxes": self.boxes, "points": self.points, "volume": self.volume}


def image_name(path: str | os.PathLike[str]) -> str:
    """The name an image is matched by: the last part of its path (``a/b/c.tif`` -> ``c.tif``)."""
    text = os.fspath(path).replace("\\", "/").rstrip("/")
    return PurePath(text).name


def read_prompt_file(path: str | os.PathLike[str]) -> dict[str, ImagePrompts]:
    """Read and check a prompt file (CSV, or JSON when it ends in ``.json``).

    Parameters
    ----------
    path : str or PathLike
        The file.

    Returns
    -------
    dict
        Image file name -> its :class:`ImagePrompts`, in the order of the file.

    Raises
    ------
    PromptError
        One line naming the file, the line (or JSON key) and the field: an unreadable file, a
        missing or unknown column, a kind other than box or point, a value that is not a
        number, a label other than 1 or 0, a slice that is not a whole number, a box or point
        with too few or too many numbers, an image with no prompts.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptError(f"cannot read prompt file {path}: {exc}") from None
    if path.suffix.lower() == ".json":
        return _read_json(path, text)
    return _read_csv(path, text)


def _number(text: str, where: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PromptError(f"{where}, field {name!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise PromptError(f"{where}, field {name!r}: {text!r} is not a finite number")
    return value


def _label(text: str, where: str) -> float:
    value = _number(text, where, "label")
    if value not in (0, 1):
        raise PromptError(f"{where}, field 'label': {text!r} must be 1 (object) or 0 (not)")
    return value


def _slice(text: str, where: str) -> float:
    value = _number(text, where, "z")
    if not value.is_integer() or value < 0:
        raise PromptError(f"{where}, field 'z': {text!r} is not a slice number (0, 1, 2, ...)")
    return value


def _csv_header(path: Path, header: list[str] | None) -> list[str]:
    if not header:
        raise PromptError(
            f"{path}: empty; the first line names the columns ({', '.join(CSV_COLUMNS)})"
        )
    names = [h.strip().lower() for h in header]
    unknown = [h for h in names if h not in CSV_COLUMNS]
    if unknown:
        raise PromptError(
            f"{path} line 1: unknown column {unknown[0]!r} (columns: {', '.join(CSV_COLUMNS)})"
        )
    for required in ("image", "kind"):
        if required not in names:
            raise PromptError(f"{path} line 1: missing column {required!r}")
    if len(set(names)) != len(names):
        twice = next(h for h in names if names.count(h) > 1)
        raise PromptError(f"{path} line 1: column {twice!r} appears twice")
    return names


def _csv_prompt(row: dict[str, str], where: str) -> tuple[str, list[float]]:
    """One CSV row -> (kind, numbers in the command line's form)."""
    kind = row.get("kind", "").lower()
    if kind not in ("box", "point"):
        raise PromptError(f"{where}, field 'kind': {row.get('kind', '')!r} is not box or point")
    needed, other = (_BOX, (*_POINT, "label")) if kind == "box" else (_POINT, _BOX)
    for name in needed:
        if not row.get(name):
            raise PromptError(
                f"{where}, field {name!r}: empty (a {kind} needs {', '.join(needed)})"
            )
    for name in other:
        if row.get(name):
            raise PromptError(f"{where}, field {name!r}: not used by a {kind}; leave it empty")
    values = [_number(row[name], where, name) for name in needed]
    if kind == "point":
        values.append(_label(row["label"], where) if row.get("label") else 1.0)
    if row.get("z"):
        values.insert(0, _slice(row["z"], where))
    return kind, values


def _read_csv(path: Path, text: str) -> dict[str, ImagePrompts]:
    reader = csv.reader(text.splitlines())
    names = _csv_header(path, next(reader, None))
    out: dict[str, ImagePrompts] = {}
    lines: dict[str, list[int]] = {}
    for values in reader:
        line = reader.line_num
        if not any(v.strip() for v in values):
            continue
        where = f"{path} line {line}"
        if len(values) != len(names):
            raise PromptError(f"{where}: {len(values)} fields, the header has {len(names)}")
        row = {n: v.strip() for n, v in zip(names, values, strict=True)}
        if not row["image"]:
            raise PromptError(f"{where}, field 'image': empty")
        kind, numbers = _csv_prompt(row, where)
        name = image_name(row["image"])
        prompts = out.setdefault(name, ImagePrompts(name, volume=bool(row.get("z"))))
        if prompts.volume != bool(row.get("z")):
            raise PromptError(
                f"{where}, field 'z': {name}'s prompts on line {lines[name][0]} "
                f"{'have' if prompts.volume else 'have no'} z; give z on all or none of them"
            )
        (prompts.boxes if kind == "box" else prompts.points).append(numbers)
        lines.setdefault(name, []).append(line)
    if not out:
        raise PromptError(f"{path}: no prompts (only a header)")
    for name, prompts in out.items():
        first, last = lines[name][0], lines[name][-1]
        prompts.where = f"{path} line {first}" if first == last else f"{path} lines {first}-{last}"
    return out


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise PromptError(f"key {key!r} appears twice")
        seen[key] = value
    return seen


def _json_numbers(value: Any, where: str, counts: tuple[int, ...]) -> list[float]:
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise PromptError(f"{where}: expected a list of numbers, got {json.dumps(value)[:60]}")
    if len(value) not in counts:
        raise PromptError(
            f"{where}: expected {' or '.join(map(str, counts))} numbers, got {len(value)}"
        )
    if not all(math.isfinite(v) for v in value):
        raise PromptError(f"{where}: {value} holds a number that is not finite")
    return [float(v) for v in value]


def _json_image(path: Path, key: str, value: Any) -> ImagePrompts:
    where = f"{path}, image {key!r}"
    if not isinstance(value, dict):
        raise PromptError(f'{where}: expected {{"boxes": [...], "points": [...]}}')
    unknown = [k for k in value if k not in ("boxes", "points")]
    if unknown:
        raise PromptError(f"{where}, field {unknown[0]!r}: unknown (use 'boxes' and 'points')")
    prompts = ImagePrompts(image_name(key), where=where)
    for name, counts in (("boxes", (4, 5)), ("points", (2, 3, 4))):
        items = value.get(name, [])
        if not isinstance(items, list):
            raise PromptError(f"{where}, field {name!r}: expected a list")
        for i, item in enumerate(items):
            numbers = _json_numbers(item, f"{where}, field '{name}[{i}]'", counts)
            if name == "points" and len(numbers) == 4 and numbers[3] not in (0, 1):
                raise PromptError(f"{where}, field 'points[{i}]': label must be 1 or 0")
            getattr(prompts, name).append(numbers)
    if not prompts.boxes and not prompts.points:
        raise PromptError(f"{where}: no boxes and no points")
    return prompts


def _read_json(path: Path, text: str) -> dict[str, ImagePrompts]:
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise PromptError(
            f"{path} line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg})"
        ) from None
    except PromptError as exc:
        raise PromptError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise PromptError(
            f'{path}: expected an object {{"IMAGE": {{"boxes": [...], "points": [...]}}, ...}}'
        )
    out: dict[str, ImagePrompts] = {}
    for key, value in data.items():
        prompts = _json_image(path, key, value)
        if prompts.image in out:
            raise PromptError(f"{path}, image {key!r}: file name {prompts.image!r} given twice")
        out[prompts.image] = prompts
    return out
