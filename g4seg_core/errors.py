"""The project's error types. A `UserError` is the user's mistake: bad input, a setting that cannot
be used, a file that is missing. It is reported as one line (the CLI exits 2, the server answers
4xx). Any other exception is a bug and surfaces as one (a traceback, an HTTP 500), so tests can
tell the two apart.
"""
from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message says what and how, in one line."""


class SettingError(UserError):
    """A setting, option or environment variable with a value that cannot be used."""


class PromptError(UserError):
    """A rough shape that cannot be used (empty, degenerate, outside the image, wrong size)."""


class ImageError(UserError):
    """An image or mask that cannot be read or used."""


class ImageTooLargeError(ImageError):
    """An image over a size limit (pixels or bytes): refused before it is decoded."""


class WeightsNotFoundError(UserError):
    """Model weights that cannot be found or are not in safetensors; the message says where we looked."""


class DataError(UserError):
    """A dataset (for `g4seg bench`) that cannot be read as specified."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line for a message: whitespace folded, an HTTP status first when
    the exception carries one (the Label Studio SDK's `ApiError`), the type's name when it says nothing."""
    status = getattr(exc, "status_code", None)
    text = f"HTTP {status}: {getattr(exc, 'body', '')}" if status is not None else str(exc)
    return " ".join(text.split())[:limit] or type(exc).__name__
