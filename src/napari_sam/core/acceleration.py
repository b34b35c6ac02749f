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
The image encoder's precision is a :class:`~napari_sam.core.precision_plan.PrecisionPlan`: one
number format for its linear layers, one for its attention and one for its neck.

``"fp32"``
    Everything in float32: embeddings equal the official encoder's to float rounding.
``"bf16"``
    Every encoder operation in bfloat16 (``torch.autocast``; the prompt encoder and mask
    decoder stay float32; embeddings are returned as float32). Below 1% relative error in the
    embedding (0.6% for ViT-B); each candidate mask of the tiny model agrees with float32 to
    IoU >= 0.97, and where two candidates' predicted IoUs nearly tie the other one may be
    chosen (see the tests and ``docs/performance.md``).
``"fp16"``
    Float16 for the encoder; CUDA only.
``"linear=bf16,attention=fp32,neck=fp32"`` (any subset; unnamed operations are fp32)
    One format per operation (fast modules and SAM's ViT encoders only). ``linear=int8``: the
    linear layers through torch's dynamic int8 kernels (CPU only).
``"auto"``
    On the CPU with a ViT encoder: per operation the fastest format of a short calibration
    (:mod:`napari_sam.core.calibration`, run once per machine, torch version and thread count
    and remembered in the user cache), a reduced format only where it was measured clearly
    faster than float32. float32 on CUDA and MPS (not measured for this project; ask for
    ``"bf16"`` explicitly on recent GPUs) and for MobileSAM's TinyViT, whose convolutions are
    many times slower in bf16 on CPUs without bfloat16 units.

Environment
-----------
``NAPARI_SAM_FAST=0``
    Use the official modules (default: fast).
``NAPARI_SAM_PRECISION=auto|fp32|bf16|fp16|linear=...,attention=...``
    Default precision when none is passed.

This module does not import torch at import time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .errors import NapariSamError
from .precision_plan import PrecisionPlan

if TYPE_CHECKING:  # pragma: no cover
    from .loaded_model import LoadedModel

__all__ = [
    "ENV_FAST",
    "ENV_PRECISION",
    "PRECISIONS",
    "PrecisionPlan",
    "autocast",
    "check_precision",
    "configure",
    "default_fast",
    "parse_precision",
    "resolve_plan",
    "resolve_precision",
]

#: Environment variable: ``0`` / ``false`` / ``no`` / ``off`` turns the fast modules off.
ENV_FAST = "NAPARI_SAM_FAST"
#: Environment variable: the precision used when none is passed.
ENV_PRECISION = "NAPARI_SAM_PRECISION"
#: Precision names with one format for the whole encoder (per-operation plans come on top,
#: see :class:`~napari_sam.core.precision_plan.PrecisionPlan`).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

_FALSE = {"0", "false", "no", "off"}


def default_fast() -> bool:
    """Whether the fast modules are used when not said otherwise (``NAPARI_SAM_FAST``)."""
    return os.environ.get(ENV_FAST, "1").strip().lower() not in _FALSE


def parse_precision(precision: str | None) -> PrecisionPlan | None:
    """Read a precision request: None for ``"auto"``, else its plan.

    Parameters
    ----------
    precision : str or None
        See :func:`resolve_precision`; None means ``$NAPARI_SAM_PRECISION``, else ``"auto"``.

    Raises
    ------
    NapariSamError
        For an unknown name or a malformed per-operation plan.
    """
    if precision is None:
        precision = os.environ.get(ENV_PRECISION, "").strip() or "auto"
    req = str(precision).strip().lower()
    if req == "auto":
        return None
    return PrecisionPlan.parse(req)


def check_precision(plan: PrecisionPlan, device: str, encoder_type: str | None = None) -> None:
    """Raise NapariSamError when ``plan`` cannot run on ``device`` / the encoder.

    ``encoder_type`` None (not known yet) skips the encoder's checks.
    """
    kind = device.split(":")[0]
    if plan.uses("fp16") and kind != "cuda":
        raise NapariSamError(
            f"precision {plan.name} needs a CUDA device for fp16, not {device!r}; use bf16"
        )
    if plan.linear == "int8" and kind != "cpu":
        raise NapariSamError(f"precision {plan.name}: int8 runs on the CPU only, not {device!r}")
    if plan.single is None and encoder_type not in (None, "vit"):
        raise NapariSamError(
            f"precision {plan.name}: a precision per operation needs one of SAM's ViT "
            "encoders; use fp32 or bf16 for this model"
        )


def resolve_plan(
    precision: str | None, device: str, encoder_type: str = "vit", *, fast: bool = True
) -> PrecisionPlan:
    """Turn a precision request into the plan used on ``device``.

    Parameters
    ----------
    precision : str or None
        ``"auto"``, ``"fp32"``, ``"bf16"``, ``"fp16"`` or a per-operation plan such as
        ``"linear=bf16,attention=fp32"``; None means ``$NAPARI_SAM_PRECISION``, else auto.
    device : str
        A resolved torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
    encoder_type : str
        The image encoder (``SamArchitecture.encoder_type``): ``"auto"`` calibrates for
        ``"vit"`` only.
    fast : bool
        Whether the fast modules run: the official ones take one format for the whole encoder.

    Raises
    ------
    NapariSamError
        For an unknown name, fp16 on a device other than CUDA, int8 off the CPU, or a
        per-operation plan for TinyViT or the official modules.
    """
    plan = parse_precision(precision)
    if plan is None:
        if device.split(":")[0] != "cpu" or encoder_type != "vit":
            return PrecisionPlan()
        from .calibration import measured_plan

        plan = measured_plan()
        return plan if fast or plan.single is not None else PrecisionPlan()
    check_precision(plan, device, encoder_type)
    if not fast and plan.single is None:
        raise NapariSamError(
            f"precision {plan.name} needs napari-sam's fast modules (drop --no-fast / "
            "NAPARI_SAM_FAST=0), or use one format for every operation"
        )
    return plan


def resolve_precision(
    precision: str | None, device: str, encoder_type: str = "vit", *, fast: bool = True
) -> str:
    """:func:`resolve_plan` as the plan's written form (``"fp32"``, ``"bf16"``, ...)."""
    return resolve_plan(precision, device, encoder_type, fast=fast).name


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
        See :func:`resolve_plan`; None keeps the current precision.

    Returns
    -------
    LoadedModel
        ``model`` itself, with ``fast`` and ``precision`` updated.

    Raises
    ------
    NapariSamError
        When the precision cannot run with these modules (the model is left unchanged).
    """
    use_fast = model.fast if fast is None else bool(fast)
    plan = resolve_plan(
        model.precision if precision is None else precision,
        model.device,
        model.architecture.encoder_type,
        fast=use_fast,
    )
    from . import _fast_modules

    if use_fast:
        _fast_modules.swap_in(model.sam)
        _fast_modules.set_plan(model.sam, plan)
    else:
        _fast_modules.swap_out(model.sam)
    model.fast = use_fast
    model.precision = plan.name
    return model


@contextlib.contextmanager
def autocast(model: LoadedModel) -> Iterator[None]:
    """Context in which the image encoder runs at ``model.precision``.

    The fast ViT encoder runs its plan itself (a region per operation): it is handed the
    model's plan here (so that ``model.precision`` is what runs even if it was set without
    :func:`configure`). The official modules and TinyViT run one format for the whole encoder
    under ``torch.autocast`` (no-op for fp32).
    """
    plan = model.plan
    if model.fast and model.architecture.encoder_type == "vit":
        from . import _fast_modules

        _fast_modules.set_plan(model.sam, plan)
        yield
        return
    fmt = plan.single
    if fmt is None:
        raise NapariSamError(f"precision {plan.name} needs napari-sam's fast modules")
    if fmt == "fp32":
        yield
        return
    import torch

    dtype = torch.bfloat16 if fmt == "bf16" else torch.float16
    with torch.autocast(model.device.split(":")[0], dtype=dtype):
        yield
