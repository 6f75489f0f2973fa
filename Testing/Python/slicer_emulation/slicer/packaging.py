"""EMULATES Base/Python/slicer/packaging.py `pip_install` (Slicer 5.13; not in slicer-core, whose
REAL `slicer.util.pip_install` delegates to it). As in Slicer 5.6-5.13 (`slicer.util.pip_install`
there), the command run is `PythonSlicer -m pip install <requirements> [-c constraints]`: Slicer adds
the `install` itself, so callers pass only what follows it. A string is split like a shell (shlex).

Nothing is installed here: each command that Slicer would run is appended to `commands`.
"""

from __future__ import annotations

import shlex

commands: list[list[str]] = []  # every pip command line (after `-m pip`) that Slicer would run


def pip_install(requirements, constraints=None, no_deps_requirements=None, skip_packages=None, blocking=True,
                show_progress=True, requester=None, parent=None, logCallback=None, completedCallback=None):
    if isinstance(requirements, str):
        args = ["install", *shlex.split(requirements)]
    elif isinstance(requirements, list):
        args = ["install", *requirements]
    else:
        raise ValueError("pip_install requirement input must be string or list")
    if constraints is not None:
        args += ["-c", str(constraints)]
    commands.append(args)
