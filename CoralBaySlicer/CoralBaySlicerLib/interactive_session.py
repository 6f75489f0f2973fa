"""A long-lived `coralbay interact` process for the Slicer module's Interactive section.

Why long-lived: the engine keeps the model and the scan's features loaded, so an answer to a click
takes a fraction of a second; `process.EngineRun` runs one command per process and cannot do that.
Why a reader thread and `poll()`: as in `process.py`, reading the process's output blocks; a thread
decodes each line onto a queue and the GUI drains it from a timer, so the GUI never waits.
Why a replay log: the engine process may die (killed, out of memory). The session remembers the
scan it opened, the structure in progress (name, value, whether `start` proposed) and the prompts
that were answered, undo and redo included; when the process is found dead it starts a new one with
the same --output-dir, --cache and --examples folder (accepted work stays there on disk), re-opens
the scan, starts the structure the same way (the proposal is made again from the same examples),
replays its prompts and re-sends the requests that were still waiting. The caller
sees the answers it asked for, as if nothing had happened, plus one "log" event saying so.
Why cancel kills when needed: the protocol's "cancel" request stops the feature computation at
once, but not a head being fitted; when the cancelled requests have not answered within
`CANCEL_GRACE_S`, the process tree is killed and restarted (state replayed), so Cancel never waits.

Standard library only (plus the engine's stdlib-only `coralbay.progress`, `coralbay.interactive.messages`
(the protocol's names) and `coralbay.io.examples` (the examples folder's layout), `commands.model_args`
and `process.kill_process_tree`; psutil when present).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from coralbay.interactive.messages import PROMPTS, EventKind, Request
from coralbay.io.examples import SCANS_FOLDER, example_masks, kept_scans, scans_in_use  # noqa: F401 (example_masks: API)
from coralbay.progress import decode_event
from CoralBaySlicerLib.commands import model_args
from CoralBaySlicerLib.process import drain_output, kill_process_tree, pump_output

PROPOSAL = {"type": "proposal"}  # in ReplayLog.undone: the proposal, undone by the user
REPLAY_ID_PREFIX = "replay-"  # ids of the requests the session sends itself when it restarts


class SessionError(RuntimeError):
    """The session cannot go on (the engine died again while restarting, or the session is closed)."""


@dataclass
class ReplayLog:
    """What a fresh engine process needs to reach the state the dead one was in.

    Why the proposal is recorded: `start` may answer with an automatic proposal (`proposed_by`),
    which the engine keeps as the structure's first state; the replay starts the structure the
    same way (`propose`), so the fresh engine proposes again from the same accepted examples, and
    undoes it if the user had undone it (a model's proposal is a prompt the engine can undo)."""

    scan: str | None = None
    structure: str | None = None
    value: int | None = None
    propose: bool = False                   # the structure's `start` asked for a proposal
    proposed_by: str | None = None          # ... and got one: "examples" or the --propose-with model
    proposal_undone: bool = False           # the user undid the proposal itself
    prompts: list[dict] = field(default_factory=list)   # answered prompts of the structure, in order
    undone: list[dict] = field(default_factory=list)    # prompts taken back by undo (redo brings them back)
    accepted: dict[str, int] = field(default_factory=dict)  # name -> label value (kept on disk by the engine)

    def requests(self) -> list[dict]:
        out: list[dict] = []
        if self.scan is None:
            return out
        out.append({"type": Request.OPEN.value, "image": self.scan})
        if self.structure is not None:
            out.append({"type": Request.START.value, "name": self.structure, "value": self.value, "propose": self.propose})
            if self.proposal_undone:
                out.append({"type": Request.UNDO.value, "name": self.structure})
            out += [dict(p) for p in self.prompts]
        return out

    def record(self, request: dict, result: dict) -> None:
        """Update the log with one answered request."""
        kind = request.get("type")
        if kind == Request.OPEN:
            self.scan = str(request["image"])
            self._forget_structure()
            self.accepted = {}
        elif kind == Request.START:
            self._forget_structure()
            self.structure, self.value = str(result["name"]), int(result["value"])
            self.propose = bool(request.get("propose", True))
            self.proposed_by = result.get("proposed_by") or None
        elif kind in PROMPTS:
            self.prompts.append({k: v for k, v in request.items() if k != "id"})
            self.undone = []
        elif kind == Request.UNDO and self.prompts:
            self.undone.append(self.prompts.pop())
        elif kind == Request.UNDO and self.proposed_by and not self.proposal_undone:
            self.proposal_undone = True
            self.undone.append(PROPOSAL)  # redo brings it back, a new prompt discards it for good
        elif kind == Request.REDO and self.undone:
            redone = self.undone.pop()
            if redone is PROPOSAL:
                self.proposal_undone = False
            else:
                self.prompts.append(redone)
        elif kind == Request.ACCEPT:
            self.accepted[str(result["name"])] = int(result["value"])
            if result.get("name") == self.structure:
                self._forget_structure()

    def _forget_structure(self) -> None:
        self.structure, self.value, self.prompts, self.undone = None, None, [], []
        self.propose, self.proposed_by, self.proposal_undone = False, None, False


class InteractiveSession:
    """`coralbay interact` in a background process: `request()` returns at once with an id, a
    timer calls `poll()` for the events (each with "id"), `cancel()` stops what is waiting."""

    CANCEL_GRACE_S = 2.0
    OUTPUT_GRACE_S = 2.0
    MAX_RESTARTS_WITHOUT_ANSWER = 2

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None):
        """`argv`: the full `coralbay interact ...` command line (see `interact_argv`)."""
        self.argv = [str(a) for a in argv]
        self.env = dict(os.environ if env is None else env)
        self.cwd = str(cwd) if cwd else None
        self.log = ReplayLog()
        self.restarts = 0
        self.lines: list[str] = []
        self._process: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._next_id = 0
        self._pending: dict[str, dict] = {}      # id -> request sent and not yet answered
        self._replaying: dict[str, dict] = {}    # replay id -> request
        self._failed_restarts = 0
        self._cancel_deadline: float | None = None
        self._cancelled_ids: list[str] = []
        self._closed = False
        self._output_ended = False
        self._exited_at: float | None = None

    # -- process --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine process (returns at once; requests may be sent before it is ready)."""
        options: dict = {}
        if os.name == "nt":
            options["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000)
        else:
            options["start_new_session"] = True
        self._queue = queue.Queue()
        self._output_ended, self._exited_at = False, None
        self._process = subprocess.Popen(
            self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace", bufsize=1, **options)
        threading.Thread(target=pump_output, args=(self._process.stdout, self._queue),
                         name="CoralBay interactive output", daemon=True).start()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def busy(self) -> bool:
        """Requests are waiting for their answer (the caller's or the restart's own)."""
        return bool(self._pending or self._replaying)

    # -- requests -------------------------------------------------------------------------------

    def request(self, kind: str, **fields) -> str:
        """Send one request; returns its id (the events answering it carry it)."""
        if self._closed:
            raise SessionError("The interactive session is closed; start a new one.")
        self._next_id += 1
        request_id = str(self._next_id)
        request = {"id": request_id, "type": kind, **fields}
        self._pending[request_id] = request
        self._write(request)
        return request_id

    def _write(self, request: dict) -> None:
        if self._process is None or self._process.stdin is None:
            return
        try:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
        except (OSError, ValueError):
            pass  # the process died: the next poll restarts it and re-sends what is pending

    def cancel(self) -> list[str]:
        """Cancel every request still waiting; returns their ids. Their answer is an "error" event
        "Cancelled." (from the engine, or from here if it has to be killed after CANCEL_GRACE_S)."""
        ids = list(self._pending)
        if not ids:
            return ids
        self._cancelled_ids = ids
        self._cancel_deadline = time.monotonic() + self.CANCEL_GRACE_S
        self._next_id += 1
        self._write({"id": f"cancel-{self._next_id}", "type": Request.CANCEL.value})
        return ids

    # -- events ---------------------------------------------------------------------------------

    def poll(self) -> list[dict]:
        """Events since the last call (never blocks). A dead process is restarted here."""
        events: list[dict] = []
        drained = drain_output(self._queue, self.lines)
        for event in drained.events:
            events += [event] if event.get("raw") else self._handle(event)
        if self._cancel_deadline is not None and time.monotonic() > self._cancel_deadline:
            events += self._kill_cancelled()
        if drained.ended:
            self._output_ended = True
        if not self._closed and self._process is not None and self._process.poll() is not None:
            # Its last lines may still be on their way: restart once the output has ended (or soon after).
            self._exited_at = self._exited_at or time.monotonic()
            if self._output_ended or time.monotonic() - self._exited_at > self.OUTPUT_GRACE_S:
                events += self._restart()
        return events

    def _handle(self, event: dict) -> list[dict]:
        request_id = None if event.get("id") is None else str(event.get("id"))
        kind = event.get("event")
        if request_id in self._replaying:
            if kind == EventKind.RESULT:
                self.log_result(self._replaying.pop(request_id), event, replay=True)
            elif kind == EventKind.ERROR:
                request = self._replaying.pop(request_id)
                return [{"event": EventKind.LOG.value, "level": "warning",
                         "message": f"Restoring the session after the engine restarted: the {request['type']} "
                                    f"request failed ({event.get('message')})."}]
            return [event] if kind == EventKind.PROGRESS else []
        if kind in (EventKind.RESULT, EventKind.ERROR) and request_id in self._pending:
            request = self._pending.pop(request_id)
            if kind == EventKind.RESULT:
                self._failed_restarts = 0
                self.log_result(request, event)
            if request_id in self._cancelled_ids:
                self._cancelled_ids.remove(request_id)
                if not self._cancelled_ids:
                    self._cancel_deadline = None
        if request_id is not None and request_id.startswith("cancel-"):
            return []
        return [event]

    def log_result(self, request: dict, event: dict, replay: bool = False) -> None:
        if not replay:  # a replayed request repeats what the log already holds
            self.log.record(request, event)

    def _kill_cancelled(self) -> list[dict]:
        """The engine did not stop in time: kill it, answer the cancelled requests, restart."""
        events = [{"event": EventKind.ERROR.value, "id": i, "request": self._pending[i]["type"], "message": "Cancelled.",
                   "exit_code": 130} for i in self._cancelled_ids if i in self._pending]
        for request_id in self._cancelled_ids:
            self._pending.pop(request_id, None)
        self._cancelled_ids, self._cancel_deadline = [], None
        self._kill()
        return events + self._restart(reason="Cancel stopped the engine process; it was restarted with "
                                             "the session's scan and prompts.", died=False)

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            kill_process_tree(self._process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self._process is None:
            return
        for pipe in (self._process.stdin, self._process.stdout):
            with contextlib.suppress(OSError, ValueError):
                if pipe is not None:
                    pipe.close()

    def _restart(self, reason: str | None = None, died: bool = True) -> list[dict]:
        """A fresh process in the state of the dead one; waiting requests are sent again.
        `died`: the process ended by itself (counts towards giving up), not killed by Cancel."""
        code = self._process.returncode if self._process else None
        self._close_pipes()
        self._failed_restarts += 1 if died else 0
        if self._failed_restarts > self.MAX_RESTARTS_WITHOUT_ANSWER:
            said = self._last_sentence()
            events = [{"event": EventKind.ERROR.value, "id": i, "request": r["type"], "exit_code": 1,
                       "message": f"The engine process stopped {self._failed_restarts} times in a row "
                                  f"({said or f'exit code {code}'}); the session was closed, its accepted work is kept."}
                      for i, r in self._pending.items()]
            self._pending, self._replaying = {}, {}
            self._closed = True
            return events
        self.restarts += 1
        self.start()
        self._replaying = {}
        for request in self.log.requests():
            self._next_id += 1
            request_id = f"{REPLAY_ID_PREFIX}{self._next_id}"
            self._replaying[request_id] = request
            self._write({"id": request_id, **request})
        for request in self._pending.values():
            self._write(request)
        return [{"event": EventKind.LOG.value, "level": "warning", "restarted": True,
                 "message": reason or f"The engine process stopped (exit code {code}); it was restarted with the "
                                      "session's scan and prompts, and the accepted work is kept."}]

    def _last_sentence(self) -> str:
        """The engine's last line that is not a protocol event (its one-sentence error on stderr)."""
        for line in reversed(self.lines):
            text = line.strip()
            if text and decode_event(text) is None and not text.startswith(("Traceback", "File ")):
                return text.removeprefix("coralbay: error: ").rstrip(".")
        return ""

    # -- scripts and tests ------------------------------------------------------------------------

    def wait(self, request_id: str, timeout: float = 120.0, interval: float = 0.02, between_polls=None) -> dict:
        """Poll until the answer ("result" or "error") to `request_id` arrives (the GUI polls from a timer)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.poll():
                if str(event.get("id")) == request_id and event.get("event") in (EventKind.RESULT, EventKind.ERROR):
                    return event
            if self._closed and request_id not in self._pending:
                raise SessionError("The interactive session is closed.")
            if time.monotonic() > deadline:
                raise TimeoutError(f"No answer to request {request_id} within {timeout} s.")
            if between_polls:
                between_polls()
            time.sleep(interval)

    def ask(self, kind: str, timeout: float = 120.0, **fields) -> dict:
        return self.wait(self.request(kind, **fields), timeout)

    def close(self, timeout: float = 10.0) -> None:
        """End the session: "quit", then kill the tree if it does not end in time."""
        if self._closed and not self.alive:
            return
        self._closed = True
        if self.alive:
            self._write({"id": "quit", "type": Request.QUIT.value})
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=timeout)
        self._kill()


def interact_argv(python: str | os.PathLike, model: str, output_dir: str | os.PathLike,
                  examples_dir: str | os.PathLike, device: str = "auto", cache_dir: str | os.PathLike | None = None,
                  propose_with: str = "", backbone: str = "") -> list[str]:
    """The `coralbay interact` command line (`device`: the panel's choice, see `commands.DEVICE_CHOICES`;
    `propose_with`: a segmentation model, e.g. a taught one, whose segmentation starts each structure it knows;
    `backbone`: the panel's *Encoder weights*, replacing the bundle's encoder as for Segment)."""
    argv = [str(python), "-m", "coralbay", "interact", *model_args(model, device, backbone),
            "--output-dir", str(output_dir), "--examples", str(examples_dir)]
    if cache_dir is not None:
        argv += ["--cache", str(cache_dir)]
    if propose_with:
        argv += ["--propose-with", str(propose_with)]
    return argv


def keep_scan(written: str | os.PathLike, examples_dir: str | os.PathLike) -> Path:
    """Move the scan written for the engine to `<examples>/scans/<content sha256>.<ext>` and return
    that path, which the session opens.

    Why: the engine records the path it opened in each accepted example, and the examples are
    only usable (proposals on the next scan, Teach model) while that scan can be read; the session
    folder the scan is written to goes at End session. Named by content, the same volume opened
    again is the same file. `forget_scan` removes it again unless something was accepted on it."""
    written = Path(written)
    digest = hashlib.sha256()
    with written.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    target = Path(examples_dir) / SCANS_FOLDER / f"{digest.hexdigest()[:24]}{''.join(written.suffixes)}"
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file():
        written.unlink()
    else:  # another file system, maybe: copy beside the target, then rename (never a partial scan)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        shutil.move(str(written), str(partial))
        os.replace(partial, target)
    return target


def forget_scan(scan: str | os.PathLike, examples_dir: str | os.PathLike) -> bool:
    """Delete a scan kept by `keep_scan` that no accepted example refers to (End session); True if deleted."""
    scan, examples = Path(scan), Path(examples_dir)
    if scan.parent != examples / SCANS_FOLDER or not scan.is_file() or scan.resolve() in scans_in_use(examples):
        return False
    with contextlib.suppress(FileNotFoundError):
        scan.unlink()
    return True


def forget_unused_scans(examples_dir: str | os.PathLike, keep: str | os.PathLike | None = None) -> list[Path]:
    """Delete every kept scan that no accepted example refers to, except `keep` (the open session's);
    returns those deleted. Why: a session that ended without End session (Slicer closed, crashed)
    leaves its scan behind; this is the clean-up the panel offers."""
    used = scans_in_use(examples_dir)
    spared = {Path(keep).resolve()} if keep else set()
    deleted = []
    for scan in kept_scans(examples_dir):
        if scan.resolve() not in used | spared:
            with contextlib.suppress(FileNotFoundError):
                scan.unlink()
                deleted.append(scan)
    return deleted
