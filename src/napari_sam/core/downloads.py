"""Downloading registered checkpoints into the cache, verified, and what the cache holds.

Downloads go through :class:`pooch.HTTPDownloader` into a hidden temporary file next to the final
path, are checked (size, and the registry's SHA-256 or xxh128, hashed while the bytes arrive)
and only then moved into place with :func:`os.replace`, so an interrupted, truncated or tampered
download never leaves a file where a checkpoint is looked for. Files found in the cache are
verified against the registry's hashes before they are used (see :mod:`.hashing` for how a
verified file is remembered).

``pooch`` and ``requests`` are imported lazily so that importing this module is cheap.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError, short_reason
from .hashing import file_digests, new_hasher, remember
from .locations import checkpoints_dir, remove_stale_temps, temp_sibling
from .registry import MODELS, ModelSpec, get_spec

__all__ = ["ENV_BASE_URL", "ModelStatus", "ProgressCallback", "fetch_checkpoint", "list_models"]

log = logging.getLogger(__name__)

#: Environment variable replacing the download base address (mirrors, tests).
ENV_BASE_URL = "NAPARI_SAM_BASE_URL"

#: A download progress callback: ``progress(done_bytes, total_bytes)``; total is 0 if unknown.
ProgressCallback = Callable[[int, int], None]

_CHUNK = 1 << 20  # 1 MiB
_TIMEOUT = (15, 60)  # seconds: connect, read (between two chunks)
_ALG_NAMES = {"sha256": "SHA-256", "xxh128": "xxh128"}


class _DownloadSink:
    """Output file *and* progress bar for :class:`pooch.HTTPDownloader`.

    As the file it writes, hashes and counts every chunk and reports real byte counts to the
    callback; as the progress bar it only records the announced total (pooch's own updates are
    in chunk-size units and reset at the end, so they are ignored).
    """

    def __init__(
        self,
        f: Any,
        progress: ProgressCallback | None,
        expected_size: int | None,
        algorithms: list[str],
    ):
        self._f = f
        self._progress = progress
        self._hashers = {a: new_hasher(a) for a in algorithms}
        self.done = 0
        self.content_length = 0
        self._expected = expected_size or 0

    # progress-bar protocol (pooch sets ``total`` and calls update/reset/close)
    @property
    def total(self) -> int:
        return self.content_length or self._expected

    @total.setter
    def total(self, value: int) -> None:
        self.content_length = int(value or 0)
        if self._progress is not None:
            self._progress(self.done, self.total)

    def update(self, n: int) -> None:
        pass

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass

    # file protocol
    def write(self, data: bytes) -> int:
        self._f.write(data)
        for h in self._hashers.values():
            h.update(data)
        self.done += len(data)
        if self._progress is not None:
            self._progress(self.done, self.total)
        return len(data)

    def flush(self) -> None:
        pass  # pooch flushes after every chunk; we flush and fsync once at the end

    def digests(self) -> dict[str, str]:
        return {a: h.hexdigest() for a, h in self._hashers.items()}


_ERRNO_RE = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")


def _connection_reason(exc: BaseException) -> str:
    """The useful part of a requests connection error, e.g. ``[Errno 111] Connection refused``."""
    m = _ERRNO_RE.search(str(exc))
    if m:
        return m.group(0).strip()
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return short_reason(reason if isinstance(reason, BaseException) else exc, 80)


def _transfer_error(
    e: Exception, url: str, dest: Path, spec: ModelSpec, sink: _DownloadSink
) -> CheckpointError | None:
    """The one-line error for a failed transfer (None: not a transfer error, re-raise it)."""
    import requests

    manual = f"download it yourself from {url} and save it as {dest}"
    # What to do with a file one already has depends on where one is: the CLI or the widget.
    hints = {
        "cli_hint": "or pass --checkpoint PATH to use a file you already have",
        "gui_hint": "or choose 'custom checkpoint file…' in the model menu to use a file you "
        "already have",
        "folder": str(dest.parent),
    }
    got = f"{sink.done} of {sink.total or '?'} bytes"
    exc = requests.exceptions
    if isinstance(e, exc.HTTPError):
        status = e.response.status_code if e.response is not None else "?"
        what = "not found" if status == 404 else "not available"
        text = (
            f"cannot download model {spec.name!r}: {url} was {what} (HTTP {status}); "
            f"check {ENV_BASE_URL} if you set it, or {manual}"
        )
    elif isinstance(e, exc.ChunkedEncodingError | exc.ContentDecodingError):
        text = (
            f"download of {spec.filename} from {url} was cut off after {got} (truncated); "
            f"try again, or {manual}"
        )
    elif isinstance(e, exc.ConnectionError) and sink.done:
        text = (
            f"download of {spec.filename} from {url} was interrupted after {got} "
            f"({_connection_reason(e)}); try again, or {manual}"
        )
    elif isinstance(e, exc.ConnectionError):
        text = (
            f"cannot download model {spec.name!r}: no connection to {url} "
            f"(offline? {_connection_reason(e)}); {manual}"
        )
    elif isinstance(e, exc.Timeout):
        text = (
            f"download of {spec.filename} from {url} timed out after {sink.done} bytes; "
            f"try again, or {manual}"
        )
    elif isinstance(e, exc.RequestException):
        text = f"cannot download model {spec.name!r} from {url} ({short_reason(e, 80)}); {manual}"
    elif isinstance(e, _Truncated):
        text = (
            f"download of {spec.filename} from {url} was truncated: got {sink.done} "
            f"of {e.expected} bytes; try again, or {manual}"
        )
    else:
        return None
    return CheckpointError(text, **hints)


class _Truncated(Exception):
    """Fewer bytes arrived than announced (or than the registry says)."""

    def __init__(self, expected: int) -> None:
        super().__init__(expected)
        self.expected = expected


def _download(url: str, dest: Path, spec: ModelSpec, progress: ProgressCallback | None) -> None:
    """Download ``url`` to ``dest`` atomically, verifying size and the registry's hashes."""
    import pooch

    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest.parent)
    tmp = temp_sibling(dest)
    # SHA-256 always (napari-sam's identity of a checkpoint), plus what the registry checks.
    algorithms = list(dict.fromkeys(["sha256", *spec.hashes]))
    sink: _DownloadSink | None = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            sink = _DownloadSink(f, progress, spec.size, algorithms)
            downloader = pooch.HTTPDownloader(
                progressbar=sink,
                chunk_size=_CHUNK,
                timeout=_TIMEOUT,
                # byte counts must be those of the file, not of a compressed transfer
                headers={"Accept-Encoding": "identity"},
            )
            downloader(url, sink, None)
            f.flush()
            os.fsync(f.fileno())
        for expected_size in (sink.content_length, spec.size):
            if expected_size and sink.done < expected_size:
                raise _Truncated(expected_size)
        got = sink.digests()
        for alg, want in spec.hashes.items():
            if got[alg] != want:
                raise CheckpointError(
                    f"downloaded {spec.filename} from {url} has {_ALG_NAMES[alg]} "
                    f"{got[alg][:12]}... but {want[:12]}... was expected: the file is corrupt "
                    "or not the published one"
                    + (" (check the mirror you downloaded from)" if url != spec.url else "")
                )
        os.replace(tmp, dest)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # pragma: no cover - nothing more we can do
            pass
        error = (
            _transfer_error(e, url, dest, spec, sink)
            if isinstance(e, Exception) and sink is not None
            else None
        )
        if error is not None:
            raise error from None
        raise
    remember(dest, got)


def _cached_is_valid(path: Path, spec: ModelSpec) -> bool:
    if spec.size and path.stat().st_size != spec.size:
        return False
    expected = spec.hashes
    if not expected:
        return True
    return file_digests(path, expected) == expected


def fetch_checkpoint(
    name: str,
    *,
    progress: ProgressCallback | None = None,
    base_url: str | None = None,
) -> Path:
    """Return the local path of a registered model's checkpoint, downloading it if needed.

    Parameters
    ----------
    name : str
        Registry name (see :data:`napari_sam.core.registry.MODELS`), e.g. ``"vit_b"``.
    progress : callable, optional
        Called as ``progress(done_bytes, total_bytes)`` while downloading (``total_bytes`` is 0
        when unknown). It may raise (e.g. :class:`~napari_sam.core.errors.Cancelled`) to abort;
        the partial download is then removed and the exception propagates.
    base_url : str, optional
        Download from ``base_url + "/" + filename`` instead of the official address. Defaults to
        ``$NAPARI_SAM_BASE_URL`` when set.

    Returns
    -------
    Path
        The bundled file for bundled models, else ``checkpoints_dir() / spec.filename``, whose
        hashes (SHA-256 or xxh128, as the registry gives them) have been verified.

    Raises
    ------
    CheckpointError
        Unknown model, missing bundled file, or a failed download (offline, HTTP error,
        truncated transfer, hash mismatch). No file is left at the final path on failure; a
        cached file with the wrong hash is never returned (it is downloaded again).
    """
    spec = get_spec(name)
    if spec.url is None:
        path = spec.bundled_path
        if path is None or not path.is_file():
            raise CheckpointError(
                f"the bundled checkpoint of model {name!r} is missing from the installation "
                f"({path}); reinstall napari-sam-kit"
            )
        return path

    base = base_url or os.environ.get(ENV_BASE_URL) or None
    url = base.rstrip("/") + "/" + spec.filename if base else spec.url
    dest = checkpoints_dir() / spec.filename

    stale = False
    if dest.is_file():
        if _cached_is_valid(dest, spec):
            return dest
        stale = True
        log.warning("cached %s does not match its hash; downloading it again", dest)
    elif dest.exists():
        raise CheckpointError(f"{dest} exists but is not a file; remove it and try again")

    try:
        _download(url, dest, spec, progress)
    except CheckpointError as e:
        if stale:
            raise CheckpointError(
                f"cached checkpoint {dest} is corrupt (hash mismatch) and downloading it "
                f"again failed: {e}"
            ) from None
        raise
    return dest


@dataclass(frozen=True)
class ModelStatus:
    """A registry entry and where its checkpoint is (or will be) on this machine.

    Attributes
    ----------
    spec : ModelSpec
        The registry entry.
    path : Path
        The bundled file, or the file in the checkpoint cache (it may not exist yet).
    cached : bool
        True when no download is needed: the file is bundled, or it is in the cache with the
        expected size (its hash is checked when it is loaded).
    """

    spec: ModelSpec
    path: Path
    cached: bool


def list_models() -> list[ModelStatus]:
    """Every registered model with its local path and whether it is already on this machine.

    Cheap (no hashing, no network): for menus and ``napari-sam models``. Group them with
    :func:`napari_sam.core.registry.models_by_domain` on the ``spec`` attributes.
    """
    folder = checkpoints_dir()
    out = []
    for spec in MODELS.values():
        if spec.url is None:
            path = spec.bundled_path
            assert path is not None
            out.append(ModelStatus(spec, path, path.is_file()))
            continue
        path = folder / spec.filename
        try:
            st = path.stat()
            cached = path.is_file() and (spec.size is None or st.st_size == spec.size)
        except OSError:
            cached = False
        out.append(ModelStatus(spec, path, cached))
    return out
