"""Run one engine command at a time in a background process and read its JSON-lines progress.

Why a separate process: inference takes minutes and PyTorch may exhaust memory or crash; in its own
process it can neither freeze nor take down Slicer, and Cancel can stop it at any moment.
Why a reader thread: reading the process's output blocks; a thread reads each line, decodes it
(JSON-lines protocol of `coralbay.progress`) and puts it on a queue, and the GUI drains the queue
from a timer (`EngineRun.poll`), so the GUI never waits on the process.
Why a private folder per run: Slicer and the engine exchange files there; the engine writes every
output inside it (under temporary names, renamed when complete), and the folder is removed when the
run is closed or cancelled, so a failed or cancelled run leaves nothing behind.
Why kill the process tree: Slicer's `PythonSlicer` is a launcher that starts the real Python as a
child; killing only the launcher would leave the engine running.

Standard library only (psutil is imported when a run is cancelled), so this works before any of the
engine's heavy dependencies are installed.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Mapping, Sequence

from coralbay.progress import decode_event
from coralbay.vocabulary import JobState

END_OF_OUTPUT = object()  # queue marker: the process closed its output


def pump_output(stream: IO[str], out: queue.Queue) -> None:
    """A reader thread's body: put each line of `stream` on `out` as (text, decoded event or None),
    decoded here, off the GUI thread; `END_OF_OUTPUT` when the stream ends or is closed."""
    try:
        for line in stream:
            text = line.rstrip("\r\n")
            out.put((text, decode_event(text)))
    except (OSError, ValueError):
        pass  # the pipe was closed because the run is being cancelled
    finally:
        out.put(END_OF_OUTPUT)


@dataclass
class DrainedOutput:
    """What `drain_output` took off the queue."""

    events: list[dict]  # protocol events, and other non-empty lines as {"event": "log", ..., "raw": True}
    ended: bool         # the process closed its output


def drain_output(out: queue.Queue, lines: list[str]) -> DrainedOutput:
    """Everything `pump_output` has queued so far (never blocks), each line also appended to
    `lines`. Lines that are not protocol events (library warnings, the engine's stderr sentence)
    become {"event": "log", "level": "info", "message": line, "raw": True}; blank ones are dropped.
    The one drain of engine output: one-shot runs (`EngineRun`) and the interactive session."""
    drained = DrainedOutput([], False)
    while True:
        try:
            item = out.get_nowait()
        except queue.Empty:
            return drained
        if item is END_OF_OUTPUT:
            drained.ended = True
            continue
        text, event = item
        lines.append(text)
        if event is None:
            if not text.strip():
                continue
            event = {"event": "log", "level": "info", "message": text, "raw": True}
        drained.events.append(event)

FINISHED_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class EngineBusyError(RuntimeError):
    """A second run was requested while one is still running (the engine runs one job at a time)."""


def kill_process_tree(pid: int, timeout: float = 10.0) -> list[int]:
    """Kill a process and all its descendants; return the ids of the processes that were killed.

    The parent is suspended first so that it cannot start new children while they are collected.
    Without psutil (before the dependencies are installed) the process group is killed instead:
    runs are started in a session of their own, so the group is exactly the run's process tree.
    """
    try:
        import psutil
    except ImportError:
        return _kill_process_group(pid)
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    found: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        parent.suspend()
    found[parent.pid] = parent
    for _ in range(3):  # children started while listing show up in the next round
        new = []
        with contextlib.suppress(psutil.Error):
            new = [c for c in parent.children(recursive=True) if c.pid not in found]
        if not new:
            break
        for child in new:
            with contextlib.suppress(psutil.Error):
                child.suspend()
            found[child.pid] = child
    for proc in found.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(list(found.values()), timeout=timeout)
    return sorted(found)


def _kill_process_group(pid: int) -> list[int]:
    if os.name == "nt":
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(pid)], capture_output=True, check=False)
    else:
        import signal

        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    return [pid]


class EngineRun:
    """One engine command: its private folder, its process, and what it has reported so far.

    Life cycle: `EngineRunner.prepare()` creates it (state "prepared") with an empty folder; the caller
    writes inputs there and calls `start(argv)`; a timer calls `poll()` until `finished`; the caller
    reads the outputs from `folder` and calls `close()`, which removes the folder. `cancel()` may be
    called at any moment: it kills the process tree and closes the run.
    """

    OUTPUT_GRACE_S = 5.0

    def __init__(self, folder: Path, env: Mapping[str, str], on_close) -> None:
        self.folder = folder
        self.env = dict(env)
        self.state = JobState.PREPARED
        self.fraction = 0.0
        self.message = ""
        self.stage = ""
        self.result: dict | None = None
        self.error: str | None = None
        self.returncode: int | None = None
        self.lines: list[str] = []  # everything the process printed, for the "full log"
        self.argv: list[str] = []
        self._on_close = on_close
        self._closed = False
        self._process: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._reader: threading.Thread | None = None
        self._output_ended = False
        self._exited_at: float | None = None
        self._error_event: dict | None = None

    # -- starting -------------------------------------------------------------------------------

    def start(self, argv: Sequence[str]) -> None:
        """Start the command; returns at once (the process runs in the background)."""
        if self.state != JobState.PREPARED:
            raise RuntimeError(f"This run was already started (state {self.state}).")
        self.argv = [str(a) for a in argv]
        options: dict = {}
        if os.name == "nt":
            options["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000)
        else:
            options["start_new_session"] = True  # Ctrl-C in Slicer's terminal does not reach it
        self._process = subprocess.Popen(
            self.argv, cwd=str(self.folder), env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
            errors="replace", bufsize=1, **options)
        self.state = JobState.RUNNING
        self._reader = threading.Thread(target=self._read_output, name="CoralBay engine output", daemon=True)
        self._reader.start()

    def _read_output(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        pump_output(self._process.stdout, self._queue)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    # -- polling --------------------------------------------------------------------------------

    def poll(self) -> list[dict]:
        """Events reported since the last call (never blocks); updates the state when the run ends.

        Lines that are not protocol events (library warnings, the engine's stderr sentence) are
        returned as {"event": "log", "level": "info", "message": line, "raw": True}.
        """
        if self.state != JobState.RUNNING:
            return []
        drained = drain_output(self._queue, self.lines)
        self._output_ended = self._output_ended or drained.ended
        events = drained.events
        for event in events:
            self._apply(event)
        if self._process is not None and self._process.poll() is not None:
            # A grandchild that outlives the engine could keep the pipe open: stop waiting for the
            # end of the output a few seconds after the engine itself has exited.
            self._exited_at = self._exited_at or time.monotonic()
            if self._output_ended or time.monotonic() - self._exited_at > self.OUTPUT_GRACE_S:
                self._finish(self._process.returncode)
        return events

    def _apply(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "progress":
            with contextlib.suppress(TypeError, ValueError):
                self.fraction = min(1.0, max(0.0, float(event.get("fraction", self.fraction))))
            self.stage = str(event.get("stage", self.stage))
            self.message = str(event.get("message", ""))
        elif kind == "result":
            self.result = event
        elif kind == "error":
            self._error_event = event

    def _finish(self, returncode: int) -> None:
        self.returncode = returncode
        if returncode == 0 and self._error_event is None:
            self.state = JobState.SUCCEEDED
            self.fraction = 1.0
            return
        self.state = JobState.FAILED
        self.error = self._failure_sentence(returncode)

    @property
    def needs_confirmation(self) -> bool:
        """The engine refused a run the user must confirm first (a long classification): ask, then run
        again with the confirming option."""
        return bool(self._error_event and self._error_event.get("needs_confirmation"))

    def _failure_sentence(self, returncode: int) -> str:
        if self._error_event and str(self._error_event.get("message", "")).strip():
            return str(self._error_event["message"]).strip()
        if returncode < 0:
            return (f"The engine process was stopped by signal {-returncode} "
                    "(killed from outside, or it crashed, for example out of memory).")
        for line in reversed(self.lines):
            text = line.strip()
            if text and decode_event(text) is None and not text.startswith(("Traceback", "File ")):
                return text.removeprefix("coralbay: error: ")
        return f"The engine stopped with exit code {returncode} and no message."

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> str:
        """Poll until the run finishes (for scripts and tests; the GUI polls from a timer instead)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state == JobState.RUNNING:
            self.poll()
            if self.state != JobState.RUNNING:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"The engine run did not finish within {timeout} s.")
            time.sleep(interval)
        return self.state

    def full_log(self) -> str:
        return "\n".join(self.lines)

    # -- ending ---------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop the run now: kill the whole process tree, then remove the run's folder."""
        if self.state == JobState.RUNNING and self._process is not None:
            self.state = JobState.CANCELLED
            kill_process_tree(self._process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=10)
            self.returncode = self._process.returncode
        elif self.state == JobState.PREPARED:
            self.state = JobState.CANCELLED
        self.close()

    def close(self) -> None:
        """Release the run: remove its folder (and every file in it) and let the next run start."""
        if self._closed:
            return
        if self.state == JobState.RUNNING:
            raise RuntimeError("Cancel the run before closing it.")
        if self._reader is not None:
            self._reader.join(timeout=10)
        if self._process is not None and self._process.stdout is not None:
            with contextlib.suppress(OSError):
                self._process.stdout.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        self._closed = True
        self._on_close(self)

    @property
    def closed(self) -> bool:
        return self._closed


class OneRunAtATime:
    """The one-run-at-a-time rule shared by the local runner and the remote one
    (`remote_runner.RemoteRunner`): `current` is the open run, each run gets a new private folder
    under `temp_root`, and a run releases the runner when it closes (`_release`)."""

    temp_root: Path | None = None
    current = None

    @property
    def busy(self) -> bool:
        return self.current is not None

    @contextlib.contextmanager
    def _reserve(self, purpose: str, make_run) -> Iterator:
        """Raises EngineBusyError while another run is open. If the `with` body raises (for example
        while writing the input volume), the run is cancelled: its folder removed, the runner released."""
        if self.current is not None:
            raise EngineBusyError("Another CoralBay run is still in progress: wait for it or cancel it first.")
        if self.temp_root is not None:
            self.temp_root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"CoralBay-{_safe(purpose)}-",
                                       dir=str(self.temp_root) if self.temp_root else None))
        run = self.current = make_run(folder)
        try:
            yield run
        except BaseException:
            run.cancel()
            raise

    def _release(self, run) -> None:
        if self.current is run:
            self.current = None


class EngineRunner(OneRunAtATime):
    """Starts engine commands (`<python> -m coralbay ...`), one at a time.

    `python` is Slicer's `PythonSlicer` inside Slicer (any Python with the engine's dependencies
    elsewhere); `engine_dir` is the folder that contains the `coralbay` package and is put first on
    the process's PYTHONPATH.
    """

    def __init__(self, python: str | os.PathLike, engine_dir: str | os.PathLike,
                 base_env: Mapping[str, str] | None = None, temp_root: str | os.PathLike | None = None) -> None:
        self.python = str(python)
        self.engine_dir = str(engine_dir)
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.temp_root = Path(temp_root) if temp_root else None
        self.current: EngineRun | None = None

    def command(self, args: Sequence[str]) -> list[str]:
        return [self.python, "-m", "coralbay", *map(str, args)]

    def environment(self) -> dict[str, str]:
        env = dict(self.base_env)
        paths = [self.engine_dir] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        env["PYTHONUNBUFFERED"] = "1"  # progress lines arrive as they are printed
        env["PYTHONIOENCODING"] = "utf-8"
        return env

    def prepare(self, purpose: str = "run") -> contextlib.AbstractContextManager[EngineRun]:
        """Reserve the engine and create the run's private folder (see `OneRunAtATime._reserve`)."""
        return self._reserve(purpose, lambda folder: EngineRun(folder, self.environment(), self._release))

def _safe(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text)[:32] or "run"
