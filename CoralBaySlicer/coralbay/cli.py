"""The `coralbay` command line: one sub-command per module in `coralbay.commands`.

Exit codes: 0 success; 1 any failure (one sentence on stderr, and an "error" event with
`--progress jsonl`); 2 a usage error (a missing optional package included); 130 interrupted;
141 the reader of stdout went away (`| head`), quietly as Unix tools do. Set CORALBAY_DEBUG=1 for tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import Sequence

from coralbay import __version__
from coralbay.commands._common import EPILOG
from coralbay.errors import ConfirmationNeeded, CoralBayError
from coralbay.progress import encode_event

# Each module defines `register(subparsers)`, which adds its parser and sets `run=callable(args)`.
# Modules import their heavy dependencies (torch, MONAI) inside `run`, so `--help` stays fast.
COMMAND_MODULES = ("info", "models", "segment", "classify", "compare", "export", "phantom", "train", "bench", "demo",
                   "batch", "interact", "eval_interactive", "teach", "serve")

EXIT_STDOUT_CLOSED = 141  # 128 + SIGPIPE, what a shell reports for `yes | head`


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 2 and a one-line message for usage errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"coralbay: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="coralbay", description=(
        "CoralBay CT foundation model: segment and classify CT volumes, compare with ground "
        "truth, export masks."), epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"coralbay {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"coralbay.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"coralbay.commands.{name}":
                continue  # command not part of this build
            raise
        module.register(subparsers)
    return parser


def _sleep_idle_openmp_threads() -> None:
    """Idle OpenMP threads sleep instead of spinning between parallel regions.

    Why: on a CPU shared with other work a spinning thread holds the core its partner needs, and
    the lean forward's many short kernels pay for that at every region (one U96B window on 2 busy
    cores, ours: 18.0 s of CPU spinning, 7.2 s passive; MONAI's forward: 17.9 s and 14.3 s). Only
    effective before PyTorch loads its OpenMP runtime (commands import torch inside `run`, so it
    holds for `coralbay` and `python -m coralbay`); a value the user set wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: Sequence[str] | None = None) -> int:
    _sleep_idle_openmp_threads()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return 2
    jsonl = getattr(args, "progress", None) == "jsonl"
    try:
        result = args.run(args)
        return int(result or 0)
    except CoralBayError as exc:
        return _fail(str(exc), exc.exit_code, jsonl, needs_confirmation=isinstance(exc, ConfirmationNeeded))
    except KeyboardInterrupt:
        return _fail("Interrupted.", 130, jsonl)
    except BrokenPipeError:
        return _stdout_closed()
    except MemoryError:
        return _fail("Out of memory: try a smaller --roi, a lower --overlap or a smaller window batch.", 1, jsonl)
    except Exception as exc:  # noqa: BLE001 - last line of defence: one sentence, not a traceback
        if os.environ.get("CORALBAY_DEBUG"):
            traceback.print_exc()
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _fail(f"Unexpected error ({type(exc).__name__}: {detail[:300]}); "
                     "run with CORALBAY_DEBUG=1 for details.", 1, jsonl)


def _stdout_closed() -> int:
    """The reader of our output went away (`coralbay ... --json | head`): stop quietly, as Unix
    tools do, with the status a shell reports for them (128 + SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
    except (OSError, ValueError):
        pass
    return EXIT_STDOUT_CLOSED


def _fail(message: str, code: int, jsonl: bool, needs_confirmation: bool = False) -> int:
    if jsonl:
        extra = {"needs_confirmation": True} if needs_confirmation else {}
        print(encode_event("error", message=message, exit_code=code, **extra), flush=True)
    print(f"coralbay: error: {message}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
