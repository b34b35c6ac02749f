"""Work-arounds for the environment napari-sam runs in (the napari side only)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

#: Set to 1 to let ``triton`` be imported even when it would clash with the OpenGL driver.
ENV_ALLOW_TRITON = "NAPARI_SAM_ALLOW_TRITON"


def avoid_triton_llvm_clash() -> bool:
    """Keep ``triton`` from being imported into a process whose OpenGL driver loaded LLVM.

    Linux wheels of torch come with triton, and ``import torchvision`` (which
    segment-anything needs) imports it through ``torch._dynamo``. Triton's library carries its
    own LLVM; loaded after Mesa's OpenGL driver has put the system ``libLLVM`` in the process
    (napari's canvas does that on most Linux desktops, always under Xvfb), its initialisers
    bind to the wrong LLVM and the interpreter dies with a segmentation fault. napari-sam
    never needs triton (no ``torch.compile``), so when ``libLLVM`` is already mapped and
    triton is not imported yet, ``import triton`` is made to fail instead: torch then simply
    reports triton as unavailable.

    Returns
    -------
    bool
        Whether triton was blocked.
    """
    if "triton" in sys.modules or not sys.platform.startswith("linux"):
        return False
    if os.environ.get(ENV_ALLOW_TRITON, "") not in ("", "0"):
        return False
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # pragma: no cover - no procfs
        return False
    if "libLLVM" not in maps:
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]  # makes ``import triton`` fail
    log.info("napari-sam: triton blocked (it would crash next to the OpenGL driver's LLVM)")
    return True
