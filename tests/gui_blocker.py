"""Make importing napari or any Qt binding fail, as on a machine without a GUI stack.

Used by ``tests/core/conftest.py`` (``NAPARI_SAM_BLOCK_QT=1``) and by the wheel test, which
runs the installed command line in a fresh environment with these imports blocked.
"""

from __future__ import annotations

import importlib.abc
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


def block_gui_imports() -> None:
    """From now on, importing a module of :data:`BLOCKED` raises ImportError.

    Raises
    ------
    RuntimeError
        When one of them was imported already (blocking would prove nothing).
    """
    already = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    if already:
        raise RuntimeError(f"GUI modules were imported before they were blocked: {already}")
    sys.meta_path.insert(0, _Blocker())
