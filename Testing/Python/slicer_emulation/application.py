"""EMULATES qSlicerCoreApplication / qSlicerApplication (Base/QTCore/qSlicerCoreApplication.cxx,
Base/QTGUI/qSlicerApplication.cxx) - the Qt application object that real Slicer builds at startup.

Everything below the application is REAL slicer-core: the vtkMRMLScene, the vtkSlicerApplicationLogic,
and the module logics, created and connected the way Slicer's application does it:
`qSlicerAbstractCoreModule::logic()` creates the module's vtkSlicerModuleLogic, gives it the
application logic (`SetMRMLApplicationLogic`), then the scene (`SetMRMLScene`), and registers it with
`vtkSlicerApplicationLogic::SetModuleLogic(moduleName, logic)` (where the Segmentations logic finds
the Terminologies logic).

What stays emulated here, because it is Qt: the paths of `slicer.app` (temporaryPath, cachePath),
`processEvents`, `startupEnvironment()` (a QProcessEnvironment in Slicer), `testingEnabled()`,
`coreIOManager()` (see io_manager.py), the `slicer.modules.<name>` objects (qSlicerAbstractCoreModule
wrappers whose `logic()` returns the real logic), the slice views of the layout (see slice_views.py)
and the subject-hierarchy plugin logic (see subject_hierarchy_plugins.py).
"""

from __future__ import annotations

import os
import tempfile

import slicer
import vtk

import io_manager
import slice_views
import subject_hierarchy_plugins

# Module name -> real logic class, in the order Slicer's core modules load
# (`slicer.modules.<lower-case name>` as in Slicer).
MODULE_LOGICS = {
    "Colors": "vtkSlicerColorLogic",
    "Data": "vtkSlicerDataModuleLogic",
    "SubjectHierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
    "Terminologies": "vtkSlicerTerminologiesModuleLogic",
    "Segmentations": "vtkSlicerSegmentationsModuleLogic",
    "Volumes": "vtkSlicerVolumesLogic",
    "Markups": "vtkSlicerMarkupsLogic",
    "Tables": "vtkSlicerTablesLogic",
}


class _ProcessEnvironment:
    """QProcessEnvironment as `slicer.app.startupEnvironment()` returns it (keys() and value())."""

    def __init__(self, environ: dict[str, str]) -> None:
        self._environ = dict(environ)

    def keys(self):
        return list(self._environ)

    def value(self, key, default=""):
        return self._environ.get(key, default)


class _Module:
    """`slicer.modules.<name>`: the qSlicerAbstractCoreModule whose logic() is the real module logic."""

    def __init__(self, logic) -> None:
        self._logic = logic

    def logic(self):
        return self._logic


class _Modules:
    pass


class EmulatedApplication:
    """`slicer.app`: paths, event processing, environment and the IO manager."""

    applicationName = "Slicer"  # QCoreApplication::applicationName (slicer.util's message titles)

    def __init__(self, root: str) -> None:
        self.temporaryPath = os.path.join(root, "temp")
        self.cachePath = os.path.join(root, "cache")
        os.makedirs(self.temporaryPath, exist_ok=True)
        os.makedirs(self.cachePath, exist_ok=True)
        self.processedEvents = 0
        self._ioManager = io_manager.CoreIOManager()

    def processEvents(self) -> None:
        self.processedEvents += 1

    def startupEnvironment(self):
        return _ProcessEnvironment(os.environ)

    def testingEnabled(self) -> bool:
        return True

    def coreIOManager(self):
        return self._ioManager

    def connect(self, signal, slot) -> None:
        """Qt signal connection (e.g. "startupCompleted()"): never emitted here."""


def _createLogics(scene, applicationLogic, modules, logics) -> None:
    for name, className in MODULE_LOGICS.items():
        logic = getattr(slicer, className)()
        logic.SetMRMLApplicationLogic(applicationLogic)
        logic.SetMRMLScene(scene)
        applicationLogic.SetModuleLogic(name, logic)
        logics[name] = logic
        setattr(modules, name.lower(), _Module(logic))


def start(root: str | None = None):
    """Build a fresh application around a new real scene; set slicer.app, slicer.mrmlScene,
    slicer.modules as Slicer's startup does. Returns the application."""
    root = root or tempfile.mkdtemp(prefix="slicer-emulated-app-")
    scene = slicer.vtkMRMLScene()
    applicationLogic = slicer.vtkSlicerApplicationLogic()
    applicationLogic.SetMRMLScene(scene)
    modules = _Modules()
    logics = {}
    # slicer-core ships no colour or terminology files: silence the Colors and Terminologies logics'
    # reports that they cannot find them (Slicer's application gives them its share folder).
    cutoff = vtk.vtkLogger.GetCurrentVerbosityCutoff()
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
    try:
        _createLogics(scene, applicationLogic, modules, logics)
    finally:
        vtk.vtkLogger.SetStderrVerbosity(cutoff)
    app = EmulatedApplication(root)
    app.applicationLogic = applicationLogic
    app.logics = logics  # keeps the logics alive as long as the application
    slicer.app = app
    slicer.mrmlScene = scene
    slicer.modules = modules
    slice_views.create(scene)
    subject_hierarchy_plugins.install(scene)
    return app
