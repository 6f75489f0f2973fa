"""Random draws that are a function of what they are about, never of what was drawn before.

Why: a session used to share one generator for every draw (weak negatives, box-outside samples,
example rows), so a draw depended on how many draws came before it: a restarted engine that
restored an accepted structure from disk instead of replaying its clicks drew differently, and
its answers moved by a few voxels (issue 25). A generator keyed by (seed, what, which) gives the
same draw for the same thing in any process, after any history.
"""

from __future__ import annotations

import hashlib

import numpy as np


def keyed_rng(seed: int, *keys: object) -> np.random.Generator:
    """A generator determined by `seed` and the keys (strings, numbers), stable across processes
    (sha256 of their text, not Python's salted `hash`)."""
    digest = hashlib.sha256(repr((int(seed), *[str(k) for k in keys])).encode()).digest()
    return np.random.default_rng([int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)])
