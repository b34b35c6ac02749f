"""Choosing the torch device SAM runs on.

``torch`` is imported lazily, inside :func:`resolve_device`, so that importing this module is
cheap. CUDA is not probed (driver initialisation) when ``CUDA_VISIBLE_DEVICES`` hides every
GPU; torch itself answers at once when it was built without CUDA.
"""

from __future__ import annotations

import os
import re

from .errors import DeviceError

_CUDA_RE = re.compile(r"^cuda(?::(\d+))?$")


def _hidden_by_env() -> bool:
    """True when ``CUDA_VISIBLE_DEVICES`` is set to hide every GPU ("" or starting with -1)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return value is not None and (not value.strip() or value.strip().startswith("-1"))


def _cuda_available(torch) -> bool:
    return not _hidden_by_env() and torch.cuda.is_available()


def _cuda_unavailable_reason(torch) -> str:
    if getattr(torch.version, "cuda", None) is None:
        return f"this torch build ({torch.__version__}) has no CUDA support (CPU-only torch)"
    if _hidden_by_env():
        value = os.environ.get("CUDA_VISIBLE_DEVICES")
        return f"CUDA_VISIBLE_DEVICES={value!r} hides every GPU"
    return "torch.cuda.is_available() is False (no usable GPU or driver)"


def resolve_device(device: str = "auto") -> str:
    """Turn a device request into a torch device string that is known to be usable.

    Parameters
    ----------
    device : str
        ``"auto"`` (CUDA when available, else CPU; Apple MPS is only used when asked for
        explicitly), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``. Case and surrounding
        blanks are ignored.

    Returns
    -------
    str
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.

    Raises
    ------
    DeviceError
        If the device is unknown or not available, with a one-line message saying why.
    """
    import torch

    req = str(device).strip().lower()
    if req == "auto":
        return "cuda" if _cuda_available(torch) else "cpu"
    if req == "cpu":
        return "cpu"
    m = _CUDA_RE.match(req)
    if m:
        if not _cuda_available(torch):
            raise DeviceError(
                f"CUDA was requested ({device!r}) but {_cuda_unavailable_reason(torch)}",
                cli_hint="use --device cpu",
                gui_hint="choose device 'cpu' (or 'auto')",
            )
        if m.group(1) is not None:
            index = int(m.group(1))
            count = torch.cuda.device_count()
            if index >= count:
                raise DeviceError(
                    f"CUDA device {index} was requested but only {count} CUDA device(s) "
                    f"are visible (cuda:0..cuda:{count - 1})",
                    cli_hint="use --device cuda:0",
                    gui_hint="choose device 'cuda' or 'cuda:0'",
                )
        return req
    if req == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(
                "MPS (Apple GPU) was requested but torch.backends.mps.is_available() is False",
                cli_hint="use --device cpu",
                gui_hint="choose device 'cpu' (or 'auto')",
            )
        return "mps"
    raise DeviceError(f"unknown device {device!r}; use one of auto, cpu, cuda, cuda:N, mps")


#: Environment variable setting how many threads torch uses on the CPU (default: torch's own
#: choice, one per physical core).
ENV_THREADS = "NAPARI_SAM_THREADS"


def configure_threads() -> int:
    """Apply ``$NAPARI_SAM_THREADS`` to torch (when set) and return the thread count in use.

    Called when a model loads. Without the variable torch keeps its default (one thread per
    physical core), which is fastest on an otherwise idle machine; on a busy one fewer threads
    can be faster (docs/performance.md, "Threads").

    Raises
    ------
    DeviceError
        When the variable is not a positive integer.
    """
    import torch

    value = os.environ.get(ENV_THREADS, "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise DeviceError(
                f"{ENV_THREADS}={value!r} is not a positive number of threads; unset it to use "
                "torch's default"
            )
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    return torch.get_num_threads()
