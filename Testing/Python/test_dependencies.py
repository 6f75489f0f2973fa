"""What each install path installs is what its features import (issue 21, missing packages).

A clean virtual environment built from the package metadata cannot be made here (no package
index is reachable from CI, and installing torch into one would take minutes), so the same
promise is checked in two parts that can fail:
- statically: every third-party module that any engine file imports resolves (through the
  installed distributions' metadata) to a core dependency in pyproject.toml, or is an optional
  module of `coralbay.errors.OPTIONAL_EXTRAS` whose extra lists it; and the Slicer installer's
  list covers every core dependency that the engine code the module runs imports and Slicer does
  not ship, and nothing only other commands need (scikit-image);
- for real: the commands run in a child Python in which the optional packages cannot be
  imported (an import hook hides them, as if never installed), and answer with one sentence
  naming the extra and exit code 2.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ENGINE_DIR, REPO, cli_env
from CoralBaySlicerLib import dependencies
from coralbay.errors import OPTIONAL_EXTRAS

tomllib = pytest.importorskip("tomllib", reason="tomllib (Python 3.11+) reads pyproject.toml")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requirements: list[str]) -> set[str]:
    return {_normal(re.split(r"[=<>!~;\[ ]", r, maxsplit=1)[0]) for r in requirements}


# The benchmark harness lives in the repository, not in the package (`coralbay bench` says so).
HARNESS = {p.name for p in (REPO / "benchmarks").iterdir() if p.is_dir() or p.suffix == ".py"}
HARNESS = {name.removesuffix(".py") for name in HARNESS}


def engine_imports() -> dict[str, set[str]]:
    """Top-level third-party modules imported by the engine -> the files importing them."""
    found: dict[str, set[str]] = {}
    for path in (ENGINE_DIR / "coralbay").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top != "coralbay" and top not in sys.stdlib_module_names and top not in HARNESS:
                    found.setdefault(top, set()).add(str(path.relative_to(ENGINE_DIR)))
    return found


def test_every_engine_import_is_installed_by_the_install_path_that_offers_it():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = _requirement_names(project["dependencies"])
    extras = {name: _requirement_names(reqs) for name, reqs in project["optional-dependencies"].items()}
    distributions = importlib.metadata.packages_distributions()
    problems = []
    for module, files in sorted(engine_imports().items()):
        provided_by = {_normal(d) for d in distributions.get(module, [])}
        if not provided_by:
            problems.append(f"{module} (imported by {sorted(files)[0]}) is not installed here")
        elif module in OPTIONAL_EXTRAS:
            if not provided_by & extras.get(OPTIONAL_EXTRAS[module], set()):
                problems.append(f"{module} is optional but the extra {OPTIONAL_EXTRAS[module]} lacks {provided_by}")
        elif not provided_by & core:
            problems.append(f"{module} (imported by {sorted(files)[0]}) is not a core dependency "
                            "nor an optional module of coralbay.errors.OPTIONAL_EXTRAS")
    assert not problems, problems


def _imported_names(path: Path) -> set[str]:
    """Every module name a file imports (top level or inside functions), `from a import b` as a and a.b."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


def _engine_file(name: str) -> Path | None:
    path = ENGINE_DIR.joinpath(*name.split("."))
    return path / "__init__.py" if (path / "__init__.py").exists() else (
        path.with_suffix(".py") if path.with_suffix(".py").exists() else None)


def slicer_side_imports() -> tuple[dict[str, set[str]], set[Path]]:
    """Third-party modules (-> importing files) of every engine file the Slicer module can run: the
    engine commands it starts (`dependencies.SLICER_COMMANDS`) and the engine modules its own files
    import, followed through every `coralbay` import, including those inside functions."""
    slicer_files = [ENGINE_DIR / "CoralBaySlicer.py", *(ENGINE_DIR / "CoralBaySlicerScene").glob("*.py"),
                    *(ENGINE_DIR / "CoralBaySlicerLib").glob("*.py")]
    todo = [ENGINE_DIR / "coralbay" / "commands" / f"{c}.py" for c in dependencies.SLICER_COMMANDS]
    todo += [f for path in slicer_files for name in _imported_names(path) if name.startswith("coralbay.")
             for f in [_engine_file(name)] if f]
    seen: set[Path] = set()
    found: dict[str, set[str]] = {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imported_names(path):
            parts = name.split(".")
            if parts[0] == "coralbay":
                todo += [f for i in range(1, len(parts) + 1) for f in [_engine_file(".".join(parts[:i]))] if f]
            elif parts[0] not in sys.stdlib_module_names and parts[0] not in HARNESS:
                found.setdefault(parts[0], set()).add(str(path.relative_to(ENGINE_DIR)))
    return found, seen


def test_the_slicer_commands_are_those_the_module_runs():
    """`SLICER_COMMANDS` is exactly the commands the module's command lines start."""
    from CoralBaySlicerLib import commands
    from CoralBaySlicerLib.interactive_session import interact_argv

    started = {commands.segment_args("ct.nrrd", "m", "out.nii.gz")[0], commands.classify_args("ct.nrrd", "m", "r.json")[0],
               commands.compare_args("a.nii.gz", "b.nii.gz", "out")[0], commands.export_args("a.nii.gz", "nifti", "o")[0],
               commands.phantom_args(1, "ct.nrrd", "l.nii.gz")[0], commands.teach_args("ex", "m", "mine")[0],
               interact_argv("python", "m", "out", "ex")[3]}
    assert started == set(dependencies.SLICER_COMMANDS)


def test_the_slicer_installer_installs_what_the_module_runs_and_no_more():
    """Slicer's Python lacks the engine's pinned packages: the installer brings each one that the
    engine code the module runs imports (e.g. PyMaxflow for the interactive graph cut), and not
    scikit-image, which only eval-interactive's random-walker baseline imports."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = _requirement_names(project["dependencies"])
    distributions = importlib.metadata.packages_distributions()
    installed = {r.distribution for r in dependencies.REQUIREMENTS}
    shipped = {_normal(m) for m in dependencies.PROVIDED_BY_SLICER} | set(dependencies.PROTECTED)
    imports, files = slicer_side_imports()
    needed = {_normal(d) for module in imports if module not in OPTIONAL_EXTRAS
              for d in distributions.get(module, []) if _normal(d) in core}
    assert {"pymaxflow", "monai", "highdicom"} <= needed  # the walk reaches interact, segment and export
    assert needed - shipped <= installed, sorted(needed - shipped - installed)
    assert "skimage" in engine_imports() and "skimage" not in imports
    assert ENGINE_DIR / "coralbay" / "interactive" / "baselines.py" not in files
    assert "scikit-image" not in installed


# A child Python in which some packages look uninstalled: an import hook raises the same
# ModuleNotFoundError that a missing package gives.
HIDE = """
import sys, importlib.abc
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {hidden!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Hide())
from coralbay.cli import main
sys.exit(main({argv!r}))
"""


def run_without(hidden: set[str], *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    code = HIDE.format(hidden=hidden, argv=list(map(str, argv)))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(),
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def tiny_scan(tmp_path_factory) -> Path:
    import numpy as np
    import SimpleITK as sitk

    folder = tmp_path_factory.mktemp("cohort")
    image = sitk.GetImageFromArray(np.random.default_rng(0).integers(-1000, 1000, (8, 10, 12)).astype(np.int16))
    image.SetSpacing((4.0, 4.0, 4.0))
    sitk.WriteImage(image, str(folder / "case1.nii.gz"))
    return folder


def test_batch_on_a_cluster_without_dask_names_the_extra(tiny_scan, tiny_seg_bundle, tmp_path):
    result = run_without({"dask", "distributed"}, "batch", tiny_scan, "--model", tiny_seg_bundle,
                         "--output", tmp_path / "out", "--cluster", "local:1", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "coralbay[batch]"' in lines[0], result.stderr
    assert "Unexpected" not in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [["models", "--json"], ["info", "{scan}", "--json"]])
def test_a_closed_stdout_ends_quietly(tiny_scan, argv):
    """`coralbay ... | head`: no "Unexpected error (BrokenPipeError)", the status of Unix tools."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    try:
        result = subprocess.run([sys.executable, "-m", "coralbay", *[a.format(scan=tiny_scan / "case1.nii.gz")
                                                                     for a in argv]],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, env=cli_env(), timeout=120)
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 141
