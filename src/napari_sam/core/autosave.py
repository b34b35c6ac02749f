"""Autosave and recovery: the session and its labels in the user cache after every commit.

:func:`autosave` writes one file per session, ``<cache>/autosave/<image sha256>/<session
id>.npz``, replacing it atomically (a temporary file, flushed to disk, then renamed): after
a crash the file holds either the previous or the new state, never a mix. It holds the
session record (JSON) and the label arrays of the layers the session wrote to. The folder is
kept under a size limit by deleting the oldest files (never the one just written).

:func:`find_autosave` finds the newest autosave of an image by its content hash, so that the
widget can offer to restore it when the same image is opened again; :func:`load_autosave`
reads it back and :func:`discard_autosave` deletes it.

The cache folder is ``$NAPARI_SAM_CACHE`` or the platform's user cache (see
:func:`napari_sam.core.checkpoints.cache_dir`); ``$NAPARI_SAM_AUTOSAVE_MB`` sets the limit.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import NapariSamError, SessionError
from .session_record import SessionRecord, atomic_write

__all__ = [
    "DEFAULT_LIMIT_MB",
    "ENV_LIMIT",
    "AutosaveInfo",
    "autosave",
    "autosave_dir",
    "autosave_limit",
    "discard_autosave",
    "find_autosave",
    "list_autosaves",
    "load_autosave",
    "prune_autosaves",
]

#: Environment variable: the autosave folder's size limit in MB (10**6 bytes).
ENV_LIMIT = "NAPARI_SAM_AUTOSAVE_MB"
#: Default size limit of the autosave folder, in MB.
DEFAULT_LIMIT_MB = 500

_FORMAT = "napari-sam-autosave"
_VERSION = 1
_SUFFIX = ".npz"


def autosave_dir() -> Path:
    """The folder autosaves live in: ``cache_dir() / "autosave"`` (it may not exist yet)."""
    from .locations import cache_dir

    return cache_dir() / "autosave"


def autosave_limit() -> int:
    """The size limit of the autosave folder in bytes (``$NAPARI_SAM_AUTOSAVE_MB``).

    Raises
    ------
    NapariSamError
        When the variable is set to something other than a number >= 0.
    """
    text = os.environ.get(ENV_LIMIT, "").strip()
    if not text:
        return DEFAULT_LIMIT_MB * 10**6
    try:
        mb = float(text)
    except ValueError:
        mb = -1.0
    if not mb >= 0:
        raise NapariSamError(f"${ENV_LIMIT}={text!r}: expected a size in MB (a number >= 0)")
    return int(mb * 10**6)


@dataclass(frozen=True)
class AutosaveInfo:
    """What an autosave file holds, read without loading its labels.

    Attributes
    ----------
    path : Path
    image_sha256 : str
        Content hash of the image it belongs to.
    session_id : str
    saved : str
        When it was written (ISO 8601, UTC).
    n_entries : int
        Commits and automatic runs recorded.
    targets : tuple of str
        Names of the labels layers it holds.
    size : int
        File size in bytes.
    """

    path: Path
    image_sha256: str
    session_id: str
    saved: str
    n_entries: int
    targets: tuple[str, ...]
    size: int


def _as_arrays(record: SessionRecord, labels: Any) -> dict[str, np.ndarray]:
    if not isinstance(labels, Mapping):
        targets = record.targets()
        labels = {targets[0] if len(targets) == 1 else "labels": labels}
    want = record.image.labels_shape
    out = {}
    for name, arr in labels.items():
        a = np.asarray(arr)
        if a.shape != want:
            raise NapariSamError(
                f"labels {name!r} have shape {a.shape}, not the image's {want}: not autosaved"
            )
        out[str(name)] = a
    return out


def _write_npz(f: IO[bytes], members: Mapping[str, np.ndarray]) -> None:
    # zlib level 1: label images are mostly runs of zeros, which level 1 packs nearly as
    # well as level 6 at several times the speed; autosave runs after every commit.
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for name, arr in members.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.ascontiguousarray(arr), allow_pickle=False)


def _json_array(obj: Any) -> np.ndarray:
    """JSON text (a str is taken as JSON already) as a uint8 array, an npz member."""
    text = obj if isinstance(obj, str) else json.dumps(obj)
    return np.frombuffer(text.encode(), np.uint8)


def autosave(
    record: SessionRecord,
    labels: np.ndarray | Mapping[str, np.ndarray],
    *,
    folder: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> Path:
    """Save the session and its labels atomically, then prune the folder to its limit.

    Parameters
    ----------
    record : SessionRecord
    labels : ndarray or mapping of str to ndarray
        The labels of every layer the session wrote to, by layer name (a single array is
        stored under the session's only target).
    folder : path, optional
        Default :func:`autosave_dir`.
    limit : int, optional
        Size limit of the folder in bytes; default :func:`autosave_limit`.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    NapariSamError
        Labels of another shape than the image's.
    OSError
        When the file cannot be written (the previous autosave is then unchanged).
    """
    arrays = _as_arrays(record, labels)
    root = Path(folder) if folder is not None else autosave_dir()
    path = root / record.image.sha256 / f"{record.session_id}{_SUFFIX}"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": _FORMAT,
        "version": _VERSION,
        "saved": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "session_id": record.session_id,
        "image_sha256": record.image.sha256,
        "n_entries": len(record.entries),
        "targets": list(arrays),
    }
    members = {"meta": _json_array(meta), "session": _json_array(record.to_json())}
    members.update({f"labels_{i}": a for i, a in enumerate(arrays.values())})
    atomic_write(path, writer=lambda f: _write_npz(f, members))
    prune_autosaves(autosave_limit() if limit is None else limit, keep=[path], folder=root)
    return path


def _read_json(z: Any, name: str, path: Path) -> Any:
    try:
        return json.loads(bytes(z[name]).decode())
    except (KeyError, ValueError, UnicodeDecodeError):
        raise SessionError(f"autosave {path} is damaged (no readable {name!r})") from None


def _open(path: Path) -> Any:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise SessionError(f"autosave {path} not found") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise SessionError(f"autosave {path} is damaged ({e})") from None


def _info(path: Path) -> AutosaveInfo:
    with _open(path) as z:
        meta = _read_json(z, "meta", path)
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise SessionError(f"{path} is not a napari-sam autosave")
    if meta.get("version") != _VERSION:
        raise SessionError(f"autosave {path} has format version {meta.get('version')!r}")
    try:
        return AutosaveInfo(
            path=path,
            image_sha256=str(meta["image_sha256"]),
            session_id=str(meta["session_id"]),
            saved=str(meta["saved"]),
            n_entries=int(meta["n_entries"]),
            targets=tuple(str(t) for t in meta["targets"]),
            size=path.stat().st_size,
        )
    except (KeyError, TypeError, ValueError):
        raise SessionError(f"autosave {path} is damaged (incomplete description)") from None


def _files(root: Path) -> list[Path]:
    """Autosave files under ``root``, newest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.glob(f"*/*{_SUFFIX}"):
        try:
            found.append((p.stat().st_mtime_ns, p))
        except OSError:  # removed meanwhile
            continue
    return [p for _, p in sorted(found, reverse=True)]


def list_autosaves(
    image_sha256: str | None = None, *, folder: str | os.PathLike[str] | None = None
) -> list[AutosaveInfo]:
    """Readable autosaves (of one image, or all), newest first; damaged files are skipped."""
    root = Path(folder) if folder is not None else autosave_dir()
    out = []
    for p in _files(root):
        if image_sha256 is not None and p.parent.name != image_sha256:
            continue
        try:
            out.append(_info(p))
        except SessionError:
            continue
    return out


def find_autosave(
    image_sha256: str,
    *,
    exclude_session: str | None = None,
    folder: str | os.PathLike[str] | None = None,
) -> AutosaveInfo | None:
    """The newest readable autosave of the image, or None.

    ``exclude_session`` skips the autosave of a session still in progress (the widget's own).
    """
    for info in list_autosaves(image_sha256, folder=folder):
        if info.session_id != exclude_session:
            return info
    return None


def load_autosave(path: str | os.PathLike[str]) -> tuple[SessionRecord, dict[str, np.ndarray]]:
    """Read an autosave: the session record and the labels by layer name.

    Raises
    ------
    SessionError
        When the file is missing, damaged or of another format.
    """
    path = Path(path)
    info = _info(path)
    with _open(path) as z:
        record = SessionRecord.from_json(bytes(z["session"]), where=f"autosave {path}")
        try:
            labels = {t: np.array(z[f"labels_{i}"]) for i, t in enumerate(info.targets)}
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
            raise SessionError(f"autosave {path} is damaged ({e})") from None
    for name, arr in labels.items():
        if arr.shape != record.image.labels_shape:
            raise SessionError(f"autosave {path} is damaged (labels {name!r} of wrong shape)")
    return record, labels


def discard_autosave(path: str | os.PathLike[str]) -> None:
    """Delete an autosave (e.g. once the user declined to restore it or saved the labels)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    _remove_if_empty(path.parent)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty, or gone
        pass


def prune_autosaves(
    limit: int,
    *,
    keep: Iterable[str | os.PathLike[str]] = (),
    folder: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Delete the oldest autosaves until the folder holds at most ``limit`` bytes.

    Files in ``keep`` are never deleted (even when they alone exceed the limit); temporary
    files left by writes killed more than a day ago are removed.

    Returns
    -------
    list of Path
        The files deleted.
    """
    from .locations import remove_stale_temps

    root = Path(folder) if folder is not None else autosave_dir()
    kept = {Path(p).resolve() for p in keep}
    files = _files(root)
    sizes = {}
    for p in files:
        try:
            sizes[p] = p.stat().st_size
        except OSError:
            continue
    total = sum(sizes.values())
    removed = []
    for p in reversed(files):  # oldest first
        if total <= limit:
            break
        if p not in sizes or p.resolve() in kept:
            continue
        try:
            p.unlink()
        except OSError:  # pragma: no cover - raced with another process
            continue
        total -= sizes[p]
        removed.append(p)
        _remove_if_empty(p.parent)
    for sub in {p.parent for p in files}:
        if sub.is_dir():
            remove_stale_temps(sub)
    return removed
