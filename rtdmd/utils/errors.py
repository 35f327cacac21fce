"""Errors that end a run on purpose, each with a message that says what to do next."""

from __future__ import annotations

__all__ = ['RunDirError', 'TrainingStopped']


class TrainingStopped(RuntimeError):
    """Training was stopped to protect the run (non-finite steps, a failed checkpoint write).

    The message names the cause and the last good checkpoint; ``tools/train.py`` prints it and
    exits with a non-zero status.
    """


class RunDirError(RuntimeError):
    """A work dir or checkpoint cannot be used as asked (another run, another config, corrupt)."""
