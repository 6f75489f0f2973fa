"""`coralbay bench`: present only where the benchmark harness (`benchmarks/coralbay_bench` of a
checkout) is importable; the installed engine does not ship it.

Why a stub: the harness times our path against MONAI's and pulls in benchmark-only code that a
Slicer or pip install does not need; the command name stays so `coralbay bench` says where it is.
"""

from __future__ import annotations

import argparse

from coralbay.errors import UsageError

try:
    from coralbay_bench.command import register as _register_harness
except ModuleNotFoundError as exc:
    if exc.name != "coralbay_bench":
        raise
    _register_harness = None

HARNESS_MISSING = ("The benchmark harness is not installed: run `coralbay bench` from a checkout with "
                   "benchmarks/ on PYTHONPATH (see docs/benchmarks.md).")


def register(subparsers: argparse._SubParsersAction) -> None:
    if _register_harness is not None:
        _register_harness(subparsers)
        return
    # No options of its own (prefix "\0" matches nothing): whatever follows, the one sentence.
    p = subparsers.add_parser("bench", help="benchmark against the plain MONAI path (needs a checkout)",
                              description=HARNESS_MISSING, add_help=False, prefix_chars="\0")
    p.add_argument("arguments", nargs="*")
    p.set_defaults(run=_missing)


def _missing(args: argparse.Namespace) -> int:
    raise UsageError(HARNESS_MISSING)
