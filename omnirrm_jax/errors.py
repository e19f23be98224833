"""The exception for input a user can fix: a missing file, an unknown key or value, the wrong kind of folder.

Why one type: `omnirrm` (cli.main) prints any `UserError` as one line, `omnirrm <command>: error: <message>`, and
exits 2, while every other exception is a bug and keeps its traceback. A library function that refuses bad input
raises a `UserError` (or a subclass), with a message that names the file, key or value and says what to do.
Pure Python with no project imports, so every layer may raise it (docs/ARCHITECTURE.md).
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input a user can fix; the message names the file, key or value and what to do instead."""


class MissingPathError(UserError, FileNotFoundError):
    """A path the user gave (a data glob, tokenizer, checkpoint, workdir) is not there."""
