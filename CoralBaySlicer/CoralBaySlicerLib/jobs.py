"""One engine job from the module's point of view: write inputs, run, report, read outputs, clean up.

The module's Logic describes a job with two functions: `write_inputs(folder)` writes the input files
into the run's private folder and returns the engine arguments; `read_outputs(run)` turns the
engine's files into scene nodes. Everything in between is here, free of Slicer, so it is tested with
the real engine: the one-run-at-a-time rule, progress and log reporting, the error sentence of a
failed run, and the removal of the run's folder whatever happens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from coralbay.vocabulary import JobState
from CoralBaySlicerLib.process import EngineRun, EngineRunner

WriteInputs = Callable[[Path], list]
ReadOutputs = Callable[[EngineRun], Any]


@dataclass
class Job:
    """What the GUI needs to know about a job: its state, outcome and full log."""

    purpose: str
    run: EngineRun
    read_outputs: ReadOutputs
    state: JobState = JobState.RUNNING
    value: Any = None       # what read_outputs returned (nodes, tables...)
    error: str | None = None
    needs_confirmation: bool = False  # failed only because the user must confirm the run (ask, run again)
    log: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    def full_log(self) -> str:
        return "\n".join(self.log)


class JobController:
    """Runs the module's engine jobs, one at a time, and reports to callbacks.

    Callbacks (all optional): on_progress(fraction, message), on_log(level, message),
    on_finished(job). Call `poll()` from a timer (the GUI) or `wait()` (scripts, tests).
    """

    def __init__(self, runner: EngineRunner,
                 on_progress: Callable[[float, str], None] | None = None,
                 on_log: Callable[[str, str], None] | None = None,
                 on_finished: Callable[[Job], None] | None = None) -> None:
        self.runner = runner
        self.on_progress = on_progress
        self.on_log = on_log
        self.on_finished = on_finished
        self.job: Job | None = None
        self._polling = False  # reading outputs may process GUI events, which may fire the timer

    @property
    def busy(self) -> bool:
        return self.runner.busy

    def start(self, purpose: str, write_inputs: WriteInputs, read_outputs: ReadOutputs) -> Job:
        """Prepare a run, write its inputs, and start the engine. Raises EngineBusyError while a job
        runs, and whatever `write_inputs` raises (nothing is left behind in that case)."""
        with self.runner.prepare(purpose) as run:
            args = write_inputs(run.folder)
            run.start(self.runner.command(args))
        self.job = Job(purpose, run, read_outputs)
        self._log("info", f"Started {purpose}.")
        return self.job

    def poll(self) -> Job | None:
        """Dispatch the running job's new events; finish it when its process has ended."""
        job = self.job
        if job is None or job.finished or self._polling:
            return job
        self._polling = True
        try:
            self._dispatch(job)
        finally:
            self._polling = False
        return job

    def _dispatch(self, job: Job) -> None:
        for event in job.run.poll():
            kind = event.get("event")
            if kind == "progress" and self.on_progress:
                self.on_progress(job.run.fraction, str(event.get("message") or event.get("stage") or ""))
            elif kind == "log":
                self._log(str(event.get("level", "info")), str(event.get("message", "")))
            elif kind == "error":
                self._log("error", str(event.get("message", "")))
        if job.run.finished:
            self._finish(job)

    def wait(self, timeout: float | None = None, interval: float = 0.05,
             between_polls: Callable[[], None] | None = None) -> Job:
        """Poll until the job has finished (for scripts and tests; the GUI uses a timer)."""
        if self.job is None:
            raise RuntimeError("No job was started.")
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.job.finished:
            self.poll()
            if self.job.finished:
                break
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"The {self.job.purpose} did not finish within {timeout:g} s and was cancelled.")
            if between_polls:
                between_polls()
            time.sleep(interval)
        return self.job

    def cancel(self) -> None:
        """Stop the running job at once: kill the engine's process tree, remove its files."""
        job = self.job
        if job is None or job.finished or self._polling:
            return
        job.run.cancel()
        job.state = JobState.CANCELLED
        job.log = list(job.run.lines)
        self._log("warning", f"The {job.purpose} was cancelled.")
        if self.on_finished:
            self.on_finished(job)

    def _finish(self, job: Job) -> None:
        run = job.run
        try:
            if run.state == JobState.SUCCEEDED:
                job.value = job.read_outputs(run)
                job.state = JobState.SUCCEEDED
            else:
                job.state = run.state
                job.error = run.error
                job.needs_confirmation = bool(getattr(run, "needs_confirmation", False))
        except Exception as exc:  # noqa: BLE001 - reading outputs failed: report it, leave no files
            job.state = JobState.FAILED
            job.error = str(exc) or type(exc).__name__
        finally:
            job.log = list(run.lines)
            run.close()
        if job.state == JobState.FAILED:
            self._log("error", job.error or f"The {job.purpose} failed.")
        elif job.state == JobState.SUCCEEDED:
            self._log("info", f"Finished {job.purpose}.")
        if self.on_finished:
            self.on_finished(job)

    def _log(self, level: str, message: str) -> None:
        if self.on_log and message:
            self.on_log(level, message)
