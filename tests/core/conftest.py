"""Core tests: with NAPARI_SAM_BLOCK_QT=1, importing napari or any Qt binding fails.

CI runs ``tests/core`` that way, proving the core works on a machine without a GUI stack.
"""

from __future__ import annotations

import importlib.abc
import os
import sys

BLOCKED = (
    "napari",
    "qtpy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "magicgui",
    "superqt",
    "vispy",
)


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ImportError(f"{fullname} is blocked: the napari-sam core must not need it")
        return None


if os.environ.get("NAPARI_SAM_BLOCK_QT") == "1":
    already = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    if already:
        raise RuntimeError(f"GUI modules were imported before the core tests ran: {already}")
    sys.meta_path.insert(0, _Blocker())
