"""`coralbay eval-interactive` with Slicer's Grow from seeds baseline available (needs slicer-core).

Run from the repository root, with the arguments of `coralbay eval-interactive`:
    PYTHONPATH=CoralBaySlicer:benchmarks python benchmarks/interactive/eval_with_slicer.py CT LABELS --model M --json OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grow_from_seeds import register  # noqa: E402


def main(argv: list[str]) -> int:
    from coralbay.cli import main as coralbay_main

    try:
        register()
    except ImportError as error:
        print(f"Slicer's Grow from seeds needs slicer-core (pip install 'coralbay[eval]'): {error}", file=sys.stderr)
        return 1
    return coralbay_main(["eval-interactive", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
