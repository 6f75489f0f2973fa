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


class ConfirmationNeeded(CoralBayError):
    """A run the user must confirm before it starts, e.g. one estimated longer than a minute (exit
    code 1). Its JSON-lines error event says `needs_confirmation`, so a program (the Slicer panel)
    can ask the user and run again with the confirming option instead of parsing the sentence."""


class DeviceError(CoralBayError):
    """The requested compute device is not available."""


class MissingPackageError(UsageError):
    """A feature the user asked for needs an optional package that is not installed (exit 2)."""


# The optional packages (top-level module -> the pyproject.toml extra that installs them). Every
# other third-party module the engine imports is a core dependency (test_dependencies checks).
OPTIONAL_EXTRAS = {"dask": "batch", "distributed": "batch", "pyarrow": "batch",
                   "huggingface_hub": "hub", "transformers": "hub",
                   "starlette": "serve", "uvicorn": "serve", "cryptography": "serve"}


def import_optional(module: str, feature: str):
    """Import `module` for `feature`, or raise one sentence naming the extra that installs it.

    Why one helper: every optional feature then fails the same way, with the install command,
    instead of an "Unexpected error (ModuleNotFoundError ...)" deep inside a run.
    """
    import importlib

    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackageError(f"{feature} needs the optional package {top}, which is not installed: "
                                  f"pip install \"coralbay[{OPTIONAL_EXTRAS[top]}]\".") from None
