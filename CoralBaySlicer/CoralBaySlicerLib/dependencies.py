"""What the engine needs inside Slicer's Python, and how to install it without breaking Slicer.

Rules (from what users of other Slicer AI extensions ran into):
- PyTorch comes only through the PyTorch extension's PyTorchUtils (it picks the CUDA build that fits
  the machine); pip must never install or replace it.
- Slicer's own numpy, SimpleITK, VTK and pydicom must never be replaced: Slicer is built against them.
  Every pip install runs with a constraints file that pins the installed versions of these, and a
  dry run (`pip install --dry-run --report`) is checked first: if pip plans to install or change any
  protected package, nothing is installed and the user gets one sentence saying which.
- Everything else is pinned to exact versions that work with Slicer 5.6 (Python 3.9, numpy 1.26,
  pydicom 2.4) and later.

Standard library only, so it runs before anything is installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

# Distributions pip must never install, upgrade or downgrade inside Slicer (normalised names).
PROTECTED = ("numpy", "simpleitk", "vtk", "pydicom", "torch")

# monai 1.5 needs torch 2.4.1 or newer.
TORCH_REQUIREMENT = ">=2.4.1"


@dataclass(frozen=True)
class Requirement:
    """A package the engine imports (`module`) and the exact pip requirement that provides it."""

    module: str
    pip: str

    @property
    def distribution(self) -> str:
        return normalize(re.split(r"[=<>!~;\[ ]", self.pip, maxsplit=1)[0])


# Pinned: each version was checked to support Python 3.9 and numpy 1.26 (Slicer 5.6) and newer.
# highdicom stays at 0.22 because later versions require pydicom 3, which would replace Slicer's.
REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("monai", "monai==1.5.1"),
    Requirement("einops", "einops==0.8.1"),
    Requirement("safetensors", "safetensors==0.5.3"),
    Requirement("highdicom", "highdicom==0.22.0"),
    Requirement("slicerio", "slicerio==1.1.2"),
    Requirement("matplotlib", "matplotlib==3.9.4"),
    Requirement("psutil", "psutil==7.0.0"),
    Requirement("tqdm", "tqdm==4.67.1"),
    Requirement("contourpy", "contourpy==1.3.0"),  # review overview (matplotlib's, imported directly)
    Requirement("maxflow", "PyMaxflow==1.3.2"),
)

# The engine commands the module runs (`commands.py`, `interactive_session.interact_argv`): the
# installer installs what these import, nothing more (scikit-image, for instance, is only
# eval-interactive's random-walker baseline, which the module never runs).
SLICER_COMMANDS = ("segment", "classify", "compare", "export", "phantom", "interact", "teach")

# Imported by the engine but shipped with Slicer itself (never installed by this module).
PROVIDED_BY_SLICER = ("numpy", "scipy", "SimpleITK", "vtk", "pydicom")


class DependencyError(RuntimeError):
    """Installing would be unsafe or is impossible (one sentence for the user)."""


def normalize(name: str) -> str:
    """A distribution name in PEP 503 normal form (case, '-', '_' and '.' do not matter)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def module_available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_requirements(requirements: Iterable[Requirement] = REQUIREMENTS,
                         available: Callable[[str], bool] = module_available) -> list[Requirement]:
    """The requirements whose module cannot be imported in this Python."""
    return [r for r in requirements if not available(r.module)]


def missing_from_slicer(available: Callable[[str], bool] = module_available) -> list[str]:
    """Modules that Slicer should ship but this Python lacks (not installed by us: reported)."""
    return [m for m in PROVIDED_BY_SLICER if not available(m)]


def torch_missing(available: Callable[[str], bool] = module_available) -> bool:
    return not available("torch")


def constraints(version_of: Callable[[str], str] = importlib.metadata.version) -> str:
    """A pip constraints file that pins every protected distribution that is installed.

    Distributions without pip metadata (Slicer's VTK, and SimpleITK in some builds) cannot be
    pinned this way; the dry-run check (`unsafe_changes`) guards them instead.
    """
    lines = []
    for name in PROTECTED:
        try:
            version = version_of(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        lines.append(f"{name}=={version}")
    return "\n".join(lines) + "\n"


def pip_install_args(requirements: Sequence[Requirement], constraints_file: str) -> list[str]:
    """What follows `pip install` for these requirements: the arguments for `slicer.util.pip_install`,
    which adds the `install` itself (Slicer 5.6-5.13)."""
    return ["--constraint", constraints_file, "--no-warn-script-location", *[r.pip for r in requirements]]


def pip_dry_run_args(install_args: Sequence[str], report_file: str) -> list[str]:
    """Arguments after `python -m pip` for a dry run of exactly `pip install <install_args>`, writing
    pip's JSON installation plan to `report_file` (checked before the real install runs)."""
    return ["install", "--dry-run", "--quiet", "--report", report_file, *install_args]


def unsafe_changes(report: dict) -> list[str]:
    """Protected distributions that a `pip install --dry-run --report` would install or change."""
    installs = report.get("install") if isinstance(report, dict) else None
    if not isinstance(installs, list):
        raise DependencyError("pip's installation plan could not be read.")
    unsafe = []
    for item in installs:
        metadata = item.get("metadata", {}) if isinstance(item, dict) else {}
        name = str(metadata.get("name", ""))
        if normalize(name) in PROTECTED:
            unsafe.append(f"{name} {metadata.get('version', '')}".strip())
    return unsafe


def check_plan(report_text: str) -> None:
    """Raise DependencyError if pip's plan (the JSON report) would touch a protected package."""
    try:
        report = json.loads(report_text)
    except json.JSONDecodeError:
        raise DependencyError("pip's installation plan could not be read.") from None
    unsafe = unsafe_changes(report)
    if unsafe:
        raise DependencyError(
            "Installing CoralBay's packages would replace Slicer's own " + ", ".join(unsafe)
            + "; nothing was installed (please report this with your Slicer version).")


def gpu_summary(torch) -> str:
    """One sentence on the compute device PyTorch found (given the imported torch module)."""
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"GPU found: {', '.join(names)} (CUDA {torch.version.cuda}); CoralBay will use it."
    mps = getattr(getattr(torch, "backends", None), "mps", None)
    if mps is not None and mps.is_available():
        return "Apple GPU (MPS) found; CoralBay will use it."
    return ("No GPU found: CoralBay will run on the CPU, which takes minutes per scan "
            "(choose a smaller region, or install a CUDA build of PyTorch with the PyTorch Utils module).")
