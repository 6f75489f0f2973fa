"""The engine's import graph: no cycle, and every import runs down the pipeline's layers.

Why: a newcomer should find each concept in one place and read the engine top-down (io, grid,
bundle, model, inference, review, export, training, commands). An import that runs backwards,
or a cycle, is how a package quietly starts to depend on everything; hiding such an import in a
function does not make it go away, so function-level imports count here too (they are fine for
speed, e.g. torch inside a command's `run`, as long as they point downward).

The layers live in `LAYERS` below (docs/architecture.md shows the same order). A new package
needs a line there, or this test names it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "CoralBaySlicer" / "coralbay"

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


@pytest.mark.parametrize("module", ["coralbay.bundle.catalog", "coralbay.bundle.manifest", "coralbay.progress"])
def test_catalog_manifest_progress_stay_standard_library(module):
    """Slicer lists models and reads progress before PyTorch is installed into it."""
    allowed_third_party: set[str] = set()
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
                elif top not in sys.stdlib_module_names and top not in allowed_third_party:
                    heavy.append(f"{name} imports {imported}")
        # the packages on the way are imported too
        parent = name.rpartition(".")[0]
        if parent and parent != "coralbay":
            todo.append(parent)
    assert not heavy, heavy
