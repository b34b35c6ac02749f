"""Which precision each encoder operation should run in on this CPU, measured once.

``precision="auto"`` on the CPU asks :func:`measured_plan`. The first time on a machine it runs
a short calibration (:func:`calibrate`, a fraction of a second): for the linear layers and the
attention of SAM's ViT encoder, a few small calls of the encoder's shapes through the
code the fast encoder runs, in each candidate format. A reduced format is chosen for an
operation only when it took at most :data:`MARGIN` of float32's time: a CPU whose bfloat16
kernels are emulated (e.g. AVX2 only) stays float32, one with bfloat16 dot products but no
matrix tiles (AMD Zen 4/5) gets bfloat16 linear layers and float32 attention, one with AMX
tiles gets bfloat16 throughout.

The result is remembered in ``cache_dir() / "precision-calibration.json"``, keyed by the CPU
(model name and feature flags), the torch version and the number of threads; a damaged file is
ignored and rewritten. The numbers are the calibration's estimate of each operation's share of
a ViT-B embedding (seconds), shown by ``napari-sam info``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .locations import atomic_write, cache_dir
from .precision_plan import PrecisionPlan

__all__ = ["Calibration", "calibrate", "cpu_info", "measured_plan"]

log = logging.getLogger(__name__)

#: Name of the record of calibrations in the cache folder.
RECORD_NAME = "precision-calibration.json"
#: Calibrations kept in the record (machines x torch versions x thread counts).
MAX_RECORD_ENTRIES = 16
#: A reduced format is chosen only when it takes at most this fraction of float32's time.
MARGIN = 0.85
#: Candidate formats per measured operation on the CPU (fp16 has no fast CPU kernels in
#: torch). The neck is about 1% of the encoder's arithmetic: measuring it would cost more than
#: it could save, so it follows the others (bf16 when linear layers and attention both are).
CANDIDATES: dict[str, tuple[str, ...]] = {
    "linear": ("fp32", "bf16", "int8"),
    "attention": ("fp32", "bf16"),
}
#: The formats ``"auto"`` may choose. int8 is measured (``napari-sam info`` shows it) but only
#: used when asked for (``linear=int8``): its error (2.3% of the embedding, against 0.6% for
#: bf16) was checked on the tiny model only; real SAM weights could not be tried here, and
#: dynamic int8 is known to suffer from the activation outliers of large vision transformers.
#: Measured gain on an AVX2 CPU: 8-25% (docs/performance.md): not worth an unverified risk.
AUTO_FORMATS: dict[str, tuple[str, ...]] = {
    "linear": ("fp32", "bf16"),
    "attention": ("fp32", "bf16"),
}
#: CPU feature flags worth showing in bug reports (x86 and Arm names of /proc/cpuinfo, Apple
#: silicon's ``hw.optional.arm.FEAT_*``).
FEATURE_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimddp",
    "bf16",
    "i8mm",
    "sve",
    "feat_bf16",
    "feat_i8mm",
)

_MEMO: dict[str, Calibration] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Calibration:
    """One calibration: where it ran, what it measured, the plan it chose.

    Attributes
    ----------
    key : str
        Identity of the CPU, torch version and thread count it holds for.
    machine : dict
        ``cpu``, ``capability``, ``flags`` (the :data:`FEATURE_FLAGS` present), ``torch``,
        ``threads``.
    seconds : dict
        Operation -> format -> estimated seconds of that operation in a ViT-B embedding.
    took : float
        Seconds the calibration itself took.
    plan : PrecisionPlan
        The chosen plan (:func:`choose_plan` of ``seconds``).
    """

    key: str
    machine: dict[str, Any]
    seconds: dict[str, dict[str, float]]
    took: float
    plan: PrecisionPlan = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "plan", choose_plan(self.seconds))


def choose_plan(seconds: dict[str, dict[str, float]]) -> PrecisionPlan:
    """Per operation the fastest format of :data:`AUTO_FORMATS`, a reduced one only within
    :data:`MARGIN`.

    The neck runs bf16 when the linear layers and attention both do, else fp32. Formats
    missing from ``seconds`` (or not finite) are not candidates.
    """
    chosen = {}
    for op in CANDIDATES:
        times = {
            f: t
            for f, t in seconds.get(op, {}).items()
            if f in AUTO_FORMATS[op] and isinstance(t, float | int) and math.isfinite(t)
        }
        base = times.get("fp32")
        best = min(times, key=times.__getitem__, default="fp32")
        chosen[op] = best if base is not None and times[best] <= MARGIN * base else "fp32"
    both_bf16 = chosen["linear"] == chosen["attention"] == "bf16"
    return PrecisionPlan(**chosen, neck="bf16" if both_bf16 else "fp32")


# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------


def cpu_info() -> dict[str, Any]:
    """CPU model name, torch's CPU capability and the feature flags of :data:`FEATURE_FLAGS`.

    ``all_flags`` holds every flag the system lists (``/proc/cpuinfo`` on Linux, the
    ``hw.optional`` features on macOS, none on Windows); it identifies the machine in
    :func:`machine_key`.
    """
    import torch

    if platform.system() == "Darwin":
        name, flags = _darwin_cpu()
    else:
        try:
            text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        name, flags = parse_cpuinfo(text)
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - old or exotic builds
        capability = "unknown"
    return {
        "cpu": name or platform.processor() or platform.machine() or "unknown",
        "capability": capability,
        "flags": [f for f in FEATURE_FLAGS if f in flags],
        "all_flags": flags,
    }


def parse_cpuinfo(text: str) -> tuple[str, list[str]]:
    """(model name, sorted flags) of the first processor in a ``/proc/cpuinfo`` text
    (x86 ``model name`` / ``flags``, Arm ``Hardware`` / ``Features``)."""
    name, flags = "", []
    for line in text.splitlines():
        label, _, value = line.partition(":")
        label = label.strip().lower()
        if label in ("model name", "hardware") and not name:
            name = value.strip()
        elif label in ("flags", "features") and not flags:
            flags = sorted(set(value.split()))
    return name, flags


def _darwin_cpu() -> tuple[str, list[str]]:
    """(brand string, features such as ``feat_bf16``) from macOS's ``sysctl``."""
    import subprocess

    def sysctl(*args: str) -> str:
        try:
            run = subprocess.run(["sysctl", *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return ""
        return run.stdout if run.returncode == 0 else ""

    flags = []
    for line in sysctl("hw.optional").splitlines():
        key, _, value = line.partition(":")
        if value.strip() == "1":
            flags.append(key.strip().rsplit(".", 1)[-1].lower())
    return sysctl("-n", "machdep.cpu.brand_string").strip(), sorted(set(flags))


def machine_key(info: dict[str, Any], threads: int) -> str:
    """``<16 hex of the CPU's name, capability and flags>-torch<version>-t<threads>``."""
    import torch

    ident = json.dumps([info["cpu"], info["capability"], info["all_flags"]])
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return f"{digest}-torch{torch.__version__}-t{threads}"


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def _best_time(fn: Callable[[], Any], limit: float | None, reps: int = 2) -> float:
    """Least seconds of ``reps`` calls after a warm-up call (kernel choice, packing).

    A warm-up over ``limit`` seconds is returned as is: that candidate clearly loses against
    float32 and need not cost the user more time.
    """
    t0 = time.perf_counter()
    fn()
    best = time.perf_counter() - t0
    if limit is not None and best > limit:
        return best
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# ViT-B at 1024 x 1024: 12 blocks of 64 x 64 tokens of width 768, 12 heads of 64 channels;
# 4 global blocks, 8 blocks of 25 windows of 14 x 14; neck 768 -> 256 (1x1) and 256 (3x3).
_VIT_B_LINEAR_FLOP = 12 * 2 * 4096 * 768 * (3 * 768 + 768 + 2 * 4 * 768)
_VIT_B_NECK_FLOP = 2 * 4096 * 256 * (768 + 9 * 256)


def _measure_linear(torch: Any, fmt: str, reference: float | None) -> float:
    """Seconds of ViT-B's linear layers, from one MLP-shaped product of 256 tokens."""
    from . import _precision_ops as ops

    gen = torch.Generator().manual_seed(0)
    tokens, width = 128, 768
    x = torch.randn(tokens, width, generator=gen)
    layer = torch.nn.Linear(width, 4 * width)
    if fmt == "int8":
        holder = torch.nn.Module()
        holder.lin = layer
        ops._packed(holder, "lin", layer)  # once per model in the encoder: not timed

        def run() -> Any:
            with ops.running(PrecisionPlan(linear="int8")):
                return ops.linear(holder, "lin", x)
    else:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[fmt]
        w, b = layer.weight.detach().to(dtype), layer.bias.detach().to(dtype)

        def run() -> Any:
            # The encoder's activations arrive in float32 (after a LayerNorm): cast per call.
            return torch.nn.functional.linear(x.to(dtype), w, b)

    ratio = 2 * tokens * width * 4 * width / _VIT_B_LINEAR_FLOP
    return _best_time(run, _limit(reference, ratio)) / ratio


def _limit(reference: float | None, ratio: float) -> float | None:
    """Warm-up seconds of a call (``ratio`` of the operation) beyond which a format loses:
    twice float32's time for the whole operation, scaled to the call."""
    return None if reference is None else 2 * reference * ratio


def _measure_attention(torch: Any, fmt: str, reference: float | None) -> float:
    """Seconds of ViT-B's attention: one global-shaped and one window-shaped call, scaled."""
    from . import _precision_ops as ops
    from ._encoder_attention import encoder_attention

    gen = torch.Generator().manual_seed(1)
    total = 0.0
    # (grid, batch, heads, scale to ViT-B: blocks x batch x heads x tokens^2 ratio)
    shapes = [
        ((32, 36), 1, 1, 4 * 12 * (4096 / (32 * 36)) ** 2),
        ((14, 14), 5, 4, 8 * 25 / 5 * 12 / 4),
    ]
    for (h, w), b, heads, scale in shapes:
        q, k, v = (torch.randn(b, heads, h * w, 64, generator=gen) for _ in range(3))
        rel_h = torch.randn(2 * h - 1, 64, generator=gen) * 0.1
        rel_w = torch.randn(2 * w - 1, 64, generator=gen) * 0.1

        def run(q=q, k=k, v=v, rel_h=rel_h, rel_w=rel_w, size=(h, w)) -> Any:
            with ops.region(fmt, q.device):
                qc, kc, vc = ops.to_format(fmt, q, k, v)
                return encoder_attention(qc, kc, vc, rel_h, rel_w, size, 0.125)

        total += scale * _best_time(run, _limit(reference, 1 / scale))
    return total


_MEASURES = {"linear": _measure_linear, "attention": _measure_attention}


def calibrate(threads: int | None = None) -> Calibration:
    """Measure every candidate format of every operation on this machine (no caching).

    Parameters
    ----------
    threads : int, optional
        Threads torch uses (default: its current setting), part of the result's key.
    """
    import torch

    info = cpu_info()
    threads = threads or torch.get_num_threads()
    seconds: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    with torch.inference_mode():
        for op, measure in _MEASURES.items():
            seconds[op] = {}
            for fmt in CANDIDATES[op]:
                try:
                    seconds[op][fmt] = measure(torch, fmt, seconds[op].get("fp32"))
                except Exception as e:  # a format this build cannot run is no candidate
                    log.info("calibration: %s in %s failed: %s", op, fmt, e)
    took = time.perf_counter() - t0
    machine = {k: info[k] for k in ("cpu", "capability", "flags")}
    machine.update(torch=torch.__version__, threads=threads)
    return Calibration(machine_key(info, threads), machine, seconds, took)


# --------------------------------------------------------------------------------------------
# The record
# --------------------------------------------------------------------------------------------


def record_path() -> Path:
    """Where calibrations are remembered: ``cache_dir() / "precision-calibration.json"``."""
    return cache_dir() / RECORD_NAME


def _read_record() -> dict[str, Any]:
    try:
        data = json.loads(record_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) else None
    return entries if isinstance(entries, dict) else {}


def _from_entry(key: str, entry: Any) -> Calibration | None:
    """The calibration an entry of the record holds, None when it is damaged."""
    try:
        seconds = {
            op: {str(f): float(t) for f, t in entry["seconds"][op].items()} for op in CANDIDATES
        }
        return Calibration(key, dict(entry["machine"]), seconds, float(entry["took"]))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _write_record(cal: Calibration) -> None:
    """Add ``cal`` to the record; a cache folder we cannot write is no error."""
    entries = _read_record()
    entries.pop(cal.key, None)  # re-inserted last: the newest entry
    entries[cal.key] = {
        "machine": cal.machine,
        "seconds": cal.seconds,
        "took": cal.took,
        "plan": cal.plan.name,  # for people reading the file; recomputed when read
    }
    while len(entries) > MAX_RECORD_ENTRIES:
        entries.pop(next(iter(entries)))
    dest = record_path()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dest, json.dumps({"version": 1, "entries": entries}, indent=1).encode())
    except OSError as e:
        log.debug("cannot record the precision calibration in %s: %s", dest, e)


def calibration(*, refresh: bool = False) -> Calibration:
    """This machine's calibration: remembered (process, then record), else measured now.

    Parameters
    ----------
    refresh : bool
        Measure again and replace what was remembered.
    """
    import torch

    threads = torch.get_num_threads()
    key = machine_key(cpu_info(), threads)
    with _LOCK:
        cal = None if refresh else _MEMO.get(key)
        if cal is None and not refresh:
            cal = _from_entry(key, _read_record().get(key))
        if cal is None:
            cal = calibrate(threads)
            log.info("precision calibration (%.2f s): %s", cal.took, cal.plan.name)
            _write_record(cal)
        _MEMO[key] = cal
        return cal


def measured_plan() -> PrecisionPlan:
    """The plan :func:`calibration` chose for this machine (what ``precision="auto"`` runs)."""
    return calibration().plan
