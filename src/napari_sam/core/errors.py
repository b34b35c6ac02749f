"""Exceptions raised by the core, each carrying a message meant for the user."""

__all__ = [
    "Cancelled",
    "CheckpointError",
    "DeviceError",
    "EmbeddingStoreError",
    "ImageError",
    "LabelIdError",
    "NapariSamError",
    "PromptError",
    "SessionError",
    "exception_line",
]


class NapariSamError(Exception):
    """Base class of all errors napari-sam reports to users (GUI notification, CLI line).

    Parameters
    ----------
    message : str
        What went wrong, worded for any user.
    cli_hint : str, optional
        What to do about it on the command line ("pass --checkpoint PATH"); part of
        ``str(error)``, which is what the CLI prints.
    gui_hint : str, optional
        What to do about it in the napari widget ("choose 'custom checkpoint file…'"); see
        :meth:`for_gui`.
    folder : str, optional
        A folder the user may need to open (e.g. where a checkpoint should be put).
    """

    def __init__(
        self,
        message: str = "",
        *,
        cli_hint: str | None = None,
        gui_hint: str | None = None,
        folder: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.cli_hint = cli_hint
        self.gui_hint = gui_hint
        self.folder = folder

    def __str__(self) -> str:
        return f"{self.message}; {self.cli_hint}" if self.cli_hint else self.message

    def for_gui(self) -> str:
        """The message with the widget's hint instead of the command line's."""
        return f"{self.message}; {self.gui_hint}" if self.gui_hint else self.message


class CheckpointError(NapariSamError):
    """A checkpoint is missing, corrupt, truncated, of the wrong type or cannot be downloaded."""


class ImageError(NapariSamError):
    """An image cannot be turned into SAM input (wrong shape, channel axis, ...)."""


class PromptError(NapariSamError):
    """Prompts are malformed (wrong shape, outside the image, no prompt at all, ...)."""


class DeviceError(NapariSamError):
    """The requested compute device is not available."""


class EmbeddingStoreError(NapariSamError):
    """An on-disk embedding store was made differently (model, tiles, ...) or is damaged."""


class Cancelled(NapariSamError):
    """Long work was cancelled by the user."""


class LabelIdError(NapariSamError):
    """New label ids do not fit the integer type of the labels they go into."""


class SessionError(NapariSamError):
    """A session file is corrupt, of an unknown or newer format, or does not fit the image."""


def exception_line(exc: BaseException) -> str:
    """One line describing ``exc`` for a user message: its first message line, or its type
    name when it has no message (``FileNotFoundError()``)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """An exception's text on one line, cut to ``limit`` characters, for a user message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
