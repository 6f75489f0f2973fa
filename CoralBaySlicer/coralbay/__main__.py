"""Allows `python -m coralbay ...` (used by Slicer's PythonSlicer and by the tests)."""

import os
import sys

# Idle OpenMP threads sleep instead of spinning between parallel regions. On a CPU shared with
# other work a spinning thread holds the core its partner needs, and the lean forward's many
# short kernels pay for that at every region (one U96B window on 2 busy cores, ours: 18.0 s of
# CPU spinning, 7.2 s passive; MONAI's forward: 17.9 s and 14.3 s). It must be set before PyTorch
# loads its OpenMP runtime; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from coralbay.cli import main  # noqa: E402  (after the OpenMP setting)

sys.exit(main())
