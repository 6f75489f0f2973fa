"""Static checks of the Slicer extension's files: .ui, CMakeLists.txt, .s4ext, icon.

Slicer cannot run here, so what Slicer would read is checked as data: the widget names the module
uses exist in the .ui; each parameter-node field bound in the .ui exists and is bound to a widget
type that Slicer's parameterNodeWrapper can connect; CMakeLists.txt lists exactly the files there
are, and the installed layout it produces lets the module find its resources and run the engine.
"""

from __future__ import annotations

import ast
import re
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest

from conftest import REPO

MODULE_DIR = REPO / "CoralBaySlicer"
MODULE_FILE = MODULE_DIR / "CoralBaySlicer.py"
SCENE_FILES = sorted((MODULE_DIR / "CoralBaySlicerScene").glob("*.py"))  # the sections use the .ui too
UI_FILE = REPO / "Resources" / "UI" / "CoralBaySlicer.ui"
CMAKE_FILE = REPO / "CMakeLists.txt"
S4EXT_FILE = REPO / "CoralBaySlicer.s4ext"
ICON_FILE = REPO / "Resources" / "Icons" / "CoralBaySlicer.png"
JSON_FILE = REPO / "CoralBaySlicer.json"
LICENSE_FILE = REPO / "LICENSE.txt"
PYPROJECT_FILE = REPO / "pyproject.toml"
RAW_URL = "https://raw.githubusercontent.com/CoralBaySlicer/CoralBaySlicer/main/"

# Widget class -> parameter types Slicer 5.6's parameterNodeWrapper connects it to
# (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py).
CONNECTABLE = {
    "qMRMLNodeComboBox": {"node"},
    "QComboBox": {"str", "int", "float", "bool"},  # with a Choice annotation
    "ctkSliderWidget": {"float"},
    "QDoubleSpinBox": {"float"},
    "QSpinBox": {"int"},
    "QCheckBox": {"bool"},
    "QLineEdit": {"str"},
    "ctkDirectoryButton": {"Path"},
    "ctkPathLineEdit": {"Path"},
}


# -- .ui --------------------------------------------------------------------------------------------

def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    widgets = root.iter("widget")
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names in the .ui must be unique"
    return {w.get("name"): w for w in widgets}


def names_used_by_module() -> set[str]:
    """Every `<something>.ui.<name>` (or `ui.<name>`) attribute the module file and its sections read."""
    used = set()
    for path in [MODULE_FILE, *SCENE_FILES]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        used |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and (
            (isinstance(node.value, ast.Attribute) and node.value.attr == "ui")
            or (isinstance(node.value, ast.Name) and node.value.id == "ui"))}
    return used


def parameter_fields() -> dict[str, str]:
    """Field name -> kind ("node", "str", "float", "Path"...) of the module's parameter node class."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CoralBaySlicerParameterNode")
    fields = {}
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            text = ast.unparse(stmt.annotation)
            if text.startswith("Annotated["):
                text = text[len("Annotated["):].split(",")[0]
            if "vtkMRML" in text:
                kind = "node"
            elif text.endswith("Path"):
                kind = "Path"
            else:
                kind = text
            fields[stmt.target.id] = kind
    return fields


def test_every_widget_the_module_uses_is_in_the_ui():
    used = names_used_by_module()
    assert {"segmentButton", "cancelButton", "compareButton", "exportButton"} <= used  # the parse works
    assert {"structureComboBox", "sendBoxButton", "refineSegmentSelector", "shortcutsLabel"} <= used  # the sections
    missing = sorted(used - set(ui_widgets()))
    assert not missing, f"the module uses widgets that CoralBaySlicer.ui lacks: {missing}"


def test_ui_has_the_panel_the_issue_asks_for():
    widgets = ui_widgets()
    classes = {name: w.get("class") for name, w in widgets.items()}
    expected = {
        "inputVolumeSelector": "qMRMLNodeComboBox", "modelComboBox": "QComboBox", "addModelButton": "QPushButton",
        "roiSelector": "qMRMLNodeComboBox", "pointSelector": "qMRMLNodeComboBox",
        "structuresListWidget": "QListWidget", "deviceComboBox": "QComboBox", "overlapSliderWidget": "ctkSliderWidget",
        "segmentButton": "QPushButton", "classifyButton": "QPushButton", "cancelButton": "QPushButton",
        "progressBar": "QProgressBar", "logTextEdit": "QPlainTextEdit", "referenceSelector": "qMRMLNodeComboBox",
        "compareButton": "QPushButton", "jumpToWorstErrorButton": "QPushButton", "metricsTableView": "qMRMLTableView",
        "exportFormatComboBox": "QComboBox", "exportFolderButton": "ctkDirectoryButton", "exportButton": "QPushButton",
    }
    wrong = {n: (classes.get(n), c) for n, c in expected.items() if classes.get(n) != c}
    assert not wrong, f"widget (found, expected) class: {wrong}"


def test_ui_parameter_bindings_exist_and_are_connectable():
    fields = parameter_fields()
    assert fields["inputVolume"] == "node" and fields["overlap"] == "float"  # the parse works
    bound = {}
    for name, w in ui_widgets().items():
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = (w.get("class"), prop.findtext("string"))
    assert bound, "no widget of the .ui is bound to the parameter node"
    for widget_name, (cls, field) in bound.items():
        assert field in fields, f"{widget_name} is bound to {field!r}, which the parameter node lacks"
        assert fields[field] in CONNECTABLE.get(cls, set()), \
            f"{widget_name} ({cls}) cannot be connected to {field!r} of type {fields[field]}"
    assert len({f for _, f in bound.values()}) == len(bound), "two widgets bound to the same parameter"


def test_every_mrml_widget_gets_the_scene_and_custom_widgets_are_declared():
    root = ET.parse(UI_FILE).getroot()
    widgets = ui_widgets()
    mrml = {n for n, w in widgets.items() if w.get("class").startswith("qMRML") and w.get("class") != "qMRMLWidget"}
    top = root.find("widget").get("name")
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("sender") == top and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert mrml and not (mrml - connected), f"MRML widgets without the scene: {sorted(mrml - connected)}"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    custom = {w.get("class") for w in widgets.values() if not w.get("class").startswith("Q")}
    assert not (custom - declared), f"custom widget classes not declared: {sorted(custom - declared)}"


# -- CMakeLists.txt ---------------------------------------------------------------------------------

def cmake_list(name: str) -> list[str]:
    text = CMAKE_FILE.read_text(encoding="utf-8")
    match = re.search(rf"set\({name}\b(.*?)\)", text, re.S)
    assert match, f"CMakeLists.txt does not set {name}"
    body = "\n".join(line.split("#")[0] for line in match.group(1).splitlines())
    return body.split()


def files_under(folder: Path) -> set[str]:
    """The source files under `folder`: what git tracks or would track, not build outputs.

    `pip install -e` writes `coralbay.egg-info/` into the module folder on a fresh clone; it is
    git-ignored and must not count as a file CMake should install.
    """
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", "."],
        cwd=folder, capture_output=True, check=False)
    if listed.returncode == 0:
        names = {n for n in listed.stdout.decode().split("\0") if n}
        return {n for n in names if (folder / n).is_file()}
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
            and not any(part.endswith(".egg-info") for part in p.parts)}


def test_cmake_lists_every_module_and_engine_script():
    listed = cmake_list("MODULE_PYTHON_SCRIPTS")
    assert len(listed) == len(set(listed)), "a script is listed twice"
    present = {f for f in files_under(MODULE_DIR) if f.endswith(".py")}
    assert not (set(listed) - present), f"listed but missing: {sorted(set(listed) - present)}"
    assert not (present - set(listed)), f"not listed in CMakeLists.txt: {sorted(present - set(listed))}"


def test_cmake_lists_every_resource_and_package_data_file():
    resources = cmake_list("MODULE_PYTHON_RESOURCES")
    present = {f"Resources/{f}" for f in files_under(REPO / "Resources")}
    assert "Resources/UI/CoralBaySlicer.ui" in resources
    assert not (set(resources) - present), f"listed but missing: {sorted(set(resources) - present)}"
    assert not (present - set(resources)), f"not listed in CMakeLists.txt: {sorted(present - set(resources))}"
    data = set(cmake_list("MODULE_PACKAGE_DATA"))
    present_data = {f for f in files_under(MODULE_DIR) if not f.endswith(".py")}
    assert data == present_data, f"package data listed {sorted(data)} vs present {sorted(present_data)}"


def test_cmake_is_a_slicer_extension_with_tests():
    text = CMAKE_FILE.read_text(encoding="utf-8")
    for needed in ("project(CoralBaySlicer)", "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                   "slicerMacroBuildScriptedModule(", "WITH_GENERIC_TESTS", "slicer_add_python_unittest(",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert needed in text, f"CMakeLists.txt lacks {needed}"
    for var in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert re.search(rf'set\(EXTENSION_{var} "[^"]+"\)', text), f"EXTENSION_{var} is not set"
    assert text.index("set(EXTENSION_HOMEPAGE") < text.index("find_package(Slicer REQUIRED)")


def test_installed_layout_finds_resources_and_imports_the_engine(tmp_path):
    """Lay the files out as CMakeLists.txt installs them, then use them as Slicer would."""
    lib = tmp_path / "qt-scripted-modules"
    for script in cmake_list("MODULE_PYTHON_SCRIPTS") + cmake_list("MODULE_PACKAGE_DATA"):
        (lib / script).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(MODULE_DIR / script, lib / script)  # staged, then placed relative to the build folder
    for resource in cmake_list("MODULE_PYTHON_RESOURCES"):
        (lib / resource).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / resource, lib / resource)  # relative to the root CMakeLists.txt
    probe = ("import pathlib, sys; from CoralBaySlicerLib import paths, process; import coralbay.cli; "
             "d = pathlib.Path(sys.argv[1]); print(paths.resources_dir(d)); print(paths.engine_dir(d)); "
             "print(pathlib.Path(coralbay.cli.__file__).parent); print(pathlib.Path(process.__file__).parent)")
    done = subprocess.run([sys.executable, "-c", probe, str(lib)], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(lib)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(lib / "Resources"), str(lib), str(lib / "coralbay"), str(lib / "CoralBaySlicerLib")]
    if (REPO / "Resources" / "Models").is_dir():  # the engine's catalog finds the bundled models there too
        models = subprocess.run([sys.executable, "-c", "from coralbay.bundle import catalog; print(catalog.builtin_models_dir())"],
                                cwd=tmp_path, capture_output=True, text=True,
                                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(lib)})
        assert models.stdout.strip() == str(lib / "Resources" / "Models"), models.stderr


def test_source_layout_also_finds_resources():
    from CoralBaySlicerLib import paths

    assert paths.resources_dir(MODULE_DIR) == REPO / "Resources"
    assert paths.engine_dir(MODULE_DIR) == MODULE_DIR


# -- .s4ext -----------------------------------------------------------------------------------------

S4EXT_REQUIRED = ("scm", "scmurl", "scmrevision", "depends", "build_subdirectory", "homepage", "contributors",
                  "category", "iconurl", "status", "description", "screenshoturls", "enabled")


def s4ext_fields() -> dict[str, str]:
    fields = {}
    for line in S4EXT_FILE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            assert key not in fields, f"{key} appears twice in the .s4ext"
            fields[key] = value.strip()
    return fields


def test_s4ext_has_every_template_field_filled_in():
    fields = s4ext_fields()
    empty = [k for k in S4EXT_REQUIRED if not fields.get(k)]
    assert not empty, f"fields missing or empty in CoralBaySlicer.s4ext: {empty}"
    assert fields["scm"] == "git"
    assert "PyTorch" in fields["depends"].split()
    assert fields["enabled"] in ("0", "1")
    for key in ("scmurl", "homepage", "iconurl", "screenshoturls"):
        assert all(url.startswith("https://") for url in fields[key].split()), key


def test_s4ext_agrees_with_cmake():
    fields = s4ext_fields()
    text = CMAKE_FILE.read_text(encoding="utf-8")

    def cmake_value(var):
        match = re.search(rf'set\(EXTENSION_{var} (?:"([^"]*)"|([^\s)]+))\)', text)
        return match.group(1) if match.group(1) is not None else match.group(2)

    for key, var in (("category", "CATEGORY"), ("description", "DESCRIPTION"), ("homepage", "HOMEPAGE"),
                     ("iconurl", "ICONURL"), ("depends", "DEPENDS"), ("contributors", "CONTRIBUTORS"),
                     ("status", "STATUS"), ("enabled", "ENABLED"), ("screenshoturls", "SCREENSHOTURLS")):
        assert fields[key] == cmake_value(var), f"{key} differs between the .s4ext and CMakeLists.txt"


# -- icon -------------------------------------------------------------------------------------------

def test_icon_is_a_valid_png():
    data = ICON_FILE.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, idat = 8, [], b""
    while pos < len(data):
        length, = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        crc, = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(tag + body) & 0xFFFFFFFF == crc, f"bad CRC in chunk {tag!r}"
        chunks.append(tag)
        idat += body if tag == b"IDAT" else b""
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND"
    width, height, depth, color_type = struct.unpack(">IIBB", data[16:26])
    assert (width, height, depth, color_type) == (128, 128, 8, 6)
    assert len(zlib.decompress(idat)) == height * (1 + width * 4)


# -- Extensions Index JSON, licence, screenshot --------------------------------------------------------

def cmake_setting(var: str) -> str:
    match = re.search(rf'set\(EXTENSION_{var} (?:"([^"]*)"|([^\s)]+))\)', CMAKE_FILE.read_text(encoding="utf-8"))
    assert match, f"CMakeLists.txt does not set EXTENSION_{var}"
    return match.group(1) if match.group(1) is not None else match.group(2)


def test_extension_index_json_entry_agrees_with_cmake_and_s4ext():
    """The Extensions Index takes a JSON catalog entry (schema slicer-extension-catalog-entry-schema,
    required: $schema, category, scm_url); PyTorch is a build dependency."""
    import json

    entry = json.loads(JSON_FILE.read_text(encoding="utf-8"))
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                       "slicer-extension-catalog-entry-schema-v1.0.")
    allowed = {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision", "scm_type",
               "scm_url", "tier"}
    assert set(entry) <= allowed, f"fields the schema does not define: {set(entry) - allowed}"
    fields = s4ext_fields()
    assert entry["build_dependencies"] == ["PyTorch"] == cmake_setting("DEPENDS").split()
    assert entry["category"] == fields["category"] == cmake_setting("CATEGORY")
    assert entry["scm_url"] == fields["scmurl"] and entry["scm_revision"] == fields["scmrevision"]
    assert entry["build_subdirectory"] == fields["build_subdirectory"] == cmake_setting("BUILD_SUBDIRECTORY")
    assert str(entry["tier"]) == fields["tier"]


def test_license_file_is_the_apache_licence_pyproject_states():
    text = LICENSE_FILE.read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 150  # the full text
    assert re.search(r'^license = "Apache-2.0"', PYPROJECT_FILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert cmake_setting("LICENSE_FILE") == "${CMAKE_CURRENT_SOURCE_DIR}/LICENSE.txt"


def test_screenshot_urls_name_real_png_files_of_the_repository():
    urls = cmake_setting("SCREENSHOTURLS").split()
    assert urls
    for url in urls:
        assert url.startswith(RAW_URL), url
        data = (REPO / url[len(RAW_URL):]).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 300 and height >= 400, "a screenshot of the panel, not the icon"


@pytest.mark.parametrize("path", [UI_FILE, CMAKE_FILE, S4EXT_FILE, ICON_FILE, MODULE_FILE, JSON_FILE, LICENSE_FILE])
def test_extension_files_exist(path):
    assert path.is_file()


def test_every_public_name_of_the_logic_is_in_the_scripting_section_of_the_docs():
    """The scripting API is the Logic's public names (its parts' too): each is named in docs/slicer.md
    'Scripting and where the code is', so a new or renamed method cannot slip in unlisted."""
    parts = ("CoralBaySlicerLogic", "EngineJobs", "InstallLogic", "TaskLogic", "InteractiveLogic")
    files = [MODULE_FILE, *sorted((MODULE_FILE.parent / "CoralBaySlicerScene").glob("*.py"))]
    public = {item.name for path in files for node in ast.parse(path.read_text(encoding="utf-8")).body
              if isinstance(node, ast.ClassDef) and node.name in parts
              for item in node.body if isinstance(item, ast.FunctionDef) and not item.name.startswith("_")}
    doc = (REPO / "docs" / "slicer.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Scripting and where the code is"):]
    section = section[:section.index("Where each panel behaviour lives")]
    named = set(re.findall(r"`(\w+)", section))
    named |= {f"interactive{w}" for w in ("Redo", "Accept") if f"/ `{w}`" in section}  # "`interactiveUndo` / `Redo`"
    assert {"segment", "startInteractive", "addInteractiveBox", "useRemoteEngine"} <= public
    assert not sorted(public - named), f"Logic methods docs/slicer.md does not list: {sorted(public - named)}"
