"""The project's own error types. The CLI prints any of them as one line, `error: <message>`, exit 2.

Every message starts with what is wrong where: a file (and line or key) for bad input, the recipe field
for a bad setting. They also derive from ValueError, so library callers can catch them the usual way.
"""
from __future__ import annotations


def first_line(e: BaseException, limit: int = 200) -> str:
    """A foreign exception's message cut to its first line (or its type's name when it has none), to
    quote inside one of ours."""
    lines = str(e).strip().splitlines()
    return lines[0][:limit] if lines else type(e).__name__


class TinyrmError(ValueError):
    """Base of every error a user can cause and fix (bad data, checkpoint, recipe, missing file)."""


class CheckpointError(TinyrmError):
    """A checkpoint or adapter folder that cannot be loaded; the message names the file and the key."""


class RecipeError(TinyrmError):
    """A recipe or command-line setting that cannot be used; the message names the file and the key."""


class TrainingDiverged(TinyrmError):
    """Training met a non-finite loss or gradient in max_bad_steps optimiser steps in a row; names the step."""


class MissingData(TinyrmError):
    """A data file a command needs is absent; the message names it and the command that fetches it."""


class DataError(TinyrmError):
    """A malformed row; the message starts with `file:line` and `reason` is a short category."""

    def __init__(self, path, line: int, reason: str, detail: str = ""):
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__(f"{path}:{line}: {reason}" + (f" ({detail})" if detail else ""))
