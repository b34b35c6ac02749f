"""Hashes of checkpoint files (SHA-256, xxh128), remembered so that a file is read only once.

A file is identified by its resolved path, size, modification time and change time (all in
ns). Its digests are remembered in memory for the process and in ``cache_dir() /
"file-hashes.json"`` across processes, so a 375 MB checkpoint is hashed once, not at every start
of the command line (about a second each time on a laptop). Rewriting, replacing or touching a
file changes its times, and it is hashed again. The record does not weaken the download checks:
whoever can write it can also replace the cached checkpoints themselves.

SHA-256 is napari-sam's identity of a checkpoint (embedding caches, provenance). xxh128 is the
hash micro-sam publishes for its models (the same function as ``pooch``'s ``"xxh128:"``, from
the ``xxhash`` package).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .locations import atomic_write, cache_dir

__all__ = ["ALGORITHMS", "file_digests", "file_sha256", "new_hasher", "remember"]

log = logging.getLogger(__name__)

#: Hash algorithms napari-sam knows, by their pooch names.
ALGORITHMS = ("sha256", "xxh128")
#: Name of the record of known digests in the cache folder.
RECORD_NAME = "file-hashes.json"
#: Entries kept in the record (the oldest are dropped first).
MAX_RECORD_ENTRIES = 256

_CHUNK = 1 << 20  # 1 MiB
FileKey = tuple[str, int, int, int]
_MEMO: dict[FileKey, dict[str, str]] = {}
_LOCK = threading.Lock()


def new_hasher(algorithm: str) -> Any:
    """A fresh hash object (``update`` / ``hexdigest``) for one of :data:`ALGORITHMS`.

    Raises
    ------
    CheckpointError
        For xxh128 when the ``xxhash`` package is missing.
    """
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "xxh128":
        try:
            import xxhash
        except ImportError:
            raise CheckpointError(
                "checking this model's xxh128 hash needs the xxhash package "
                "(pip install xxhash); it is a dependency of napari-sam-kit, so reinstall it"
            ) from None
        return xxhash.xxh128()
    raise ValueError(f"unknown hash algorithm {algorithm!r}; use one of {ALGORITHMS}")


def file_key(path: str | os.PathLike[str]) -> FileKey:
    """(resolved path, size, mtime_ns, ctime_ns): what identifies one version of a file."""
    p = Path(path).resolve()
    st = p.stat()
    return (str(p), st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _record_path() -> Path:
    return cache_dir() / RECORD_NAME


def _read_record() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_record_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def _from_record(key: FileKey) -> dict[str, str]:
    entry = _read_record().get(key[0])
    if not isinstance(entry, dict) or [entry.get(k) for k in ("size", "mtime_ns", "ctime_ns")] != [
        key[1],
        key[2],
        key[3],
    ]:
        return {}
    return {a: entry[a] for a in ALGORITHMS if isinstance(entry.get(a), str)}


def _write_record(key: FileKey, digests: dict[str, str]) -> None:
    """Add ``digests`` of ``key`` to the record; a cache folder we cannot write is no error."""
    files = _read_record()
    files.pop(key[0], None)  # re-inserted last: the newest entry
    files[key[0]] = {"size": key[1], "mtime_ns": key[2], "ctime_ns": key[3], **digests}
    while len(files) > MAX_RECORD_ENTRIES:
        files.pop(next(iter(files)))
    dest = _record_path()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dest, json.dumps({"version": 1, "files": files}).encode("utf-8"))
    except OSError as e:
        log.debug("cannot record file hashes in %s: %s", dest, e)


def _known(key: FileKey) -> dict[str, str]:
    with _LOCK:
        hit = _MEMO.get(key)
        if hit is None:
            hit = _from_record(key)
            if hit:
                _MEMO[key] = hit
        return dict(hit or {})


def remember(path: str | os.PathLike[str], digests: dict[str, str]) -> None:
    """Record digests computed elsewhere (e.g. while downloading) for the file as it is now."""
    key = file_key(path)
    with _LOCK:
        merged = {**_MEMO.get(key, {}), **digests}
        _MEMO[key] = merged
        _write_record(key, merged)


def file_digests(
    path: str | os.PathLike[str], algorithms: Iterable[str] = ("sha256",)
) -> dict[str, str]:
    """Digests of a file as lowercase hex, each computed at most once per version of the file.

    Missing digests are computed together in one read of the file (1 MiB chunks).

    Parameters
    ----------
    path : str or PathLike
        The file.
    algorithms : iterable of str
        Names from :data:`ALGORITHMS`.

    Returns
    -------
    dict
        Algorithm name -> hex digest.

    Raises
    ------
    OSError
        If the file cannot be read.
    CheckpointError
        If xxh128 is asked for and ``xxhash`` is missing.
    """
    wanted = list(dict.fromkeys(algorithms))
    key = file_key(path)
    known = _known(key)
    missing = [a for a in wanted if a not in known]
    if missing:
        hashers = {a: new_hasher(a) for a in missing}
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        with open(key[0], "rb", buffering=0) as f:
            while n := f.readinto(buf):
                for h in hashers.values():
                    h.update(view[:n])
        new = {a: h.hexdigest() for a, h in hashers.items()}
        with _LOCK:
            merged = {**_MEMO.get(key, {}), **new}
            _MEMO[key] = merged
            _write_record(key, merged)
        known.update(new)
    return {a: known[a] for a in wanted}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Return the SHA-256 of a file as lowercase hex (see :func:`file_digests`).

    Raises
    ------
    OSError
        If the file cannot be read.
    """
    return file_digests(path, ("sha256",))["sha256"]
