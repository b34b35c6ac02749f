"""Exceptions raised by the core, each carrying a message meant for the user."""


class NapariSamError(Exception):
    """Base class of all errors napari-sam reports to users (GUI notification, CLI line)."""


class CheckpointError(NapariSamError):
    """A checkpoint is missing, corrupt, truncated, of the wrong type or cannot be downloaded."""


class ImageError(NapariSamError):
    """An image cannot be turned into SAM input (wrong shape, channel axis, ...)."""


class PromptError(NapariSamError):
    """Prompts are malformed (wrong shape, outside the image, no prompt at all, ...)."""


class DeviceError(NapariSamError):
    """The requested compute device is not available."""


class Cancelled(NapariSamError):
    """Long work was cancelled by the user."""


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """An exception's text on one line, cut to ``limit`` characters, for a user message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
