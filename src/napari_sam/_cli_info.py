"""``napari-sam info``: what a bug report needs about this machine and installation.

Versions, the CPU (model, torch's capability, the feature flags that decide fast kernels),
threads, GPUs, and the precision ``auto`` runs with the calibration numbers it chose from
(see :mod:`napari_sam.core.calibration`).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from importlib import metadata

from . import __version__

EXIT_OK = 0


def add_info_parser(sub: argparse._SubParsersAction) -> None:
    """The ``info`` subcommand."""
    p = sub.add_parser(
        "info",
        help="versions, CPU features, threads and the precision chosen here (for bug reports)",
    )
    p.add_argument(
        "--recalibrate",
        action="store_true",
        help="measure the precision calibration again (e.g. after a noisy first measurement)",
    )


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def run_info(args: argparse.Namespace) -> int:
    """Print the report; returns the exit status."""
    import torch

    from .core.calibration import CANDIDATES, FEATURE_FLAGS, calibration, cpu_info, record_path
    from .core.device import configure_threads

    threads = configure_threads()
    print(f"napari-sam-kit {__version__}")
    print("\n[versions]")
    print(f"python          {sys.version.split()[0]} ({platform.platform()})")
    print(f"torch           {torch.__version__}")
    for dist in ("segment-anything", "numpy", "napari"):
        print(f"{dist:<15} {_version(dist)}")

    info = cpu_info()
    print("\n[cpu]")
    print(f"model           {info['cpu']}")
    print(f"torch kernels   {info['capability']}")
    present = set(info["flags"])
    absent = [f for f in FEATURE_FLAGS if f not in present]
    print(f"features        {' '.join(info['flags']) or '(none of those below)'}")
    print(f"not present     {' '.join(absent) if info['all_flags'] else '(flags not readable)'}")
    print(f"threads         {threads} (torch; NAPARI_SAM_THREADS={_env('NAPARI_SAM_THREADS')})")
    print(f"logical cores   {os.cpu_count()}")

    print("\n[gpu]")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"cuda:{i}          {torch.cuda.get_device_name(i)}")
    else:
        print("cuda            not available")
    mps = getattr(torch.backends, "mps", None)
    print(f"mps             {'available' if mps is not None and mps.is_available() else 'no'}")

    cal = calibration(refresh=args.recalibrate)
    print("\n[precision]")
    print(f"requested       NAPARI_SAM_PRECISION={_env('NAPARI_SAM_PRECISION')}")
    print(f"auto on the CPU {cal.plan.name} (SAM's ViT encoders; fp32 on GPUs and for vit_t)")
    print(f"calibration     {cal.took:.2f} s, remembered in {record_path()}")
    print("estimated seconds of a ViT-B embedding per operation and format:")
    for op, formats in CANDIDATES.items():
        times = cal.seconds.get(op, {})
        cells = "  ".join(
            f"{f} {times[f]:7.2f}" if f in times else f"{f}   (failed)" for f in formats
        )
        print(f"  {op:<10} {cells}")
    return EXIT_OK


def _env(name: str) -> str:
    value = os.environ.get(name)
    return "(unset)" if value is None else repr(value)
