"""The remote engine with the local runner's shape, so the panel's jobs and sessions need no second path.

Why: `engine_jobs.EngineJobs` reaches the engine only through `runner()` (one-shot jobs: `prepare`,
`command`, `busy`, `python`, `temp_root`, `environment`) and `openSession(argv, cwd)`. `RemoteRunner`
offers the same for a `RemoteEngine`: a run's `start(args)` reads the engine arguments the panel
built (`commands.segment_args` / `classify_args`) and sends them as a `RemoteJob` on the server, so
the Logic's `writeInputs`/`readOutputs` are the ones of the local engine. Standard library only.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Sequence

from CoralBaySlicerLib.process import OneRunAtATime
from CoralBaySlicerLib.remote_client import RemoteEngine, RemoteError, RemoteJob
from CoralBaySlicerLib.remote_session import RemoteInteractiveSession

ENGINE_CHOICES = ("Local", "Remote")
REMOTE_TASKS = {"segment": "segment", "classify": "classify"}
LOCAL_WORKFLOWS = ("compare", "export", "phantom", "teach")
LOCAL_ONLY_SENTENCE = ("On the remote engine Segment, Classify and Interactive run on the server; "
                       "Compare, Export, the sample phantom and Teach model run on this computer.")
REFUSED_OPTIONS = {"--backbone": "other encoder weights", "--structures": "a choice of structures",
                   "--roi": "a region of interest"}


class RemoteEngineError(RemoteError):
    """A panel setting the remote engine cannot honour, as one sentence."""


def option(args: Sequence[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in an engine command line, or None."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def job_request(args: Sequence[str]) -> tuple[str, str, dict]:
    """(task, model, options) of a segment/classify command line, in the server's job terms."""
    args = [str(a) for a in args]
    task = REMOTE_TASKS.get(args[0]) if args else None
    if task is None:
        raise RemoteEngineError(f"The {args[0] if args else 'empty'} command runs on this computer, not on the remote engine.")
    for name, what in REFUSED_OPTIONS.items():
        if option(args, name) is not None:
            raise RemoteEngineError(f"The remote engine does not take {what}; clear it or choose the Local engine.")
    options: dict = {}
    overlap = option(args, "--overlap")
    if overlap is not None:
        options["overlap"] = float(overlap)
    point = option(args, "--point")
    if point is not None:
        options["point"] = [float(v) for v in point.split(",")]
    if "--allow-long-run" in args:   # the user answered the panel's "Run it anyway?"
        options["allow_long_run"] = True
    return task, option(args, "--model") or "", options


class RemoteRun:
    """One job on the server, shaped like `process.EngineRun`: a private local folder for inputs and
    outputs, `start(args)`, `poll()`, `finished`, `state`, `fraction`, `result`, `error`, `lines`,
    `cancel()`, `close()` (removes the folder)."""

    def __init__(self, engine: RemoteEngine, folder: Path, on_close) -> None:
        self.engine, self.folder, self._on_close = engine, folder, on_close
        self.job: RemoteJob | None = None
        self.state, self.error, self.result = "prepared", None, None
        self.lines: list[str] = []
        self._closed = False

    @property
    def fraction(self) -> float:
        return self.job.fraction if self.job else 0.0

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed", "cancelled")

    @property
    def needs_confirmation(self) -> bool:
        """Refused as a long run, as `EngineRun.needs_confirmation` (the panel asks, then runs again)."""
        return bool(self.job and self.job.needs_confirmation)

    def start(self, args: Sequence[str]) -> None:
        task, model, options = job_request(args)
        self.job = RemoteJob(self.engine, task, model, self.folder / "outputs", **options)
        self.job.start(str(args[1]))
        self.state = "running"
        self.lines.append(f"{task} of {model} on {self.engine.scheme}://{self.engine.host}:{self.engine.port}")

    def poll(self) -> list[dict]:
        if self.job is None or self.finished:
            return []
        try:
            events = self.job.poll()
        except RemoteError as exc:
            self.state, self.error = "failed", str(exc)
            return [{"event": "error", "message": self.error}]
        self.lines += [str(e.get("message", "")) for e in events if e.get("message")]
        if self.job.finished:
            self.state, self.error, self.result = self.job.state, self.job.error, self.job.result
        return events

    def cancel(self) -> None:
        if self.job is not None and not self.finished:
            with contextlib.suppress(RemoteError):
                self.job.cancel()
        if not self.finished:
            self.state = "cancelled"
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            shutil.rmtree(self.folder, ignore_errors=True)
            self._on_close(self)


class RemoteRunner(OneRunAtATime):
    """`process.EngineRunner`'s interface on a server: one run at a time, each in its own folder."""

    python = ""   # no local engine process; `openSession` below ignores the command line's interpreter

    def __init__(self, engine: RemoteEngine, temp_root: str | Path | None = None) -> None:
        self.engine = engine
        self.temp_root = Path(temp_root) if temp_root else None
        self.current: RemoteRun | None = None

    def command(self, args: Sequence[str]) -> list[str]:
        return [str(a) for a in args]

    def environment(self) -> dict[str, str]:
        return {}

    def prepare(self, purpose: str = "run") -> contextlib.AbstractContextManager[RemoteRun]:
        """Reserve the engine and create the run's private folder (`process.OneRunAtATime`'s rules)."""
        return self._reserve(purpose, lambda folder: RemoteRun(self.engine, folder, self._release))

    def open_session(self, argv: Sequence[str], cwd: str | Path) -> RemoteInteractiveSession:
        """The interactive session for a `coralbay interact` command line: its model on the server."""
        if option(argv, "--backbone") is not None:
            raise RemoteEngineError("The remote engine does not take other encoder weights; clear them or choose the Local engine.")
        session = RemoteInteractiveSession(self.engine, option(argv, "--model") or "", Path(cwd) / "remote")
        session.start()
        return session
