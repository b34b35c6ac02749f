"""Finding, downloading, verifying, saving and loading SAM checkpoints.

Downloads go through :class:`pooch.HTTPDownloader` into a hidden temporary file next to the final
path, are checked (size, full SHA-256) and only then moved into place with :func:`os.replace`, so
an interrupted, truncated or tampered download never leaves a file where a checkpoint is looked
for. Files found in the cache are verified against the registry's SHA-256 before they are used.

Checkpoints are always read with ``torch.load(..., weights_only=True)``: a file holding arbitrary
pickled Python objects is refused rather than executed.

``torch``, ``segment_anything``, ``pooch`` and ``requests`` are imported lazily so that importing
this module is cheap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .architecture import OFFICIAL_ARCHITECTURES, SamArchitecture, build_sam, infer_architecture
from .device import resolve_device
from .errors import CheckpointError
from .registry import MODELS, ModelSpec, get_spec

if TYPE_CHECKING:  # pragma: no cover
    from segment_anything.modeling import Sam

__all__ = [
    "ENV_BASE_URL",
    "ENV_CACHE",
    "FORMAT_VERSION",
    "LoadedModel",
    "cache_dir",
    "checkpoints_dir",
    "fetch_checkpoint",
    "file_sha256",
    "load_model",
    "random_model",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

#: Environment variable overriding the cache folder.
ENV_CACHE = "NAPARI_SAM_CACHE"
#: Environment variable replacing the download base address (mirrors, tests).
ENV_BASE_URL = "NAPARI_SAM_BASE_URL"
#: Version of napari-sam's own checkpoint format written by :func:`save_checkpoint`.
FORMAT_VERSION = 1

#: A download progress callback: ``progress(done_bytes, total_bytes)``; total is 0 if unknown.
ProgressCallback = Callable[[int, int], None]

_CHUNK = 1 << 20  # 1 MiB, for hashing and downloading
_TMP_SUFFIX = ".part"
_STALE_TMP_SECONDS = 24 * 3600
_TIMEOUT = (15, 60)  # seconds: connect, read (between two chunks)

_SHA_MEMO: dict[tuple[str, int, int], str] = {}
_SHA_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------
# Locations and hashing
# --------------------------------------------------------------------------------------------


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


def _memo_key(path: str | os.PathLike[str]) -> tuple[str, int, int]:
    p = Path(path).resolve()
    st = p.stat()
    return (str(p), st.st_size, st.st_mtime_ns)


def _remember_sha256(path: Path, digest: str) -> None:
    key = _memo_key(path)
    with _SHA_LOCK:
        _SHA_MEMO[key] = digest


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Return the SHA-256 of a file as lowercase hex, memoised within the process.

    The memo is keyed on (resolved path, size, modification time in ns), so a file that is
    rewritten is hashed again. Files are read in 1 MiB chunks.

    Parameters
    ----------
    path : str or PathLike
        The file.

    Returns
    -------
    str
        64 hex characters.

    Raises
    ------
    OSError
        If the file cannot be read.
    """
    key = _memo_key(path)
    with _SHA_LOCK:
        hit = _SHA_MEMO.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(key[0], "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    digest = h.hexdigest()
    with _SHA_LOCK:
        _SHA_MEMO[key] = digest
    return digest


def _temp_path(dest: Path) -> Path:
    """A hidden, unique sibling of ``dest`` for writing before an atomic ``os.replace``."""
    return dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}")


def _remove_stale_temps(folder: Path) -> None:
    """Delete temporary files left by downloads killed more than a day ago."""
    now = time.time()
    try:
        candidates = list(folder.glob(f".*{_TMP_SUFFIX}"))
    except OSError:  # pragma: no cover - unreadable folder
        return
    for p in candidates:
        try:
            if now - p.stat().st_mtime > _STALE_TMP_SECONDS:
                p.unlink()
        except OSError:  # pragma: no cover - raced with another process
            pass


# --------------------------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------------------------


class _DownloadSink:
    """Output file *and* progress bar for :class:`pooch.HTTPDownloader`.

    As the file it writes, hashes and counts every chunk and reports real byte counts to the
    callback; as the progress bar it only records the announced total (pooch's own updates are
    in chunk-size units and reset at the end, so they are ignored).
    """

    def __init__(self, f: Any, progress: ProgressCallback | None, expected_size: int | None):
        self._f = f
        self._progress = progress
        self._hash = hashlib.sha256()
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
        self._hash.update(data)
        self.done += len(data)
        if self._progress is not None:
            self._progress(self.done, self.total)
        return len(data)

    def flush(self) -> None:
        pass  # pooch flushes after every chunk; we flush and fsync once at the end

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


_ERRNO_RE = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")


def _connection_reason(exc: BaseException) -> str:
    """The useful part of a requests connection error, e.g. ``[Errno 111] Connection refused``."""
    m = _ERRNO_RE.search(str(exc))
    if m:
        return m.group(0).strip()
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return _short(reason if isinstance(reason, BaseException) else exc, 80)


def _download(url: str, dest: Path, spec: ModelSpec, progress: ProgressCallback | None) -> None:
    """Download ``url`` to ``dest`` atomically, verifying size and SHA-256."""
    import pooch
    import requests

    manual = f"download it yourself from {url} and save it as {dest}"
    # What to do with a file one already has depends on where one is: the CLI or the widget.
    hints = {
        "cli_hint": "or pass --checkpoint PATH to use a file you already have",
        "gui_hint": "or choose 'custom checkpoint file…' in the model menu to use a file you "
        "already have",
        "folder": str(dest.parent),
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(dest.parent)
    tmp = _temp_path(dest)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            sink = _DownloadSink(f, progress, spec.size)
            downloader = pooch.HTTPDownloader(
                progressbar=sink,
                chunk_size=_CHUNK,
                timeout=_TIMEOUT,
                # byte counts must be those of the file, not of a compressed transfer
                headers={"Accept-Encoding": "identity"},
            )
            try:
                downloader(url, sink, None)
            except requests.exceptions.HTTPError as e:
                status = e.response.status_code if e.response is not None else "?"
                what = "not found" if status == 404 else "not available"
                raise CheckpointError(
                    f"cannot download model {spec.name!r}: {url} was {what} (HTTP {status}); "
                    f"check {ENV_BASE_URL} if you set it, or {manual}",
                    **hints,
                ) from None
            except (
                requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError,
            ):
                raise CheckpointError(
                    f"download of {spec.filename} from {url} was cut off after "
                    f"{sink.done} of {sink.total or '?'} bytes (truncated); "
                    f"try again, or {manual}",
                    **hints,
                ) from None
            except requests.exceptions.ConnectionError as e:
                if sink.done:
                    raise CheckpointError(
                        f"download of {spec.filename} from {url} was interrupted after "
                        f"{sink.done} of {sink.total or '?'} bytes ({_connection_reason(e)}); "
                        f"try again, or {manual}",
                        **hints,
                    ) from None
                raise CheckpointError(
                    f"cannot download model {spec.name!r}: no connection to {url} "
                    f"(offline? {_connection_reason(e)}); {manual}",
                    **hints,
                ) from None
            except requests.exceptions.Timeout:
                raise CheckpointError(
                    f"download of {spec.filename} from {url} timed out after {sink.done} bytes; "
                    f"try again, or {manual}",
                    **hints,
                ) from None
            except requests.exceptions.RequestException as e:
                raise CheckpointError(
                    f"cannot download model {spec.name!r} from {url} ({_short(e, 80)}); {manual}",
                    **hints,
                ) from None
            f.flush()
            os.fsync(f.fileno())
        for expected_size in (sink.content_length, spec.size):
            if expected_size and sink.done < expected_size:
                raise CheckpointError(
                    f"download of {spec.filename} from {url} was truncated: got {sink.done} "
                    f"of {expected_size} bytes; try again, or {manual}",
                    **hints,
                )
        got = sink.hexdigest()
        want = spec.sha256.lower()
        if want and got != want:
            raise CheckpointError(
                f"downloaded {spec.filename} from {url} has SHA-256 {got[:12]}... but "
                f"{want[:12]}... was expected: the file is corrupt or not the official one"
                + (" (check the mirror you downloaded from)" if url != spec.url else "")
            )
        os.replace(tmp, dest)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # pragma: no cover - nothing more we can do
            pass
        raise
    _remember_sha256(dest, got)


def _cached_is_valid(path: Path, spec: ModelSpec) -> bool:
    if spec.size and path.stat().st_size != spec.size:
        return False
    if not spec.sha256:
        return True
    return file_sha256(path) == spec.sha256.lower()


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
        SHA-256 has been verified.

    Raises
    ------
    CheckpointError
        Unknown model, missing bundled file, or a failed download (offline, HTTP error,
        truncated transfer, SHA-256 mismatch). No file is left at the final path on failure; a
        cached file with the wrong SHA-256 is never returned (it is downloaded again).
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
        log.warning("cached %s does not match its SHA-256; downloading it again", dest)
    elif dest.exists():
        raise CheckpointError(f"{dest} exists but is not a file; remove it and try again")

    try:
        _download(url, dest, spec, progress)
    except CheckpointError as e:
        if stale:
            raise CheckpointError(
                f"cached checkpoint {dest} is corrupt (SHA-256 mismatch) and downloading it "
                f"again failed: {e}"
            ) from None
        raise
    return dest


# --------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------


def _check_plain(value: Any, where: str = "meta") -> None:
    """Raise TypeError unless ``value`` is made of types ``weights_only`` loading accepts."""
    # Exact types: subclasses (e.g. torch.__version__, a str subclass) are pickled as their
    # class and make the file unloadable with weights_only=True.
    if value is None or type(value) in (bool, int, float, str):
        return
    if type(value) in (list, tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if type(value) is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise TypeError(f"{where} keys must be str, got {type(k).__name__}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(
        f"{where} holds a {type(value).__name__}; only None, bool, int, float, str, list, tuple "
        "and dict are allowed in checkpoint metadata"
    )


def save_checkpoint(
    sam: Sam,
    arch: SamArchitecture,
    path: str | os.PathLike[str],
    *,
    meta: dict[str, Any] | None = None,
    state_dict: Mapping[str, Any] | None = None,
) -> None:
    """Write a SAM network in napari-sam's own checkpoint format, atomically.

    The file holds ``{"napari_sam_format": 1, "architecture": arch.to_dict(), "meta": meta,
    "state_dict": ...}`` with all tensors on the CPU, and loads with ``weights_only=True``.

    Parameters
    ----------
    sam : segment_anything.modeling.Sam
        The network.
    arch : SamArchitecture
        Its architecture (stored so the file can be loaded without knowing it).
    path : str or PathLike
        Destination; written to a temporary sibling first, then moved into place.
    meta : dict, optional
        Free metadata of plain types (None, bool, int, float, str, list, tuple, dict).
    state_dict : mapping, optional
        Weights to store instead of ``sam.state_dict()`` (e.g. a half-precision copy to keep a
        file small; loading casts back to the network's float32).

    Raises
    ------
    TypeError
        If ``meta`` holds other types.
    """
    import torch

    meta = dict(meta or {})
    _check_plain(meta)
    dest = Path(path)
    payload = {
        "napari_sam_format": FORMAT_VERSION,
        "architecture": arch.to_dict(),
        "meta": meta,
        "state_dict": {k: v.detach().cpu() for k, v in (state_dict or sam.state_dict()).items()},
    }
    tmp = _temp_path(dest)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class LoadedModel:
    """A SAM network ready for inference, with where it came from.

    Attributes
    ----------
    sam : segment_anything.modeling.Sam
        The network, in eval mode, on ``device``.
    name : str
        Registry name, ``"custom"`` for an unregistered checkpoint, or ``"random:<arch>"``.
    architecture : SamArchitecture
    checkpoint : Path or None
        The file the weights came from; None for random weights.
    sha256 : str or None
        SHA-256 of ``checkpoint``.
    device : str
        Resolved torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
    meta : dict
        Metadata stored in a napari-sam checkpoint (empty for official files); for random
        models ``{"random_seed": seed}``.
    fast : bool
        Whether the network runs napari-sam's faster modules (see
        :mod:`napari_sam.core.acceleration`) rather than the official ones.
    precision : str
        Precision of the image encoder: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
    """

    sam: Sam
    name: str
    architecture: SamArchitecture
    checkpoint: Path | None
    sha256: str | None
    device: str
    meta: dict[str, Any] = field(default_factory=dict)
    fast: bool = False
    precision: str = "fp32"

    @property
    def model_id(self) -> str:
        """Short stable identity of the weights, safe as a file name (for embedding caches).

        ``<name>-<first 16 hex of the SHA-256>`` for checkpoints; for random weights
        ``<name>-seed<seed>-<8 hex of the architecture>``. A reduced-precision encoder adds
        ``-bf16`` or ``-fp16``: its embeddings differ slightly, so caches must not mix them
        with float32 ones (the fast and official float32 encoders agree to 1e-5 and share).
        """
        if self.sha256:
            ident = f"{self.name}-{self.sha256[:16]}"
        else:
            arch_json = json.dumps(self.architecture.to_dict(), sort_keys=True, default=str)
            digest = hashlib.sha256(arch_json.encode()).hexdigest()[:8]
            ident = f"{self.name}-seed{self.meta.get('random_seed', 0)}-{digest}"
        if self.precision != "fp32":
            ident = f"{ident}-{self.precision}"
        return re.sub(r"[^A-Za-z0-9_.-]", "-", ident)


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _torch_load(path: Path) -> Any:
    """``torch.load`` on the CPU with ``weights_only=True``, every failure a CheckpointError."""
    import pickle

    import torch

    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes), probably from a failed copy or download"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = _GLOBAL_RE.search(str(e))
        if m:
            raise CheckpointError(
                f"checkpoint {path} contains pickled Python objects ({m.group(1)}), not just "
                "weights; refusing to load it since such a file can run arbitrary code"
            ) from None
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is corrupt, truncated or not a torch "
            "checkpoint"
        ) from None
    except Exception as e:
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is corrupt, truncated or not a torch "
            f"checkpoint ({type(e).__name__}: {_short(e, 80)})"
        ) from None


def _looks_like_sam(d: Mapping[str, Any]) -> bool:
    return any(isinstance(k, str) and k.startswith("image_encoder.") for k in d)


def _unpack(obj: Any, path: Path) -> tuple[Mapping[str, Any], SamArchitecture | None, dict]:
    """Split a loaded checkpoint into (state dict, architecture if stored, meta)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(obj).__name__}, not a dictionary of weights"
        )
    if "napari_sam_format" in obj:
        fmt = obj["napari_sam_format"]
        if fmt != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint {path} is in napari-sam format {fmt!r}; this version reads "
                f"format {FORMAT_VERSION} (upgrade napari-sam-kit)"
            )
        try:
            arch = SamArchitecture.from_dict(obj["architecture"])
            state_dict = obj["state_dict"]
        except CheckpointError as e:
            raise CheckpointError(f"checkpoint {path}: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint {path} is a damaged napari-sam checkpoint ({_short(e, 80)})"
            ) from None
        if not isinstance(state_dict, Mapping):
            raise CheckpointError(f"checkpoint {path} is a damaged napari-sam checkpoint")
        meta = obj.get("meta") or {}
        return state_dict, arch, dict(meta) if isinstance(meta, Mapping) else {}
    state_dict: Mapping[str, Any] = obj
    if not _looks_like_sam(obj):
        for key in ("model", "state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                state_dict = inner
                break
    keys = [k for k in state_dict if isinstance(k, str)]
    if keys and all(k.startswith("module.") for k in keys):  # saved from DataParallel
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    return state_dict, None, {}


def _arch_label(arch: SamArchitecture) -> str:
    for name, official in OFFICIAL_ARCHITECTURES.items():
        if official == arch:
            return name
    return (
        f"a custom SAM architecture (encoder width {arch.encoder_embed_dim}, "
        f"depth {arch.encoder_depth})"
    )


def _fit_weights(sam: Sam, state_dict: Mapping[str, Any], path: Path, label: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line summary of any mismatch."""
    expected = sam.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        k
        for k in expected
        if k in state_dict
        and tuple(getattr(state_dict[k], "shape", ())) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} of the wrong shape (e.g. {k}: "
                f"{tuple(getattr(state_dict[k], 'shape', ()))} instead of "
                f"{tuple(expected[k].shape)})"
            )
        raise CheckpointError(f"weights in {path} do not fit {label}: tensors {', '.join(parts)}")
    try:
        sam.load_state_dict(state_dict, strict=True)
    except Exception as e:
        raise CheckpointError(f"weights in {path} do not fit {label} ({_short(e, 120)})") from None


def _registry_name_for(sha256: str) -> str | None:
    for name, spec in MODELS.items():
        if spec.sha256 and spec.sha256.lower() == sha256:
            return name
    return None


def load_model(
    model: str = "vit_b",
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    fast: bool | None = None,
    precision: str | None = None,
) -> LoadedModel:
    """Load a SAM network for inference.

    Parameters
    ----------
    model : str
        A registry name (``"vit_b"``, ``"vit_l"``, ``"vit_h"``, ``"tiny"``), ``"auto"`` (only
        with ``checkpoint``: take the architecture from the file), or ``"random:<arch>"``
        (e.g. ``"random:vit_b"``: random weights, for benchmarks; see :func:`random_model`).
    checkpoint : str or PathLike, optional
        A checkpoint file to load instead of the registry's. Official state dicts (also nested
        under ``"model"`` or ``"state_dict"``) and napari-sam checkpoints are accepted. When
        ``model`` is a registry name, the file must hold weights of that architecture.
    device : str
        See :func:`napari_sam.core.device.resolve_device`.
    progress : callable, optional
        Download progress callback, see :func:`fetch_checkpoint`.
    fast : bool, optional
        Run napari-sam's faster modules (same weights, same results to float rounding; see
        :mod:`napari_sam.core.acceleration`). Default: on, unless ``NAPARI_SAM_FAST=0``.
    precision : str, optional
        Encoder precision, ``"auto"`` (default, or ``$NAPARI_SAM_PRECISION``), ``"fp32"``,
        ``"bf16"`` or ``"fp16"``; see :func:`napari_sam.core.acceleration.resolve_precision`.

    Returns
    -------
    LoadedModel

    Raises
    ------
    CheckpointError
        Unknown model, failed download, unreadable / corrupt / truncated file, a file holding
        pickled objects other than weights, weights of another architecture than requested, or
        weights that do not fit the architecture.
    napari_sam.core.errors.DeviceError
        If ``device`` is not available (checked before anything is downloaded).
    """
    from .acceleration import configure, default_fast, resolve_precision

    if model.startswith("random:"):
        if checkpoint is not None:
            raise CheckpointError(f"model {model!r} has random weights and takes no checkpoint")
        return random_model(
            model.removeprefix("random:"),
            device=device,
            fast=fast,
            precision="auto" if precision is None else precision,
        )

    dev = resolve_device(device)
    # Checked before anything is downloaded, like the device.
    resolved_precision = resolve_precision(precision, dev)
    requested: ModelSpec | None
    if checkpoint is None:
        if model == "auto":
            raise CheckpointError(
                "model 'auto' needs a checkpoint file (--checkpoint PATH); or name a model: "
                + ", ".join(MODELS)
            )
        requested = get_spec(model)
        path = fetch_checkpoint(model, progress=progress)
    else:
        requested = None if model == "auto" else get_spec(model)
        path = Path(checkpoint).expanduser()

    obj = _torch_load(path)
    state_dict, arch, meta = _unpack(obj, path)
    carries_arch = arch is not None
    if arch is None:
        try:
            _, arch = infer_architecture(state_dict)
        except CheckpointError as e:
            raise CheckpointError(f"checkpoint {path}: {e}") from None
        except Exception:
            raise CheckpointError(
                f"checkpoint {path} does not hold SAM weights (unexpected tensor names)"
            ) from None
    label = _arch_label(arch)

    if requested is not None:
        if requested.architecture is not None and arch != requested.architecture:
            raise CheckpointError(
                f"checkpoint {path} holds {label} weights but {requested.name} was requested; "
                "name the matching model or use 'auto'"
            )
        if requested.architecture is None and not carries_arch:
            raise CheckpointError(
                f"checkpoint {path} holds {label} weights but {requested.name} was requested; "
                "name the matching model or use 'auto'"
            )

    try:
        sam = build_sam(arch)
    except Exception as e:
        raise CheckpointError(
            f"cannot build the SAM architecture stored in {path} ({_short(e, 120)})"
        ) from None
    _fit_weights(sam, state_dict, path, label)
    del obj, state_dict

    sha = file_sha256(path)
    name = requested.name if requested is not None else (_registry_name_for(sha) or "custom")
    sam.to(dev)
    sam.eval()
    loaded = LoadedModel(
        sam=sam,
        name=name,
        architecture=arch,
        checkpoint=path,
        sha256=sha,
        device=dev,
        meta=meta,
    )
    return configure(
        loaded,
        fast=default_fast() if fast is None else fast,
        precision=resolved_precision,
    )


def random_model(
    arch: str | SamArchitecture = "vit_b",
    device: str = "cpu",
    seed: int = 0,
    *,
    fast: bool | None = None,
    precision: str = "fp32",
) -> LoadedModel:
    """Build a SAM network with random (untrained) weights, e.g. for benchmarks and tests.

    The global torch random state is left untouched; the same ``seed`` gives the same weights.

    Parameters
    ----------
    arch : str or SamArchitecture
        An official architecture name (``"vit_b"``, ``"vit_l"``, ``"vit_h"``), a registry name
        whose entry has an architecture, or an architecture.
    device : str
        See :func:`napari_sam.core.device.resolve_device`.
    seed : int
        Seed for the weight initialisation.
    fast : bool, optional
        Faster modules (default: on unless ``NAPARI_SAM_FAST=0``), as in :func:`load_model`.
    precision : str
        Encoder precision; float32 by default, so that results are reproducible across
        machines (``load_model`` defaults to ``"auto"``).

    Returns
    -------
    LoadedModel
        With ``name`` ``"random:<arch>"`` (``"random:custom"`` for an architecture object),
        ``checkpoint`` and ``sha256`` None, and ``meta == {"random_seed": seed}``.
    """
    import torch

    from .acceleration import configure, default_fast

    if isinstance(arch, SamArchitecture):
        architecture, label = arch, "custom"
    elif arch in OFFICIAL_ARCHITECTURES:
        architecture, label = OFFICIAL_ARCHITECTURES[arch], arch
    else:
        spec = get_spec(arch)
        if spec.architecture is None:
            raise CheckpointError(
                f"model {arch!r} has no fixed architecture, so it cannot be built with random "
                "weights; use vit_b, vit_l or vit_h"
            )
        architecture, label = spec.architecture, arch
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_sam(architecture)
    sam.to(dev)
    sam.eval()
    loaded = LoadedModel(
        sam=sam,
        name=f"random:{label}",
        architecture=architecture,
        checkpoint=None,
        sha256=None,
        device=dev,
        meta={"random_seed": seed},
    )
    return configure(loaded, fast=default_fast() if fast is None else fast, precision=precision)
