"""One `coralbay interact` process behind a session: write a request line, await its answer.

Why a separate process per session: the engine's state (model, features, undo stacks) and its
crashes stay with one user; the server only speaks the interact JSON-lines protocol
(docs/interactive.md) and depends on nothing inside `coralbay.interactive`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Callable

from coralbay.errors import CoralBayError
from coralbay.progress import decode_event

ENGINE_DIR = Path(__file__).resolve().parents[2]  # the folder holding the `coralbay` package
STREAM_LIMIT = 1 << 20


class WorkerDied(CoralBayError):
    """The engine process ended (killed, out of memory) before answering."""


def engine_environment() -> dict[str, str]:
    """The server's environment, with this engine first on the path (as `python -m coralbay` needs)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ENGINE_DIR), env.get("PYTHONPATH", "")) if p)
    return env


async def start_engine(argv: list[str], log_path: Path) -> asyncio.subprocess.Process:
    """`python -m coralbay ARGV` in its own process group (so a kill takes its children too)."""
    with log_path.open("ab") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "coralbay", *argv, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=log, env=engine_environment(), start_new_session=True,
            limit=STREAM_LIMIT)


def kill_group(process: asyncio.subprocess.Process | None) -> None:
    if process is not None and process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


class InteractWorker:
    """The process, its reader task and the answers it is awaited for (by request id)."""

    def __init__(self, argv: list[str], log_path: Path, on_event: Callable[[dict], None]) -> None:
        self.argv = argv
        self.log_path = log_path
        self.on_event = on_event
        self.process: asyncio.subprocess.Process | None = None
        self._waiting: dict[str, asyncio.Future] = {}
        self._next_id = 0
        self._reader: asyncio.Task | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None and not (
            self._reader is not None and self._reader.done())

    async def start(self) -> None:
        self.process = await start_engine(self.argv, self.log_path)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        try:
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    break
                event = decode_event(line.decode("utf-8", "replace").strip())
                if event is None:
                    continue
                request_id = event.get("id")
                if event.get("event") in ("result", "error") and request_id in self._waiting:
                    future = self._waiting.pop(request_id)
                    if not future.done():
                        future.set_result(event)
                elif event.get("event") == "progress":
                    self.on_event(event)
        except (ValueError, asyncio.LimitOverrunError):
            pass  # a line longer than the limit: the engine misbehaves; treat as ended
        finally:
            kill_group(self.process)
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(WorkerDied("The engine process of this session stopped."))
            self._waiting.clear()

    def _write(self, request: dict) -> None:
        if self.process is None or self.process.stdin is None or not self.alive:
            raise WorkerDied("The engine process of this session is not running.")
        self.process.stdin.write((json.dumps(request) + "\n").encode("utf-8"))

    async def ask(self, request: dict, timeout: float) -> dict:
        """Send one request and wait for its "result" or "error" event."""
        self._next_id += 1
        request_id = f"s{self._next_id}"
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        self._write({**request, "id": request_id})
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            self.kill()
            raise WorkerDied("The engine took longer than the server's answer timeout; it was stopped.") from None
        finally:
            self._waiting.pop(request_id, None)

    def cancel(self) -> None:
        """The protocol's cancel: what runs or waits in the worker answers "Cancelled."."""
        with contextlib.suppress(WorkerDied, OSError):
            self._write({"type": "cancel", "id": "cancel"})

    def kill(self) -> None:
        kill_group(self.process)

    async def close(self) -> None:
        with contextlib.suppress(WorkerDied, OSError):
            self._write({"type": "quit", "id": "quit"})
        if self.process is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.process.wait(), 5)
        self.kill()
