"""The fast path: faster modules for a loaded SAM network, and its numerical precision.

:func:`configure` switches a :class:`~napari_sam.core.loaded_model.LoadedModel` between
the official ``segment_anything`` modules and napari-sam's faster subclasses of them (same
parameters, same state dict, the official weights loaded unchanged), and chooses the precision
the image encoder runs in. :func:`~napari_sam.core.checkpoints.load_model` does this for every
model it loads: fast modules on, precision ``"auto"``. MobileSAM's TinyViT encoder
(:mod:`napari_sam.core.tiny_vit`) is napari-sam's own inference code either way; its
decoder and prompt encoder are SAM's and switch like ViT models' do.

Precision
---------
``"fp32"``
    Everything in float32: embeddings equal the official encoder's to float rounding.
``"bf16"``
    The image encoder runs under ``torch.autocast`` with bfloat16 (the prompt encoder and mask
    decoder stay float32; embeddings are returned as float32). Below 1% relative error in the
    embedding (0.6% for ViT-B); each candidate mask of the tiny model agrees with float32 to
    IoU >= 0.99, and where two candidates' predicted IoUs nearly tie the other one may be
    chosen (see the tests and ``docs/performance.md``).
``"fp16"``
    Float16 autocast for the encoder; CUDA only.
``"auto"``
    bf16 where it was measured faster than fp32 (3x for ViT-B) with the same masks: SAM's ViT
    encoders on x86 CPUs with AMX-BF16 tiles (Intel Sapphire Rapids and later). fp32 everywhere
    else: on CUDA (not measured for this project; ask for ``"bf16"`` explicitly on recent GPUs)
    and for MobileSAM's TinyViT, whose convolutions were not measured on such a CPU (on CPUs
    without bfloat16 units they are many times slower in bf16).

Environment
-----------
``NAPARI_SAM_FAST=0``
    Use the official modules (default: fast).
``NAPARI_SAM_PRECISION=fp32|bf16|fp16|auto``
    Default precision when none is passed.

This module does not import torch at import time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .errors import NapariSamError

if TYPE_CHECKING:  # pragma: no cover
    from .loaded_model import LoadedModel

__all__ = [
    "ENV_FAST",
    "ENV_PRECISION",
    "PRECISIONS",
    "autocast",
    "configure",
    "default_fast",
    "resolve_precision",
]

#: Environment variable: ``0`` / ``false`` / ``no`` / ``off`` turns the fast modules off.
ENV_FAST = "NAPARI_SAM_FAST"
#: Environment variable: the precision used when none is passed.
ENV_PRECISION = "NAPARI_SAM_PRECISION"
#: Accepted precision names.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

_FALSE = {"0", "false", "no", "off"}


def default_fast() -> bool:
    """Whether the fast modules are used when not said otherwise (``NAPARI_SAM_FAST``)."""
    return os.environ.get(ENV_FAST, "1").strip().lower() not in _FALSE


def _cpu_has_amx_bf16() -> bool:
    """True on x86 CPUs whose AMX tiles do bfloat16 matrix products (and torch can use them)."""
    import torch

    cpu = getattr(torch, "cpu", None)
    check = getattr(cpu, "_is_amx_tile_supported", None)
    try:
        return bool(check()) if check is not None else False
    except Exception:  # pragma: no cover - exotic builds
        return False


def resolve_precision(precision: str | None, device: str, encoder_type: str = "vit") -> str:
    """Turn a precision request into the precision used on ``device``.

    Parameters
    ----------
    precision : str or None
        One of :data:`PRECISIONS`; None means ``$NAPARI_SAM_PRECISION``, else ``"auto"``.
    device : str
        A resolved torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
    encoder_type : str
        The image encoder (``SamArchitecture.encoder_type``): ``"auto"`` picks bf16 for
        ``"vit"`` only.

    Returns
    -------
    str
        ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    Raises
    ------
    NapariSamError
        For an unknown name, or fp16 on a device other than CUDA.
    """
    if precision is None:
        precision = os.environ.get(ENV_PRECISION, "").strip() or "auto"
    req = str(precision).strip().lower()
    if req not in PRECISIONS:
        raise NapariSamError(
            f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}"
        )
    kind = device.split(":")[0]
    if req == "auto":
        measured_faster = kind == "cpu" and encoder_type == "vit" and _cpu_has_amx_bf16()
        return "bf16" if measured_faster else "fp32"
    if req == "fp16" and kind != "cuda":
        raise NapariSamError(f"precision fp16 needs a CUDA device, not {device!r}; use bf16")
    return req


def configure(
    model: LoadedModel, *, fast: bool | None = None, precision: str | None = None
) -> LoadedModel:
    """Switch ``model`` between the official and the fast modules, and set its precision.

    The network is changed in place (its modules change class; weights are untouched), so
    every holder of ``model`` or ``model.sam`` sees the change.

    Parameters
    ----------
    model : LoadedModel
        The network.
    fast : bool, optional
        Fast modules on or off; None keeps the current state.
    precision : str, optional
        See :func:`resolve_precision`; None keeps the current precision.

    Returns
    -------
    LoadedModel
        ``model`` itself, with ``fast`` and ``precision`` updated.
    """
    if precision is not None:
        model.precision = resolve_precision(
            precision, model.device, model.architecture.encoder_type
        )
    if fast is not None:
        from . import _fast_modules

        if fast:
            _fast_modules.swap_in(model.sam)
        else:
            _fast_modules.swap_out(model.sam)
        model.fast = bool(fast)
    return model


@contextlib.contextmanager
def autocast(model: LoadedModel) -> Iterator[None]:
    """Context in which the image encoder runs at ``model.precision`` (no-op for fp32)."""
    if model.precision == "fp32":
        yield
        return
    import torch

    dtype = torch.bfloat16 if model.precision == "bf16" else torch.float16
    with torch.autocast(model.device.split(":")[0], dtype=dtype):
        yield
