"""Closing napari while the widget works exits cleanly, in every busy state.

Each case runs napari in a subprocess (tests/gui/close_scenarios.py) so that an abort (exit
134, "wrapped C/C++ object ... has been deleted") fails the test instead of killing pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("close_scenarios.py")


def _run(state: str, how: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "NAPARI_SAM_MODEL": "tiny",
        "NAPARI_SAM_CACHE": str(tmp_path / "cache"),
        "NAPARI_SAM_BASE_URL": "http://127.0.0.1:9/nothing-here",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT), state, how],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("state", "how"),
    [
        ("samples", "viewer"),  # the five samples opened, closed at once (the reported crash)
        ("samples", "window"),
        ("download", "window"),
        ("model", "viewer"),
        ("embedding", "window"),
        ("preview", "window"),
        ("propagate", "window"),
        ("embed_all", "viewer"),  # Embed all slices running in the background
        ("tiles", "window"),  # a click's tile of a dask plane being embedded
        ("auto", "viewer"),
    ],
)
def test_closing_napari_while_busy_exits_cleanly(state, how, tmp_path):
    result = _run(state, how, tmp_path)
    output = result.stdout + result.stderr
    assert f"closing in state {state}" in result.stdout, output[-3000:]
    assert result.returncode == 0, output[-3000:]
    assert "CLEAN EXIT" in result.stdout, output[-3000:]
    for bad in ("Traceback", "has been deleted", "Error"):
        assert bad not in result.stderr, result.stderr[-3000:]
