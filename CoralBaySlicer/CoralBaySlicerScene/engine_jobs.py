"""The engine runner, its folders in Slicer's cache, and the one background job at a time.

Why a seam: every workflow reaches the engine through `runner()` (one-shot jobs: an object with
`prepare(purpose)`, `busy`, `python`, `environment()`, `temp_root`, as `CoralBaySlicerLib.process.
EngineRunner`) and `openSession(argv, cwd)` (the long-lived interactive engine: an object with
`start`, `request`, `poll`, `cancel`, `close`, as `CoralBaySlicerLib.interactive_session.
InteractiveSession`). The remote engine plugs in there: `useRemoteEngine()` makes segment and
classify jobs (`jobRunner`) and interactive sessions go to a `coralbay serve` server; compare,
export, the phantom and teach stay local (`remote_runner.LOCAL_ONLY_SENTENCE`). The token lives
only in memory (in the `RemoteEngine`), never in the scene or the parameter node.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
from typing import Optional

import qt

import slicer
from CoralBaySlicerLib import paths
from CoralBaySlicerLib.interactive_session import InteractiveSession
from CoralBaySlicerLib.jobs import Job, JobController
from CoralBaySlicerLib.process import EngineBusyError, EngineRunner
from CoralBaySlicerLib.remote_client import RemoteEngine, RemoteError
from CoralBaySlicerLib.remote_runner import LOCAL_ONLY_SENTENCE, RemoteRunner
from CoralBaySlicerScene.scene_guard import keepSceneOnFailure

MODULE_DIR = pathlib.Path(__file__).resolve().parent.parent
LOG_LEVELS = ("debug", "info", "warning", "error")
REMOTE_PURPOSES = ("segmentation", "classification")


def cacheFolder(*parts: str) -> pathlib.Path:
    """A folder of CoralBay's under Slicer's cache (features, examples, the phantom...)."""
    return pathlib.Path(slicer.app.cachePath, "CoralBay", *parts)


def remoteEngine(url: str, token: str, caFile: str = "", fingerprint: str = "") -> RemoteEngine:
    """The client for the Engine section's settings; a missing CA file is one sentence (RemoteError)."""
    if caFile and not os.path.isfile(caFile):
        raise RemoteError(f"The CA file {caFile} was not found; give the ca.pem from your administrator.")
    return RemoteEngine(url, token, ca_file=caFile or None, fingerprint=fingerprint or None)


class EngineJobs:
    """Part of the module's Logic: the engine runner shared by the whole application, the job in
    progress (`jobs`, polled by `timer`) and the callbacks the panel and scripts set."""

    # Slicer's Python launcher; a Python with the engine's dependencies may be set instead.
    engineExecutable = shutil.which("PythonSlicer")
    # One engine run at a time in the whole application (shared by every logic instance).
    _runner: Optional[EngineRunner] = None
    # The remote engine when the panel's Engine is Remote (shared like the runner); None: local.
    _remote: Optional[RemoteRunner] = None
    POLL_INTERVAL_MS = 100

    def _initEngineJobs(self) -> None:
        self.progressCallback = None  # (fraction, message)
        self.logCallback = None       # (level, message)
        self.finishedCallback = None  # (job)
        self._onDone = None
        self.jobs = JobController(self.runner(), on_progress=self._progress, on_log=self._log,
                                  on_finished=self._finished)
        self.timer = self.newPollTimer(self.poll)

    def newPollTimer(self, slot):
        timer = qt.QTimer()
        timer.setInterval(self.POLL_INTERVAL_MS)
        timer.connect("timeout()", slot)
        return timer

    @classmethod
    def runner(cls) -> EngineRunner:
        if cls._runner is None or cls._runner.python != str(cls.engineExecutable):
            if not cls.engineExecutable:
                raise FileNotFoundError("Slicer's Python launcher (PythonSlicer) was not found.")
            cls._runner = EngineRunner(cls.engineExecutable, paths.engine_dir(MODULE_DIR),
                                       base_env=slicer.util.startupEnvironment(),
                                       temp_root=os.path.join(slicer.app.temporaryPath, "CoralBay"))
        return cls._runner

    @classmethod
    def useRemoteEngine(cls, url: str, token: str, caFile: str = "", fingerprint: str = "") -> str:
        """Send segment, classify and interactive work to a server; returns the sentence saying which
        workflows stay local. Raises RemoteError (one sentence) for an unusable address or token."""
        cls._remote = RemoteRunner(remoteEngine(url, token, caFile, fingerprint), temp_root=os.path.join(slicer.app.temporaryPath, "CoralBay"))
        return LOCAL_ONLY_SENTENCE

    @classmethod
    def useLocalEngine(cls) -> None:
        cls._remote = None

    @classmethod
    def remoteEngine(cls) -> Optional[RemoteEngine]:
        return cls._remote.engine if cls._remote else None

    @staticmethod
    def testConnection(url: str, token: str, caFile: str = "", fingerprint: str = "") -> str:
        """One sentence: who the server says we are and its models, or why it cannot be reached."""
        return remoteEngine(url, token, caFile, fingerprint).test_connection()

    def jobRunner(self, purpose: str):
        """The runner of a job: the server's for segment and classify when Remote is chosen, else local."""
        if self._remote is not None and purpose in REMOTE_PURPOSES:
            return self._remote
        return self.runner()

    def openSession(self, argv, cwd) -> InteractiveSession:
        """The interactive engine for `argv` (a `coralbay interact` command line), started (on the
        server when Remote is chosen)."""
        if self._remote is not None:
            return self._remote.open_session(argv, cwd)
        session = InteractiveSession(argv, env=self.runner().environment(), cwd=cwd)
        session.start()
        return session

    @property
    def busy(self) -> bool:
        return self.jobs.busy

    def _start(self, purpose: str, writeInputs, readOutputs, onDone=None) -> Job:
        if self.jobs.busy:
            raise EngineBusyError("Another CoralBay run is still in progress: wait for it or cancel it first.")
        self.jobs.runner = self.jobRunner(purpose)
        job = self.jobs.start(purpose, writeInputs, keepSceneOnFailure(readOutputs))
        self._onDone = onDone
        self.timer.start()
        return job

    def poll(self) -> None:
        self.jobs.poll()

    def wait(self, timeout: Optional[float] = None) -> Job:
        """Block until the current job has finished, keeping Slicer's GUI alive (scripts, tests)."""
        return self.jobs.wait(timeout, between_polls=slicer.app.processEvents)

    def cancelJob(self) -> None:
        self.jobs.cancel()

    def _progress(self, fraction: float, message: str) -> None:
        if self.progressCallback:
            self.progressCallback(fraction, message)

    def _log(self, level: str, message: str) -> None:
        getattr(logging, level if level in LOG_LEVELS else "info")(f"CoralBay: {message}")
        if self.logCallback:
            self.logCallback(level, message)

    def _finished(self, job: Job) -> None:
        self.timer.stop()
        onDone, self._onDone = self._onDone, None
        if onDone:
            onDone(job)
        if self.finishedCallback:
            self.finishedCallback(job)
