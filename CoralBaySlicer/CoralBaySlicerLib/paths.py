"""Where the module's resources are, in the source tree and in an installed extension.

In the repository, `Resources/` sits beside the `CoralBaySlicer/` folder (the module and the engine
share it); in an installed extension, CMake places `Resources/` beside `CoralBaySlicer.py` (see the
top-level CMakeLists.txt). The module looks in both places, so it also runs straight from a clone
(Slicer's "additional module paths" pointing at `CoralBaySlicer/`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union


def resources_dir(module_dir: Union[str, os.PathLike]) -> Path:
    """The Resources folder for a module file in `module_dir` (installed layout first)."""
    module_dir = Path(module_dir)
    for candidate in (module_dir / "Resources", module_dir.parent / "Resources"):
        if (candidate / "UI").is_dir():
            return candidate
    raise FileNotFoundError(f"The CoralBay module's Resources folder was not found beside {module_dir}.")


def engine_dir(module_dir: Union[str, os.PathLike]) -> Path:
    """The folder that holds the `coralbay` engine package (beside the module file in both layouts)."""
    module_dir = Path(module_dir)
    if not (module_dir / "coralbay" / "__init__.py").is_file():
        raise FileNotFoundError(f"The CoralBay engine package was not found beside {module_dir}.")
    return module_dir
