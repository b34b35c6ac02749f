"""Errors and notices as GUI users read them (never a traceback, never a CLI flag)."""

from __future__ import annotations

import logging

from napari.utils.notifications import show_error

from ..core.errors import Cancelled, NapariSamError

log = logging.getLogger(__name__)


def _is_cuda_oom(error: BaseException) -> bool:
    name = type(error).__name__
    return name == "OutOfMemoryError" or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


def gui_text(error: BaseException, what: str) -> str:
    """One message for ``error``, which happened while doing ``what``, worded for the widget."""
    if isinstance(error, NapariSamError):
        return error.for_gui()
    if _is_cuda_oom(error):
        return (
            f"{what}: the GPU ran out of memory. Choose device 'cpu', a smaller model "
            "(vit_b instead of vit_h), or close other programs using the GPU."
        )
    if isinstance(error, MemoryError):
        return (
            f"{what}: not enough memory. Close other programs or layers, or use a smaller "
            "image or model."
        )
    return f"{what} ({type(error).__name__}: {error})"


def report(error: BaseException, what: str) -> str:
    """Notify the user of ``error`` once and return the text (for the status line).

    Cancellations are not errors: they are only returned, for the status line. Unexpected
    errors are also logged with their traceback, for bug reports.
    """
    if isinstance(error, Cancelled):
        return str(error).capitalize() + "."
    text = gui_text(error, what)
    if not isinstance(error, NapariSamError) and not isinstance(error, MemoryError):
        log.error("napari-sam: %s", what, exc_info=error)
    show_error(text if isinstance(error, NapariSamError) else f"napari-sam: {text}")
    return f"Error: {text}"
