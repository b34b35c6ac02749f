"""Core tests: with NAPARI_SAM_BLOCK_QT=1, importing napari or any Qt binding fails.

CI runs ``tests/core`` that way, proving the core works on a machine without a GUI stack.
"""

from __future__ import annotations

import os

from gui_blocker import block_gui_imports

if os.environ.get("NAPARI_SAM_BLOCK_QT") == "1":
    block_gui_imports()
