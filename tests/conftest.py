"""Shared fixtures: a small SAM with random weights and the real 1024 / 64 / 256 geometry.

Also decides, once per session, whether the GUI tests can run (see ``display_probe``): on a
machine without a usable display they are skipped with a loud summary instead of Qt aborting
the whole run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from display_probe import BackgroundProbe, Decision, decide, summary_lines

from napari_sam.core.architecture import SamArchitecture

# precision "auto" follows a calibration of the machine (docs/performance.md): the suite's
# results must not, so it runs float32 unless told otherwise. test_precision.py tests "auto".
os.environ.setdefault("NAPARI_SAM_PRECISION", "fp32")

GUI_DIR = Path(__file__).parent / "gui"
#: Fixtures that create a QApplication: a test using one is a GUI test wherever it lives.
QT_FIXTURES = ("qapp", "qtbot", "make_napari_viewer", "make_napari_viewer_proxy")

_probe = BackgroundProbe()
_skipped = pytest.StashKey[tuple[int, Decision]]()


def is_gui_test(item: pytest.Item) -> bool:
    """Under tests/gui, marked ``gui``, or using a fixture that makes a QApplication."""
    return (
        GUI_DIR in Path(item.path).parents
        or item.get_closest_marker("gui") is not None
        or any(name in QT_FIXTURES for name in getattr(item, "fixturenames", ()))
    )


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> None:
    # Probe the display while the GUI test modules are imported (torch, napari: seconds).
    if GUI_DIR in file_path.parents and file_path.suffix == ".py":
        _probe.start()


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: probe only for tests that run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gui = [item for item in items if is_gui_test(item)]
    if not gui:
        return
    try:
        decision = decide(os.environ, _probe)
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    if decision.run:
        return
    if decision.required:
        raise pytest.UsageError(
            f"GUI tests are required (NAPARI_SAM_GUI_TESTS=1) but cannot run: "
            f"{decision.reason}. {summary_lines(len(gui), decision)[-1]}"
        )
    skip = pytest.mark.skip(reason=f"GUI test: {decision.reason}")
    for item in gui:
        item.add_marker(skip)
    config.stash[_skipped] = (len(gui), decision)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    skipped = config.stash.get(_skipped, None)
    if skipped is None:
        return
    terminalreporter.write_sep("!", "GUI tests SKIPPED", red=True, bold=True)
    for line in summary_lines(*skipped):
        terminalreporter.write_line(line, red=True, bold=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    _probe.stop()


#: Tiny encoder and decoder, but official geometry (1024 input, 64x64 embedding, 256 masks).
SMALL_ARCH = SamArchitecture(
    32,
    2,
    2,
    (1,),
    prompt_embed_dim=32,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
)


@pytest.fixture(scope="session")
def small_arch() -> SamArchitecture:
    return SMALL_ARCH


@pytest.fixture(scope="session")
def small_model(small_arch):
    """Random-weight SAM, built once per test session (building takes about a second).

    While it is in use torch runs on one thread: the network is so small that thread
    start-up and contention cost more than they save (on a busy 2-core machine a prompt took
    0.6 s with 2 threads and 0.01 s with 1).
    """
    import torch

    from napari_sam.core.checkpoints import random_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield random_model(small_arch, device="cpu", seed=0)
    finally:
        torch.set_num_threads(threads)


def blob_image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A uint8 (H, W, 3) image with a bright rectangle and a dim disc on a noisy background."""
    h, w = shape
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 40, (h, w), dtype=np.uint8)
    img[h // 8 : h // 2, w // 8 : w // 2] = 220
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - 0.7 * h) ** 2 + (xx - 0.7 * w) ** 2 < (0.15 * min(h, w)) ** 2
    img[disc] = 140
    return np.ascontiguousarray(np.repeat(img[..., None], 3, axis=2))


@pytest.fixture(scope="session")
def make_image():
    return blob_image


@pytest.fixture(scope="session")
def tiny_engine():
    """The bundled tiny model (real SAM geometry; under-trained, see docs/tiny-model.md)."""
    import torch

    from napari_sam.core.engine import SamEngine
    from napari_sam.core.registry import MODELS

    path = MODELS["tiny"].bundled_path
    if path is None or not path.is_file():
        pytest.fail(f"the bundled tiny model is missing ({path}); train or restore it")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield SamEngine.from_name("tiny", device="cpu")
    finally:
        torch.set_num_threads(threads)
