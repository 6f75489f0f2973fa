"""The engine's import graph: no cycle, and every import runs down the pipeline's layers.

Why: a newcomer should find each concept in one place and read the engine top-down (io, grid,
bundle, model, inference, review, export, training, commands). An import that runs backwards,
or a cycle, is how a package quietly starts to depend on everything; hiding such an import in a
function does not make it go away, so function-level imports count here too (they are fine for
speed, e.g. torch inside a command's `run`, as long as they point downward).

The layers live in `LAYERS` below (docs/architecture.md shows the same order). A new package
needs a line there, or this test names it.

The Slicer side is checked too: the module file and its helper packages reach the engine only
through its standard-library-only modules (Slicer lists models, reads progress and speaks the
interactive protocol before PyTorch is installed into it), `CoralBaySlicerLib` stays free of
Slicer, and the engine imports neither the Slicer side nor the benchmark harness (which registers
its `bench` command through an entry point instead).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "CoralBaySlicer" / "coralbay"
MODULE_DIR = ENGINE.parent
SLICER_SIDE = sorted([MODULE_DIR / "CoralBaySlicer.py", *(MODULE_DIR / "CoralBaySlicerLib").glob("*.py"),
                      *(MODULE_DIR / "CoralBaySlicerScene").glob("*.py")])
SLICER_ONLY = ("slicer", "qt", "ctk", "vtk", "CoralBaySlicerScene", "CoralBaySlicer")

# Lowest first. A module may import its own layer (without a cycle) and any lower layer.
LAYERS: list[tuple[str, ...]] = [
    # foundation: the package root, errors, atomic writes, progress protocol, JSON, device choice
    ("coralbay", "coralbay.errors", "coralbay.atomic", "coralbay.progress", "coralbay.jsonio",
     "coralbay.device", "coralbay.vocabulary"),
    ("coralbay.grid",),        # index boxes, model grid, window placement, resampling, index->LPS
    ("coralbay.io",),          # volumes, DICOM, label maps + tables, .seg.nrrd, DICOM SEG
    ("coralbay.phantom",),     # synthetic CT: a source of volumes and labels (training draws on it)
    ("coralbay.model",),       # the network (eva-compatible encoder, decoder)
    ("coralbay.bundle",),      # manifest, weights, catalog, loading a bundle into a model
    ("coralbay.inference",),   # preprocessing, sliding window, restore, memory plan, classify
    ("coralbay.review",),      # the one Dice and surface distances, compare, difference maps
    ("coralbay.export",),      # export formats and meshes
    ("coralbay.training",),    # train_segmentation_bundle / train_classification_bundle
    ("coralbay.batch", "coralbay.interactive"),  # cohorts; interactive sessions
    ("coralbay.serve",),       # the remote engine: HTTP API, users and tokens, TLS, per-session workers
    ("coralbay.commands",),    # thin: parse, call the API, report
    ("coralbay.cli", "coralbay.__main__"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ENGINE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, name: str, modules: set[str]) -> set[str]:
    """Every coralbay module `path` imports, at any depth of its code (functions included).

    `from package import submodule` counts as importing the submodule only; `from module import
    name` as importing the module.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {f"{target}.{a.name}" for a in node.names} & modules
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(target)
    return {m for m in found if m == "coralbay" or m.startswith("coralbay.")}


def engine_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ENGINE.rglob("*.py") if "__pycache__" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for target in imported_modules(path, name, set(modules)):
            while target not in modules and "." in target:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target in modules and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def layer_of(module: str) -> int:
    best, best_len = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            exact_root = prefix == "coralbay"
            hit = module == prefix if exact_root else (module == prefix or module.startswith(prefix + "."))
            if hit and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


GRAPH = engine_graph()


def test_graph_is_read():
    """The reader sees the engine's real imports (a broken reader would pass everything)."""
    assert len(GRAPH) > 50
    assert "coralbay.io.volumes" in GRAPH["coralbay.commands.info"]
    assert "coralbay.commands._common" in GRAPH["coralbay.cli"]
    lazy = GRAPH["coralbay.commands._common"]  # imports inside functions count
    assert "coralbay.bundle.loader" in lazy


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in GRAPH if layer_of(m) < 0)
    assert not unplaced, f"modules in no layer (add them to LAYERS and docs/architecture.md): {unplaced}"


def test_imports_run_down_the_layers():
    backwards = sorted(f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
                       for m, targets in GRAPH.items() for t in targets if layer_of(t) > layer_of(m))
    assert not backwards, "imports that run backwards:\n" + "\n".join(backwards)


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(GRAPH[node]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def heavy_imports(module: str) -> list[str]:
    """Third-party imports `module` makes, at any depth and through every engine module it reaches
    (function-level imports and the packages on the way included)."""
    seen, todo = set(), [module]
    heavy = []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = ENGINE.parent / (name.replace(".", "/") + ".py")
        if not path.exists():
            path = ENGINE.parent / name.replace(".", "/") / "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for imported in names:
                top = imported.split(".")[0]
                if top == "coralbay":
                    todo.append(imported if imported in GRAPH else imported.rpartition(".")[0])
                elif top not in sys.stdlib_module_names:
                    heavy.append(f"{name} imports {imported}")
        # the packages on the way are imported too
        parent = name.rpartition(".")[0]
        if parent and parent != "coralbay":
            todo.append(parent)
    return heavy


def top_level_imports(path: Path) -> set[str]:
    """Every module name `path` imports (at any depth of its code)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.add(node.module or "")
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def engine_modules_of_the_slicer_side() -> dict[str, set[str]]:
    """Engine module -> the Slicer-side files that import it."""
    used: dict[str, set[str]] = {}
    for path in SLICER_SIDE:
        for name in top_level_imports(path):
            while name.startswith("coralbay") and name not in GRAPH and "." in name:
                name = name.rpartition(".")[0]  # `from coralbay.io.labels import X` -> the module
            if name in GRAPH:
                used.setdefault(name, set()).add(path.name)
    return used


@pytest.mark.parametrize("module", ["coralbay.bundle.catalog", "coralbay.bundle.manifest", "coralbay.progress",
                                    "coralbay.interactive.messages", "coralbay.io.examples"])
def test_catalog_manifest_progress_and_shared_protocol_stay_standard_library(module):
    """Slicer lists models, reads progress, speaks the interactive protocol and reads the examples
    folder before PyTorch is installed into it."""
    assert not heavy_imports(module), heavy_imports(module)


def test_the_slicer_side_imports_only_standard_library_engine_modules():
    used = engine_modules_of_the_slicer_side()
    assert {"coralbay.interactive.messages", "coralbay.io.labels", "coralbay.bundle.catalog"} <= set(used)  # read
    heavy = {m: (sorted(files), heavy_imports(m)[:3]) for m, files in used.items() if heavy_imports(m)}
    assert not heavy, f"the Slicer side imports engine modules that need third-party packages: {heavy}"


def test_slicer_lib_stays_free_of_slicer_and_the_engine_of_both():
    lib = [p for p in SLICER_SIDE if p.parent.name == "CoralBaySlicerLib"]
    assert len(lib) > 5
    found = sorted(f"{p.name} imports {n}" for p in lib for n in top_level_imports(p) if n.split(".")[0] in SLICER_ONLY)
    assert not found, found
    engine = [p for p in ENGINE.rglob("*.py") if "__pycache__" not in p.parts]
    sides = SLICER_ONLY + ("CoralBaySlicerLib",)
    found = sorted(f"{p.relative_to(ENGINE.parent)} imports {n}" for p in engine for n in top_level_imports(p)
                   if n.split(".")[0] in sides)
    assert not found, found


def test_the_engine_never_imports_the_benchmark_harness():
    """`coralbay bench` comes from the harness's entry point (benchmarks/pyproject.toml), so the
    engine has no import that runs up into benchmarks/ (not even inside a function)."""
    engine = [p for p in ENGINE.rglob("*.py") if "__pycache__" not in p.parts]
    found = sorted(f"{p.relative_to(ENGINE.parent)} imports {n}" for p in engine for n in top_level_imports(p)
                   if n.split(".")[0] == "coralbay_bench")
    assert not found, found
    # the harness declares the entry point the engine looks up, installed and in a checkout alike
    import tomllib

    from coralbay.commands import bench

    declared = tomllib.loads((ENGINE.parents[1] / "benchmarks" / "pyproject.toml").read_text(encoding="utf-8"))
    assert declared["project"]["entry-points"][bench.ENTRY_POINT_GROUP] == {"bench": "coralbay_bench.command:register"}
    beside = (ENGINE.parents[1] / "benchmarks" / "coralbay_bench.dist-info" / "entry_points.txt").read_text()
    assert f"[{bench.ENTRY_POINT_GROUP}]\nbench = coralbay_bench.command:register" in beside
