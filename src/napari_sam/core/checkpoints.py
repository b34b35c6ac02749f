"""Reading and writing SAM checkpoints, and building a network from them.

Checkpoints are always read with ``torch.load(..., weights_only=True)``: a file holding arbitrary
pickled Python objects is refused rather than executed. Such a file (e.g. a training checkpoint
with optimiser or trainer objects next to the weights) can still be read when the user asks for
it explicitly (``skip_pickled_objects=True``, CLI ``--skip-pickled-objects``): every object
``weights_only`` would refuse is then replaced by an inert stand-in, so nothing in the file
runs, and only the tensors are used.

Accepted containers: a plain state dict; one nested under ``"model"``, ``"state_dict"`` or
``"model_state"`` (micro-sam's training checkpoints, keys prefixed ``sam.``); a ``module.``
prefix from DataParallel; napari-sam's own format (:func:`save_checkpoint`).

The network is built without random initialisation (its tensors allocated, not filled) and
takes the file's tensors as its parameters, so loading costs little more than reading the file.

``torch`` and ``segment_anything`` are imported lazily so that importing this module is cheap.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .acceleration import check_precision, configure, default_fast, parse_precision
from .architecture import (
    OFFICIAL_ARCHITECTURES,
    SamArchitecture,
    assign_weights,
    build_sam,
    infer_architecture,
)
from .device import configure_threads, resolve_device

# ENV_*, cache_dir, checkpoints_dir, fetch_checkpoint, file_sha256, LoadedModel and
# ProgressCallback are re-exported: the public API has always offered them here.
from .downloads import ENV_BASE_URL, ProgressCallback, fetch_checkpoint
from .errors import Cancelled, CheckpointError, short_reason
from .hashing import file_digests, file_sha256
from .loaded_model import LoadedModel
from .locations import ENV_CACHE, cache_dir, checkpoints_dir, temp_sibling
from .registry import MODELS, ModelSpec, get_spec

if TYPE_CHECKING:  # pragma: no cover
    from segment_anything.modeling import Sam

__all__ = [
    "ENV_BASE_URL",
    "ENV_CACHE",
    "FORMAT_VERSION",
    "LoadedModel",
    "PickledObject",
    "ProgressCallback",
    "cache_dir",
    "checkpoints_dir",
    "fetch_checkpoint",
    "file_sha256",
    "load_model",
    "random_model",
    "save_checkpoint",
]

#: Version of napari-sam's own checkpoint format written by :func:`save_checkpoint`.
FORMAT_VERSION = 1

#: torch.load's allow-list of extra globals is process-wide: loads take turns, so that the
#: stand-ins of one explicit ``skip_pickled_objects`` load never reach another load.
_LOAD_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------
# Saving
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
    tmp = temp_sibling(dest)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


class PickledObject:
    """Inert stand-in for a pickled object of a checkpoint that was not unpickled.

    With ``skip_pickled_objects=True`` each class or function a file names (other than those
    ``weights_only`` allows) is replaced by a subclass of this one carrying the same module and
    name; building, calling or restoring it does nothing, so no code from the file runs.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<not unpickled: {type(self).__module__}.{type(self).__qualname__}>"


def _stand_ins(path: Path) -> list[tuple[type, str]]:
    """(stand-in class, "module.name") for every global of ``path`` weights_only refuses."""
    import torch

    pairs = []
    for full in torch.serialization.get_unsafe_globals_in_checkpoint(path):
        module, _, name = full.rpartition(".")
        stand_in = type(name, (PickledObject,), {"__module__": module, "__qualname__": name})
        pairs.append((stand_in, full))
    return pairs


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _torch_load(path: Path, skip_pickled_objects: bool = False) -> Any:
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
    corrupt = (
        f"cannot read checkpoint {path}: the file is corrupt, truncated or not a torch checkpoint"
    )
    try:
        with _LOAD_LOCK:
            if not skip_pickled_objects:
                return torch.load(path, map_location="cpu", weights_only=True)
            with torch.serialization.safe_globals(_stand_ins(path)):
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = _GLOBAL_RE.search(str(e))
        if m:
            raise CheckpointError(
                f"checkpoint {path} contains pickled Python objects ({m.group(1)}), not just "
                "weights; refusing to load it since such a file can run arbitrary code. If you "
                "trust its source, read its tensors alone with --skip-pickled-objects (Python: "
                "skip_pickled_objects=True; nothing in the file is run)"
            ) from None
        raise CheckpointError(corrupt) from None
    except Exception as e:
        raise CheckpointError(f"{corrupt} ({type(e).__name__}: {short_reason(e, 80)})") from None


def _looks_like_sam(d: Mapping[str, Any]) -> bool:
    return any(isinstance(k, str) and k.startswith("image_encoder.") for k in d)


def _unpack(obj: Any, path: Path) -> tuple[Mapping[str, Any], SamArchitecture | None, dict]:
    """Split a loaded checkpoint into (state dict, architecture if stored, meta)."""
    if isinstance(obj, PickledObject):
        raise CheckpointError(
            f"checkpoint {path} holds a pickled {type(obj).__module__}.{type(obj).__name__} "
            "object, not a dictionary of weights"
        )
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(obj).__name__}, not a dictionary of weights"
        )
    if "napari_sam_format" in obj:
        return _unpack_napari_sam(obj, path)
    state_dict: Mapping[str, Any] = obj
    if not _looks_like_sam(obj):
        for key in ("model", "state_dict", "model_state"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                state_dict = inner
                break
    for prefix in ("module.", "sam."):  # DataParallel, then micro-sam's trainer wrapper
        keys = [k for k in state_dict if isinstance(k, str)]
        if _looks_like_sam(state_dict) or not any(k.startswith(prefix) for k in keys):
            continue
        # Entries without the prefix belong to the wrapper (e.g. micro-sam's extra decoder).
        state_dict = {
            k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)
        }
    return state_dict, None, {}


def _unpack_napari_sam(
    obj: Mapping[str, Any], path: Path
) -> tuple[Mapping[str, Any], SamArchitecture, dict]:
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
            f"checkpoint {path} is a damaged napari-sam checkpoint ({short_reason(e, 80)})"
        ) from None
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"checkpoint {path} is a damaged napari-sam checkpoint")
    meta = obj.get("meta") or {}
    return state_dict, arch, dict(meta) if isinstance(meta, Mapping) else {}


def _arch_label(arch: SamArchitecture) -> str:
    for name, official in OFFICIAL_ARCHITECTURES.items():
        if official == arch:
            return name
    return (
        f"a custom SAM architecture (encoder width {arch.encoder_embed_dim}, "
        f"depth {arch.encoder_depth})"
    )


def _fit_weights(
    sam: Sam, arch: SamArchitecture, state_dict: Mapping[str, Any], path: Path, label: str
) -> None:
    """Give ``sam`` (built empty) the weights, with a one-line summary of any mismatch."""
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
        assign_weights(sam, arch, state_dict)
    except CheckpointError as e:
        raise CheckpointError(f"weights in {path} do not fit {label}: {e}") from None
    except Exception as e:
        raise CheckpointError(
            f"weights in {path} do not fit {label} ({short_reason(e, 120)})"
        ) from None


def _identify(path: Path) -> tuple[str, str | None]:
    """The file's SHA-256, and the registry name of the model it is (None if none)."""
    try:
        digests = file_digests(path, ("sha256", "xxh128"))
    except CheckpointError:  # xxhash missing: only SHA-256-checked models are recognised
        digests = file_digests(path, ("sha256",))
    for name, spec in MODELS.items():
        expected = spec.hashes
        if expected and all(digests.get(a) == h for a, h in expected.items()):
            return digests["sha256"], name
    return digests["sha256"], None


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _read_weights(
    path: Path, requested: ModelSpec | None, skip_pickled_objects: bool
) -> tuple[dict, Any, dict]:
    """The state dict, architecture and meta of a checkpoint file, checked against the
    requested model (CheckpointError with a one-line reason otherwise)."""
    obj = _torch_load(path, skip_pickled_objects)
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

    return state_dict, arch, meta


def load_model(
    model: str = "vit_b",
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    fast: bool | None = None,
    precision: str | None = None,
    skip_pickled_objects: bool = False,
    cancel: Callable[[], bool] | None = None,
) -> LoadedModel:
    """Load a SAM network for inference.

    Parameters
    ----------
    model : str
        A registry name (e.g. ``"vit_b"``, ``"vit_t"``, ``"vit_b_lm"``, ``"tiny"``), ``"auto"``
        (only with ``checkpoint``: take the architecture from the file), or ``"random:<arch>"``
        (e.g. ``"random:vit_b"``: random weights, for benchmarks; see :func:`random_model`).
    checkpoint : str or PathLike, optional
        A checkpoint file to load instead of the registry's. State dicts of SAM or MobileSAM
        (also nested under ``"model"``, ``"state_dict"`` or ``"model_state"``, with a
        ``module.`` or ``sam.`` prefix) and napari-sam checkpoints are accepted. When
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
        ``"bf16"``, ``"fp16"`` or per operation (``"linear=bf16,attention=fp32"``); see
        :func:`napari_sam.core.acceleration.resolve_plan`.
    skip_pickled_objects : bool
        Read a file that holds pickled Python objects besides its weights, replacing the
        objects by inert stand-ins (nothing in the file runs). Off by default: such files are
        refused with a message that names this option. Only for files from a trusted source.
    cancel : callable, optional
        Polled between the stages (download, reading, building, hashing, moving to the
        device); when it returns True, :class:`~napari_sam.core.errors.Cancelled` is raised.

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
    if model.startswith("random:"):
        if checkpoint is not None:
            raise CheckpointError(f"model {model!r} has random weights and takes no checkpoint")
        return random_model(
            model.removeprefix("random:"),
            device=device,
            fast=fast,
            precision="auto" if precision is None else precision,
        )

    def check(stage: str) -> None:
        if cancel is not None and cancel():
            raise Cancelled(f"loading model {model} cancelled ({stage})")

    dev = resolve_device(device)
    configure_threads()
    # Checked before anything is downloaded, like the device (resolved with the encoder below).
    requested_plan = parse_precision(precision)
    if requested_plan is not None:
        check_precision(requested_plan, dev)
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

    check("reading the checkpoint")
    state_dict, arch, meta = _read_weights(path, requested, skip_pickled_objects)
    label = _arch_label(arch)
    check("building the network")
    try:
        sam = build_sam(arch, empty=True)  # no random initialisation: the file has the weights
    except Exception as e:
        raise CheckpointError(
            f"cannot build the SAM architecture stored in {path} ({short_reason(e, 120)})"
        ) from None
    _fit_weights(sam, arch, state_dict, path, label)
    del state_dict
    check("hashing the checkpoint")
    sha, registry_name = _identify(path)
    name = requested.name if requested is not None else (registry_name or "custom")
    check("moving the model to the device")
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
        precision="auto" if requested_plan is None else requested_plan.name,
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
        A published architecture name (``"vit_b"``, ``"vit_l"``, ``"vit_h"``, ``"vit_t"``), a
        registry name whose entry has an architecture, or an architecture.
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

    if isinstance(arch, SamArchitecture):
        architecture, label = arch, "custom"
    elif arch in OFFICIAL_ARCHITECTURES:
        architecture, label = OFFICIAL_ARCHITECTURES[arch], arch
    else:
        spec = get_spec(arch)
        if spec.architecture is None:
            raise CheckpointError(
                f"model {arch!r} has no fixed architecture, so it cannot be built with random "
                "weights; use vit_b, vit_l, vit_h or vit_t"
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
