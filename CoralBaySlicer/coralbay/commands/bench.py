"""`coralbay bench`: the benchmark harness's command, found through the entry-point group
"coralbay.commands" (benchmarks/pyproject.toml declares it); a stub that says where it is otherwise.

Why an entry point: the harness times our path against MONAI's and pulls in benchmark-only code
that a Slicer or pip install does not need, so it is not part of the engine's wheel; and the
engine must not import it by name (an import that would run up out of the engine). The harness
registers itself where it is installed (`pip install ./benchmarks`) or on the path (a checkout with
benchmarks/ on PYTHONPATH, whose `coralbay_bench.dist-info` carries the same entry point).
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from typing import Callable, Optional

from coralbay.errors import UsageError

ENTRY_POINT_GROUP = "coralbay.commands"
HARNESS_MISSING = ("The benchmark harness is not installed: install it with `pip install ./benchmarks` from a "
                   "checkout, or put benchmarks/ on PYTHONPATH (see docs/benchmarks.md).")


def harness_register() -> Optional[Callable[[argparse._SubParsersAction], None]]:
    """The harness's `register(subparsers)`, or None when no importable harness declares "bench"."""
    found = metadata.entry_points()
    group = found.select(group=ENTRY_POINT_GROUP) if hasattr(found, "select") else found.get(ENTRY_POINT_GROUP, [])
    for entry in group:
        if entry.name == "bench":
            try:
                return entry.load()
            except ImportError:  # declared, but its package is not importable here
                return None
    return None


def register(subparsers: argparse._SubParsersAction) -> None:
    register_harness = harness_register()
    if register_harness is not None:
        register_harness(subparsers)
        return
    # No options of its own (prefix "\0" matches nothing): whatever follows, the one sentence.
    p = subparsers.add_parser("bench", help="benchmark against the plain MONAI path (needs the harness)",
                              description=HARNESS_MISSING, add_help=False, prefix_chars="\0")
    p.add_argument("arguments", nargs="*")
    p.set_defaults(run=_missing, help_text=p.format_help())


def _missing(args: argparse.Namespace) -> int:
    if args.arguments[:1] in (["-h"], ["--help"]):  # the help still works: it says how to get the harness
        sys.stdout.write(args.help_text)
        return 0
    raise UsageError(HARNESS_MISSING)
