"""Where napari-sam keeps files: the user cache, its checkpoint folder, atomic-write siblings.

Nothing here imports torch; every function is cheap.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any

__all__ = [
    "ENV_CACHE",
    "TMP_SUFFIX",
    "atomic_write",
    "cache_dir",
    "checkpoints_dir",
    "embeddings_dir",
    "remove_stale_temps",
    "temp_sibling",
]

#: Environment variable overriding the cache folder.
ENV_CACHE = "NAPARI_SAM_CACHE"
#: Suffix of the hidden temporary files written before an atomic ``os.replace``.
TMP_SUFFIX = ".part"


def cache_dir() -> Path:
    """Return napari-sam's cache folder (it may not exist yet).

    Returns
    -------
    Path
        ``$NAPARI_SAM_CACHE`` when set and not empty, else the platform's user cache folder for
        ``napari-sam`` (e.g. ``~/.cache/napari-sam`` on Linux).
    """
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-sam"))


def checkpoints_dir() -> Path:
    """Return the folder downloaded checkpoints are kept in: ``cache_dir() / "checkpoints"``."""
    return cache_dir() / "checkpoints"


def embeddings_dir() -> Path:
    """Return the folder of stored image embeddings: ``cache_dir() / "embeddings"``.

    Shared by ``napari-sam embed`` and the widget, so that embeddings precomputed on the
    command line are found in napari (and the other way round).
    """
    return cache_dir() / "embeddings"


def temp_sibling(dest: Path) -> Path:
    """A hidden, unique sibling of ``dest`` for writing before an atomic ``os.replace``."""
    return dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def atomic_write(path: Path, data: bytes | None = None, writer: Any = None) -> None:
    """Write a file so that it is either complete or absent, never partial.

    The bytes (``data``, or what ``writer(file)`` writes) go to a hidden temporary file in
    the same folder, are flushed to disk, and only then renamed onto ``path``. On any error
    the temporary file is removed and ``path`` is left as it was.
    """
    tmp = temp_sibling(path)
    try:
        with open(tmp, "xb") as f:
            if writer is not None:
                writer(f)
            else:
                f.write(data or b"")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:  # also on KeyboardInterrupt; after a successful replace ``tmp`` is gone
        tmp.unlink(missing_ok=True)


#: Temporary files older than this (seconds) were left by killed processes.
STALE_TMP_SECONDS = 24 * 3600


def remove_stale_temps(folder: Path) -> None:
    """Delete temporary files (:func:`temp_sibling`) left in ``folder`` by processes killed
    more than a day ago."""
    now = time.time()
    try:
        candidates = list(folder.glob(f".*{TMP_SUFFIX}"))
    except OSError:  # pragma: no cover - unreadable folder
        return
    for p in candidates:
        try:
            if now - p.stat().st_mtime > STALE_TMP_SECONDS:
                p.unlink()
        except OSError:  # pragma: no cover - raced with another process
            pass
