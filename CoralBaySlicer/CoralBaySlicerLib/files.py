"""Deliver a finished engine output from the run's private folder to where the user wants it.

Why not let the engine write there directly: a cancelled run is killed at once, and must leave no
file behind; everything the engine writes therefore stays inside the run's folder (removed on
cancel), and only complete outputs are copied out, each under a temporary name that is renamed
into place (via the engine's `coralbay.atomic`), so the target is either the old file or the new one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Union

from coralbay.atomic import atomic_dir, atomic_file

PathLike = Union[str, os.PathLike]


def deliver(source: PathLike, target: PathLike) -> Path:
    """Copy a file or folder to `target` atomically (replacing what was there); return `target`."""
    source, target = Path(source), Path(target)
    if not source.exists():
        raise FileNotFoundError(f"The engine did not write {source.name}.")
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        with atomic_dir(target) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
    else:
        with atomic_file(target) as tmp:
            shutil.copyfile(source, tmp)
    return target
