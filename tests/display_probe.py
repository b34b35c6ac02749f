"""Can this machine run the GUI tests? Decided once per session, by a probe in a subprocess.

Creating a QApplication without a usable display makes Qt abort the whole process (``Fatal
Python error: Aborted`` in pytest-qt's ``qapp`` fixture), and a missing OpenGL driver can do
the same when napari makes its canvas. So a subprocess tries what the GUI tests do first (a
QApplication and a napari viewer); if it fails, the GUI tests are skipped with its reason and
a loud summary instead of the run crashing.

``NAPARI_SAM_GUI_TESTS`` chooses: unset or ``auto`` probes and skips when there is no display;
``0`` skips without probing; ``1`` requires them (CI, where Xvfb was installed): no usable
display is then an error. The probe's answer is kept in ``NAPARI_SAM_GUI_PROBE`` so that
pytest runs started from within the session (subprocess tests) do not probe again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

ENV_MODE = "NAPARI_SAM_GUI_TESTS"
ENV_CACHE = "NAPARI_SAM_GUI_PROBE"
#: A napari viewer is up in a few seconds; a hung X server or driver must not hang the run.
TIMEOUT_S = 60.0
OK = "ok"

PROBE_CODE = """
import sys
from qtpy.QtWidgets import QApplication
app = QApplication.instance() or QApplication(sys.argv[:1])
import napari
viewer = napari.Viewer(show=False)
viewer.close()
print("napari-sam-gui-probe: ok")
"""

#: What to install for the GUI tests on Debian/Ubuntu (the list ``.ci/run`` installs).
INSTALL_HINT = (
    "apt-get install xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-cursor0 "
    "libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 "
    "libxcb-shape0 libxcb-xinerama0 libxcb-xfixes0 libdbus-1-3"
)

#: Lines of a failed probe's output that say why, in order of preference.
_TELLING = (
    "could not connect to display",
    "no qt platform plugin",
    "could not load the qt platform plugin",
    "opengl",
    "glx",
    "error",
)


@dataclass(frozen=True)
class Decision:
    """Whether the GUI tests run, why, and whether their not running is an error."""

    run: bool
    reason: str
    required: bool = False


def failure_reason(returncode: int, output: str) -> str:
    """One line saying why a probe failed, from its exit status and its output."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    lowered = [line.lower() for line in lines]
    found = next(
        (lines[i] for key in _TELLING for i, low in enumerate(lowered) if key in low),
        lines[-1] if lines else "",
    )
    if returncode < 0:
        try:
            status = f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            status = f"killed by signal {-returncode}"
    elif returncode == 134:  # 128 + SIGABRT, as a shell reports it
        status = "aborted"
    else:
        status = f"exit status {returncode}"
    return f"{found} ({status})" if found else status


def decide(environ: MutableMapping[str, str], probe: Callable[[], tuple[bool, str]]) -> Decision:
    """Whether to run the GUI tests, by ``NAPARI_SAM_GUI_TESTS``, a cached answer or ``probe``.

    The probe's answer is stored in ``environ`` (``NAPARI_SAM_GUI_PROBE``), and a stored
    answer is used instead of probing again.

    Raises
    ------
    ValueError
        For a ``NAPARI_SAM_GUI_TESTS`` that is not 0, 1 or auto.
    """
    mode = environ.get(ENV_MODE, "").strip().lower() or "auto"
    if mode in ("0", "no", "false", "off"):
        return Decision(False, f"{ENV_MODE}={environ[ENV_MODE]} asks not to run them")
    if mode not in ("1", "yes", "true", "on", "auto"):
        raise ValueError(f"{ENV_MODE} must be 0, 1 or auto, not {environ[ENV_MODE]!r}")
    cached = environ.get(ENV_CACHE)
    if cached:
        usable, why = cached == OK, cached
    else:
        usable, why = probe()
        environ[ENV_CACHE] = OK if usable else why
    reason = "a napari viewer can be created" if usable else f"no usable display ({why})"
    return Decision(usable, reason, required=mode != "auto")


class BackgroundProbe:
    """Try to make a QApplication and a napari viewer in a subprocess, started early.

    :meth:`start` launches it (e.g. while the tests are collected); calling the probe waits
    for its answer, ``(usable, reason)``.
    """

    def __init__(self, env: dict[str, str] | None = None, timeout: float = TIMEOUT_S) -> None:
        self.env = env
        self.timeout = timeout
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Start the probe unless it was started already or its answer is known."""
        if self._proc is None and not (self.env or os.environ).get(ENV_CACHE):
            self._proc = subprocess.Popen(
                [sys.executable, "-c", PROBE_CODE],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=self.env,
            )

    def stop(self) -> None:
        """Kill the probe if it still runs (its answer was not needed)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.communicate()

    def __call__(self) -> tuple[bool, str]:
        self.start()
        assert self._proc is not None
        try:
            out, err = self._proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            return False, f"no napari viewer within {self.timeout:g} s"
        if self._proc.returncode == 0 and "napari-sam-gui-probe: ok" in out:
            return True, OK
        return False, failure_reason(self._proc.returncode, err + out)


def summary_lines(n_skipped: int, decision: Decision) -> list[str]:
    """The end-of-run message when GUI tests were skipped."""
    lines = [f"{n_skipped} GUI test(s) SKIPPED: {decision.reason}."]
    if not decision.reason.startswith(ENV_MODE):
        lines.append(
            "To run them on a headless Linux machine, install Xvfb and Mesa "
            f"({INSTALL_HINT}) and run `bash scripts/test.sh` (it uses xvfb-run), or run "
            "`.ci/run`, which installs them."
        )
    return lines
