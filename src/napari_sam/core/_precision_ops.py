"""Running one operation of the image encoder at the precision its :class:`PrecisionPlan` names.

The fast encoder (:class:`napari_sam.core._fast_modules.FastImageEncoder`) makes its plan the
current one of the thread for the duration of a run (:func:`running`); its blocks then ask
:func:`current_plan`, open a :func:`region` per operation and run their linear layers through
:func:`linear`. Outside an encoder run there is no current plan and modules behave as the
official ones (e.g. the mask decoder's MLPs, which share the MLP class with the encoder).

Reduced-precision regions are ``torch.autocast`` regions, nested in one outer region per run,
so that each weight is cast once per run (autocast's cast cache lives as long as the outermost
region). ``int8`` linear layers use torch's dynamic int8 kernels (``quantized::linear_dynamic``:
per-channel int8 weights, packed once and kept on the module; activations quantised per call).

Importing this module imports torch; import it lazily.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from .precision_plan import PrecisionPlan

__all__ = ["current_plan", "linear", "region", "running", "to_format"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Module attribute holding packed int8 weights: {layer name: ((data_ptr, version), packed)}.
INT8_CACHE = "_napari_sam_int8"

_LOCAL = threading.local()


@contextlib.contextmanager
def running(plan: PrecisionPlan | None) -> Iterator[None]:
    """Make ``plan`` the current plan of this thread (restoring the outer one afterwards)."""
    outer = getattr(_LOCAL, "plan", None)
    _LOCAL.plan = plan
    try:
        yield
    finally:
        _LOCAL.plan = outer


def current_plan() -> PrecisionPlan | None:
    """The plan of the encoder running in this thread, None outside an encoder run."""
    return getattr(_LOCAL, "plan", None)


def region(fmt: str, device: torch.device) -> contextlib.AbstractContextManager:
    """An autocast region computing in ``fmt``; float32 and int8 turn autocast off."""
    dtype = _DTYPES.get(fmt)
    if dtype is None or dtype is torch.float32:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def to_format(fmt: str, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors in ``fmt``'s floating-point type (int8 computes on float32 inputs)."""
    dtype = _DTYPES.get(fmt, torch.float32)
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in tensors)


def linear(owner: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """``getattr(owner, name)(x)``, in int8 when the current plan says so."""
    layer = getattr(owner, name)
    plan = current_plan()
    if plan is None or plan.linear != "int8" or type(layer) is not nn.Linear:
        return layer(x)
    return torch.ops.quantized.linear_dynamic(x.float(), _packed(owner, name, layer), True)


def _packed(owner: nn.Module, name: str, layer: nn.Linear) -> torch.Tensor:
    """The layer's weights as packed per-channel int8, made once per version of the weights."""
    cache = owner.__dict__.setdefault(INT8_CACHE, {})
    w = layer.weight
    key = (w.data_ptr(), -1 if w.is_inference() else w._version)
    hit = cache.get(name)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.inference_mode(False), torch.no_grad():
        w32 = w.detach().float()
        scale = (w32.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
        zero = torch.zeros(w32.shape[0], dtype=torch.long)
        with warnings.catch_warnings():
            # torch >= 2.10 flags its quantized tensors as deprecated; the kernels stay.
            warnings.simplefilter("ignore", UserWarning)
            qw = torch.quantize_per_channel(w32.cpu(), scale.cpu(), zero, 0, torch.qint8)
        bias = None if layer.bias is None else layer.bias.detach().float().cpu()
        packed = torch.ops.quantized.linear_prepack(qw, bias)
    cache[name] = (key, packed)
    return packed
