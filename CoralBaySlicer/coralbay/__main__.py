"""Allows `python -m coralbay ...` (used by Slicer's PythonSlicer and by the tests)."""

import sys

from coralbay.cli import main

sys.exit(main())
