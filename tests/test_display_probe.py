"""The decision whether GUI tests run (tests/display_probe.py), without needing a display."""

from __future__ import annotations

import os
import sys

import pytest
from display_probe import (
    ENV_CACHE,
    ENV_MODE,
    OK,
    BackgroundProbe,
    decide,
    failure_reason,
    summary_lines,
)

QT_ABORT = """\
qt.qpa.xcb: could not connect to display :0
qt.qpa.plugin: From 6.5.0, xcb-cursor0 or libxcb-cursor0 is needed to load the Qt xcb plugin.
This application failed to start because no Qt platform plugin could be initialized.
"""


class Probe:
    """A fake probe that counts its calls."""

    def __init__(self, usable: bool, reason: str = OK) -> None:
        self.answer = (usable, reason)
        self.calls = 0

    def __call__(self) -> tuple[bool, str]:
        self.calls += 1
        return self.answer


def test_auto_probes_once_and_caches_the_answer():
    env: dict[str, str] = {}
    probe = Probe(False, "qt.qpa.xcb: could not connect to display (aborted)")
    decision = decide(env, probe)
    assert not decision.run and not decision.required
    assert (
        decision.reason == "no usable display (qt.qpa.xcb: could not connect to display (aborted))"
    )
    assert env[ENV_CACHE] == "qt.qpa.xcb: could not connect to display (aborted)"
    assert decide(env, probe) == decision and probe.calls == 1
    ok = decide({}, Probe(True))
    assert ok.run and ok.reason == "a napari viewer can be created"
    assert decide({ENV_CACHE: OK}, Probe(False, "never asked")).run


def test_mode_0_skips_without_probing_and_1_requires():
    never = Probe(True)
    decision = decide({ENV_MODE: "0"}, never)
    assert not decision.run and never.calls == 0
    assert summary_lines(3, decision) == [
        "3 GUI test(s) SKIPPED: NAPARI_SAM_GUI_TESTS=0 asks not to run them."
    ]
    required = decide({ENV_MODE: "1"}, Probe(False, "no GL"))
    assert required.required and not required.run
    with pytest.raises(ValueError, match="must be 0, 1 or auto, not 'maybe'"):
        decide({ENV_MODE: "maybe"}, never)


def test_summary_says_what_to_install():
    lines = summary_lines(44, decide({}, Probe(False, "x")))
    assert lines[0] == "44 GUI test(s) SKIPPED: no usable display (x)."
    assert "apt-get install xvfb" in lines[1] and "scripts/test.sh" in lines[1]


def test_failure_reason_picks_the_telling_line():
    assert (
        failure_reason(-6, QT_ABORT)
        == "qt.qpa.xcb: could not connect to display :0 (killed by SIGABRT)"
    )
    assert failure_reason(134, "Traceback\nRuntimeError: boom\n") == "RuntimeError: boom (aborted)"
    assert failure_reason(1, "") == "exit status 1"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X11 displays are Linux's")
def test_real_probe_of_a_missing_display_fails_without_killing_pytest():
    env = {k: v for k, v in os.environ.items() if k not in (ENV_CACHE, "WAYLAND_DISPLAY")}
    env.update(DISPLAY=":98765", QT_QPA_PLATFORM="xcb")
    usable, reason = BackgroundProbe(env=env)()
    assert not usable
    assert "could not connect to display :98765" in reason
