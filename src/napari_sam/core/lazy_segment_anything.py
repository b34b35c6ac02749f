"""segment_anything's network classes without its package ``__init__`` (so without torchvision).

``segment_anything/__init__.py`` imports the predictor and the automatic mask generator, which
import torchvision; torchvision imports ``torch._dynamo`` (and with it triton on Linux): seconds
of start-up on a laptop (10 s measured on a busy 2-core machine) before the first mask, for
nothing that building, loading or running the network needs. :func:`prepare` registers the
package in ``sys.modules`` without running its ``__init__``; the ``__init__`` runs, once, the
first time one of the package's own attributes is asked for (``from segment_anything import
SamPredictor``, ``segment_anything.sam_model_registry``), so every other use of the package
behaves as before. Submodules (``segment_anything.modeling``, ``segment_anything.utils.amg``)
import as usual.

Call :func:`prepare` before importing anything from ``segment_anything``.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from types import ModuleType

__all__ = ["prepare"]

_NAME = "segment_anything"
_LOCK = threading.RLock()


def prepare() -> None:
    """Register ``segment_anything`` uninitialised, unless it is imported already (or absent)."""
    if _NAME in sys.modules:
        return
    with _LOCK:
        if _NAME in sys.modules:
            return
        spec = importlib.util.find_spec(_NAME)
        if spec is None or spec.loader is None:
            return  # not installed: the import that follows says so
        module = importlib.util.module_from_spec(spec)
        module.__getattr__ = _initialiser(module)  # type: ignore[method-assign]
        sys.modules[_NAME] = module


def _initialiser(module: ModuleType):
    """A module ``__getattr__`` that runs the package's ``__init__`` once, then looks again."""
    done = []

    def __getattr__(name: str):
        with _LOCK:
            if not done:
                done.append(True)
                module.__spec__.loader.exec_module(module)  # type: ignore[union-attr]
                if name in module.__dict__:
                    return module.__dict__[name]
        raise AttributeError(f"module {_NAME!r} has no attribute {name!r}")

    return __getattr__
