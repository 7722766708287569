"""Errors that reach the user as a message and an exit status, never a traceback."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CovidctError", "InputError", "OutputError"]


class CovidctError(Exception):
    """Base class of the errors that the command line reports without a traceback.

    Args:
        message: What is wrong, with the value that is wrong.
        path: The file or folder concerned, if any.
        hint: What the user can do next.
    """

    exit_code = 1

    def __init__(
        self, message: str, path: str | Path | None = None, hint: str | None = None
    ) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = self.message if self.path is None else f"{self.path}: {self.message}"
        if self.hint:
            text += f"\n  What to do: {self.hint}"
        return text


class InputError(CovidctError):
    """The input study cannot be used: not a CT, too few slices, unreadable, ..."""

    exit_code = 2


class OutputError(CovidctError):
    """The output folder cannot be created or written."""

    exit_code = 2
