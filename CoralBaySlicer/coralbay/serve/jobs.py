"""Segment and classify jobs of an uploaded image: `coralbay segment`/`classify` as processes.

Why the command line and not a call: a job runs the very code a user runs locally, in its own
process, so a crash or out-of-memory ends that job only, and cancel kills its process group.

Why a record per job (`<jobs>/<folder>/job.json`, written atomically at each change of state):
a finished result must outlive the server. After a restart, a job that was running is "done"
when its output is complete on disk (the commands write outputs atomically; the process may have
finished after the server died), otherwise "interrupted" (its leftover process is stopped) and
the client starts it again. Finished jobs are removed with the sessions' expiry time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from coralbay.atomic import write_text_atomic

from coralbay.errors import InputError
from coralbay.progress import decode_event
from coralbay.serve.idempotency import IdempotencyKey
from coralbay.serve.images import ImageStore, check_digest
from coralbay.serve.sessions import Busy, EngineSettings, NotFound, ServedModel
from coralbay.serve.worker import kill_group, start_engine

TASKS = {"segment": "segmentation", "classify": "classification"}
FINISHED = ("done", "failed", "cancelled", "interrupted")
INTERRUPTED = "The server restarted while this job ran; start it again."


@dataclass
class Job:
    id: str
    user: str
    task: str
    model: str
    folder: Path
    state: str = "running"
    fraction: float = 0.0
    message: str = ""
    error: str | None = None
    needs_confirmation: bool = False   # refused as a long run: the client may ask and send allow_long_run
    pid: int | None = None
    finished_at: float | None = None
    idempotency: dict = field(default_factory=dict)   # IdempotencyKey.record() of the request that made it
    process: asyncio.subprocess.Process | None = None
    runner: asyncio.Task | None = field(default=None, repr=False)

    def public(self) -> dict:
        return {"job": self.id, "task": self.task, "model": self.model, "state": self.state,
                "fraction": self.fraction, "message": self.message, "error": self.error,
                "needs_confirmation": self.needs_confirmation}

    @property
    def output(self) -> Path:
        return self.folder / ("labels.nrrd" if self.task == "segment" else "report.json")

    @property
    def output_complete(self) -> bool:
        """The command's outputs are all there (each was renamed into place only when complete)."""
        from coralbay.io.labels import label_table_path_for

        return self.output.is_file() and (self.task != "segment" or label_table_path_for(self.output).is_file())

    def save(self) -> None:
        record = {"id": self.id, "user": self.user, "task": self.task, "model": self.model, "state": self.state,
                  "fraction": self.fraction, "message": self.message, "error": self.error, "pid": self.pid,
                  "needs_confirmation": self.needs_confirmation,
                  "finished_at": self.finished_at, **self.idempotency}
        write_text_atomic(self.folder / "job.json", json.dumps(record))

    def finish(self, state: str, error: str | None = None) -> None:
        self.state, self.finished_at = state, time.time()
        self.error = error if error is not None else self.error
        self.fraction = 1.0 if state == "done" else self.fraction
        self.save()


def _load(record_path: Path) -> Job:
    record = json.loads(record_path.read_text(encoding="utf-8"))
    job = Job(str(record["id"]), str(record["user"]), str(record["task"]), str(record["model"]), record_path.parent,
              str(record["state"]), float(record.get("fraction") or 0), str(record.get("message") or ""),
              record.get("error"), bool(record.get("needs_confirmation")), record.get("pid"), record.get("finished_at"),
              {k: str(record[k]) for k in ("idempotency_key", "request_sha256") if k in record})
    if job.state == "running":   # the server stopped while it ran
        _stop_leftover(job)
        job.finish("done") if job.output_complete else job.finish("interrupted", INTERRUPTED)
    return job


def _stop_leftover(job: Job) -> None:
    """Kill the job's process group if it outlived the server (checked by its command line, so a
    reused process id is never killed)."""
    if not job.pid:
        return
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{job.pid}/cmdline").read_bytes()
        if str(job.output).encode() in cmdline:
            os.killpg(job.pid, signal.SIGKILL)


def _job_options(body: dict) -> list[str]:
    """The few options a client may set, checked; never a path."""
    allowed = {"task", "model", "image", "overlap", "point", "allow_long_run"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InputError(f"A job has no field {unknown[0]!r}; it takes {', '.join(sorted(allowed))}.")
    argv: list[str] = []
    overlap = body.get("overlap")
    if overlap is not None:
        if not isinstance(overlap, (int, float)) or isinstance(overlap, bool) or not 0 <= overlap < 1:
            raise InputError("The job's overlap must be a number from 0 to below 1.")
        argv += ["--overlap", str(float(overlap))]
    point = body.get("point")
    if point is not None:
        if body.get("task") != "classify" or not isinstance(point, list) or len(point) != 3 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in point):
            raise InputError("A job's point is three finite numbers (mm, LPS), for classify only.")
        argv.append("--point=" + ",".join(str(float(v)) for v in point))  # "=": the first value may be negative
    allow = body.get("allow_long_run", False)
    if not isinstance(allow, bool) or (allow and body.get("task") != "classify"):
        raise InputError("A job's allow_long_run is true or false, for classify only.")
    if allow:   # the user confirmed a run estimated over a minute (the panel's "Run it anyway?")
        argv.append("--allow-long-run")
    return argv


class JobManager:
    def __init__(self, root: Path, models: dict[str, ServedModel], images: ImageStore,
                 settings: EngineSettings) -> None:
        self.root, self.models, self.images, self.settings = Path(root), models, images, settings
        self.jobs: dict[str, Job] = {}
        # One job start at a time per user: the start awaits (its image, its process), and without
        # this two requests at once would both pass the cap of running jobs or both miss a repeated key.
        self._starting: dict[str, asyncio.Lock] = {}
        for record_path in sorted(self.root.glob("*/job.json")):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                job = _load(record_path)
                self.jobs[job.id] = job

    async def create(self, user: str, body: object, key: IdempotencyKey | None = None) -> Job:
        """Start a job; a request repeated with its Idempotency-Key gets the job it started."""
        async with self._starting.setdefault(user, asyncio.Lock()):
            earlier = key.earlier(self.jobs.values(), lambda j: (j.user, j.idempotency), "job") if key else None
            return earlier if earlier is not None else await self._start(user, body, key)

    async def _start(self, user: str, body: object, key: IdempotencyKey | None) -> Job:
        if not isinstance(body, dict):
            raise InputError("A job is a JSON object with task, model and image.")
        task = body.get("task")
        if task not in TASKS:
            raise InputError("A job's task is segment or classify.")
        model = self.models.get(body.get("model")) if isinstance(body.get("model"), str) else None
        if model is None or model.task != TASKS[task]:
            names = ", ".join(n for n, m in self.models.items() if m.task == TASKS[task]) or "none"
            raise InputError(f"Choose a {TASKS[task]} model this server offers: {names}.")
        digest = check_digest(str(body.get("image", "")))
        options = _job_options(body)
        running = sum(j.user == user and j.state == "running" for j in self.jobs.values())
        if running >= self.settings.limits.jobs_per_user:
            raise Busy("You have as many jobs running as this server allows; wait for one to finish.")
        try:
            image = await asyncio.to_thread(self.images.engine_file, user, digest)
        except FileNotFoundError:
            raise NotFound("There is no uploaded image with that SHA-256 (upload it first).") from None
        job = Job(secrets.token_urlsafe(16), user, task, model.name, self.root / secrets.token_hex(8),
                  idempotency=key.record() if key is not None else {})
        job.folder.mkdir(parents=True, mode=0o700)
        argv = [task, str(image), "--model", str(model.folder), "--output", str(job.output),
                "--progress", "jsonl", "--device", self.settings.device, *options]
        job.process = await start_engine(argv, job.folder / "job.log")
        job.pid = job.process.pid
        job.save()
        job.runner = asyncio.get_running_loop().create_task(self._follow(job))
        self.jobs[job.id] = job
        return job

    async def _follow(self, job: Job) -> None:
        assert job.process is not None and job.process.stdout is not None
        async for line in job.process.stdout:
            event = decode_event(line.decode("utf-8", "replace"))
            if event is None:
                continue
            if event.get("event") == "progress":
                job.fraction, job.message = float(event.get("fraction") or 0), str(event.get("message") or "")
            elif event.get("event") == "error":
                job.error = str(event.get("message"))
                job.needs_confirmation = bool(event.get("needs_confirmation"))
        code = await job.process.wait()
        if job.state == "running":
            if code == 0 and job.output_complete:
                job.finish("done")
            else:
                job.finish("failed", job.error or f"The engine stopped with exit code {code}.")

    def get(self, user: str, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None or not secrets.compare_digest(job.user.encode(), user.encode()):
            raise NotFound("There is no such job.")
        return job

    def cancel(self, user: str, job_id: str) -> Job:
        job = self.get(user, job_id)
        if job.state == "running":
            kill_group(job.process)
            job.finish("cancelled", "Cancelled.")
        return job

    def result(self, user: str, job_id: str) -> Job:
        job = self.get(user, job_id)
        if job.state != "done":
            raise InputError(f"The job is {job.state}; its result exists only when it is done.")
        return job

    async def sweep(self, now: float | None = None) -> int:
        """Remove finished jobs older than the sessions' expiry time; returns how many."""
        now = time.time() if now is None else now
        old = [j for j in self.jobs.values() if j.state in FINISHED and j.finished_at is not None
               and now - j.finished_at > self.settings.limits.session_expire_s]
        for job in old:
            self.jobs.pop(job.id, None)
            await asyncio.to_thread(shutil.rmtree, job.folder, True)
        return len(old)

    async def close_all(self) -> None:
        """At shutdown: running jobs are stopped and say so; finished results stay on disk."""
        for job in self.jobs.values():
            if job.state == "running":
                kill_group(job.process)
                job.finish("interrupted", INTERRUPTED)
            if job.runner is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(job.runner, 5)


def read_label_result(job: Job) -> tuple[bytes, str]:
    """A finished segmentation as our volume format, and its label table (JSON text)."""
    import SimpleITK as sitk

    from coralbay.io.labels import label_table_path_for
    from coralbay.serve.volume_format import encode_volume

    image = sitk.ReadImage(str(job.output))
    body = encode_volume(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    table = label_table_path_for(job.output)
    return body, table.read_text(encoding="utf-8") if table.is_file() else "[]"


def read_report(job: Job) -> dict:
    """The classify report without the server's own file path of the input."""
    report = json.loads(job.output.read_text(encoding="utf-8"))
    report.pop("input", None)
    return report
