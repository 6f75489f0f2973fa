"""Error types that the command line turns into one sentence on stderr and an exit code.

Why: users of a batch tool need a clear sentence and a reliable exit code, never a traceback as
the only message. Every module raises these for conditions caused by the input or environment.
"""

from __future__ import annotations


class CoralBayError(Exception):
    """A failure caused by the input, the model files or the environment (exit code 1)."""

    exit_code = 1


class UsageError(CoralBayError):
    """The command line itself is wrong: a missing or malformed option (exit code 2)."""

    exit_code = 2


class InputError(CoralBayError):
    """An input file or folder cannot be used (missing, unreadable, not a 3D scalar volume...)."""


class BundleError(CoralBayError):
    """A model bundle is missing, malformed, tampered with, or does not fit its architecture."""


class DeviceError(CoralBayError):
    """The requested compute device is not available."""
