"""`coralbay interact`: the warm session over JSON lines (requests on stdin, events on stdout).

Each request is one JSON object on one line with a "type" and an optional "id" (echoed back).
Each answer is one event of `coralbay.progress` ("progress", "log", "result", "error"), carrying
"id" and "request" (the request's type). A bad request gets one "error" event with one sentence
and the session keeps running; only "quit" or the end of stdin ends it. Masks go to files in the
session's output folder (written atomically), never inline. docs/interactive.md lists every
request and answer.

Why a reader thread: "cancel" must reach the session while a request is being worked on; the
thread reads stdin at once and sets a flag that the long steps (feature computation) check.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np
import SimpleITK as sitk

from coralbay.interactive import prompts as P
from coralbay.interactive.engine import CoralBayError, UsageError, read_volume, series_read, write_image
from coralbay.interactive.messages import REPORTS_FEATURES, EventKind, ProposedBy, Request, Stage
from coralbay.interactive.proposals import ModelProposals, first_answer
from coralbay.interactive.refine import Answer
from coralbay.interactive.session import Session
from coralbay.progress import encode_event

REQUESTS = tuple(r.value for r in Request if r is not Request.READY)


class Cancelled(CoralBayError):
    """The user cancelled the request in progress."""


class Protocol:
    """Turns request objects into session calls and events."""

    def __init__(self, session: Session, output_dir: Path, emit: Callable[[str], None],
                 proposals: ModelProposals | None = None, series: str | None = None) -> None:
        self.session = session
        self.series = series  # which series of a DICOM study folder `open` reads (`interact --series`)
        self.proposals = proposals
        self.output_dir = output_dir
        self.emit = emit
        self.counter = 0
        self.running = 0          # sequence number of the request being answered
        self.cancel_before = 0    # requests numbered below this are cancelled
        self.request: dict | None = None   # the request being answered (its windows report progress)
        self.opened: dict | None = None    # the scan's `open` request: background windows report under it
        self.paused = False                # after a cancel: no background windows until the next request
        session.cancelled = self.cancelled
        session.feature_progress = lambda fraction, message: self.event(
            EventKind.PROGRESS, self.request, stage=Stage.FEATURES, fraction=round(fraction, 3), message=message)

    def event(self, kind: str, request: dict | None, **fields: Any) -> None:
        base = {"id": request.get("id"), "request": request.get("type")} if request else {}
        self.emit(encode_event(kind, **base, **fields))

    def cancelled(self) -> bool:
        return self.running < self.cancel_before

    def handle(self, request: dict, number: int = 0) -> bool:
        """Answer one request (its arrival `number`); False when the session should end."""
        kind = request.get("type")
        self.running = number
        self.request = request
        started = time.perf_counter()
        try:
            if kind not in REQUESTS:
                raise UsageError(f"Unknown request type {kind!r}; expected one of {', '.join(REQUESTS)}.")
            if kind == Request.QUIT:
                self.event(EventKind.RESULT, request, message="bye")
                return False
            if kind == Request.CANCEL:
                self.paused = True     # the background windows too, until the next request
                self.event(EventKind.RESULT, request, message="cancelled what was running or waiting")
                return True
            self.paused = False
            if self.cancelled():
                raise Cancelled("Cancelled.")
            fields = getattr(self, f"_{kind}")(request)
            if kind in REPORTS_FEATURES and self.session.image is not None:
                fields.update(self._feature_fields())
            self.event(EventKind.RESULT, request, seconds=round(time.perf_counter() - started, 3), **fields)
        except (Cancelled, InterruptedError):
            self.event(EventKind.ERROR, request, message="Cancelled.", exit_code=130)
        except CoralBayError as exc:
            self.event(EventKind.ERROR, request, message=str(exc), exit_code=exc.exit_code)
        except (KeyError, TypeError, ValueError) as exc:
            self.event(EventKind.ERROR, request, message=f"The {kind} request is malformed ({type(exc).__name__}: {exc}).",
                       exit_code=2)
        return True

    # ------------------------------------------------------------------ requests
    def _open(self, r: dict) -> dict:
        series = r.get("series", self.series)
        image = read_volume(r["image"], None if series is None else str(series))

        def progress(fraction: float, message: str) -> None:
            self.event(EventKind.PROGRESS, r, stage=Stage.FEATURES, fraction=round(fraction, 3), message=message)

        def examples_progress(fraction: float, message: str) -> None:
            self.event(EventKind.PROGRESS, r, stage=Stage.EXAMPLES, fraction=round(fraction, 3), message=message)

        try:
            restored = self.session.restore_examples(examples_progress, self.cancelled)
            volume = self.session.open_scan(image, str(r["image"]), progress, self.cancelled)
        except InterruptedError:
            raise Cancelled("Cancelled.") from None
        accepted = {s.name: s.value for s in self.session.structures.values() if s.accepted}
        self.opened = r
        return {**series_read(image), "feature_seconds": round(volume.seconds, 3), "from_cache": volume.from_cache,
                "model_grid": list(volume.shape), "scan_id": self.session.scan_id,
                "accepted": accepted, "examples_restored": restored, **self._feature_fields()}

    def _feature_fields(self) -> dict:
        f = self.session.features
        return {"features_complete": f.complete, "features_fraction": round(f.fraction, 3)}

    def background_step(self, interrupted: Callable[[], bool]) -> None:
        """One pending feature window between requests, reported as a progress event of the `open`
        request; a request that arrives meanwhile is answered after this window (never cut short:
        the window's work is kept). The last window writes the cache and says so."""
        r = self.opened or {"type": Request.OPEN.value}
        try:
            remaining = self.session.compute_features(1, cancelled=interrupted)
        except InterruptedError:
            return
        f = self.session.features
        self.event(EventKind.PROGRESS, r, stage=Stage.FEATURES, fraction=round(f.fraction, 3),
                   message="features complete" if not remaining else f"features {f.fraction:.0%} (between requests)")


    def _start(self, r: dict) -> dict:
        s = self.session.start(r["name"], r.get("value"))
        out = {"name": s.name, "value": s.value}
        if r.get("propose", True):
            answer, proposed_by = first_answer(self.session, self.proposals, s.name)
            if answer is not None:
                out.update(proposed_by=proposed_by, **self._answer_fields(s.name, answer))
        return out

    def _point(self, r: dict) -> dict:
        return self._prompt(r, P.point(self._image(), r["lps"], bool(r.get("positive", True))))

    def _scribble(self, r: dict) -> dict:
        return self._prompt(r, P.scribble(self._image(), r["path"], int(r.get("positive_value", 1)),
                                          int(r.get("negative_value", 2))))

    def _box(self, r: dict) -> dict:
        return self._prompt(r, P.box(self._image(), r["lower"], r["upper"]))

    def _segment(self, r: dict) -> dict:
        return self._prompt(r, P.segment(self._image(), r["path"], int(r.get("value", 1))))

    def _propose(self, r: dict) -> dict:
        answer = self.session.propose(r.get("name"))
        if answer is None:
            raise UsageError("Nothing to propose: no accepted examples of this structure yet, or nothing like "
                             "them where it lay on the earlier scans.")
        return self._answer_fields(self.session.structure(r.get("name")).name, answer)

    def _undo(self, r: dict) -> dict:
        structure = self.session.structure(r.get("name"))
        fields = self._answer_fields(structure.name, self.session.undo(structure.name))
        if not structure.prompts and structure.before_prompts is not None and structure.proposal:
            fields["proposed_by"] = ProposedBy.EXAMPLES.value   # back to the examples proposal the structure started from
        return fields

    def _redo(self, r: dict) -> dict:
        name = self.session.structure(r.get("name")).name
        return self._answer_fields(name, self.session.redo(name))

    def _accept(self, r: dict) -> dict:
        s = self.session.accept(r.get("name"))
        return {"name": s.name, "value": s.value, "voxels": int(s.mask.sum())}

    def _labels(self, r: dict) -> dict:
        path = Path(r.get("path") or self.output_dir / "accepted.nii.gz")
        write_image(self.session.labels(), path)
        return {"path": str(path), "structures": {s.name: s.value for s in self.session.structures.values()
                                                   if s.accepted}}

    def _status(self, r: dict) -> dict:
        return {"scan_id": self.session.scan_id, "current": self.session.current,
                "structures": [{"name": s.name, "value": s.value, "accepted": s.accepted,
                                "prompts": len(s.prompts), "can_undo": bool(s.prompts),
                                "can_redo": bool(s.undone)} for s in self.session.structures.values()],
                "known_structures": self.session.examples.names()}

    # ------------------------------------------------------------------ helpers
    def _image(self) -> sitk.Image:
        if self.session.image is None:
            raise UsageError("Open a scan first.")
        return self.session.image

    def _prompt(self, r: dict, prompt: P.Prompt) -> dict:
        answer = self.session.prompt(prompt, r.get("name"))
        return self._answer_fields(self.session.structure(r.get("name")).name, answer)

    def _answer_fields(self, name: str, answer: Answer) -> dict:
        self.counter += 1
        path = self.output_dir / f"{name}.nrrd"
        mask = sitk.GetImageFromArray(answer.mask.astype(np.uint8))
        mask.CopyInformation(self.session.image)
        write_image(mask, path, compress=False)
        spacing = np.prod(self.session.image.GetSpacing())
        return {"name": name, "mask": str(path), "voxels": int(answer.mask.sum()),
                "volume_ml": round(float(answer.mask.sum() * spacing / 1000.0), 3),
                "mean_uncertainty": round(float(answer.uncertainty.mean()), 4),
                "next_click": None if answer.next_click_lps is None else
                {"lps": [round(c, 2) for c in answer.next_click_lps], "positive": answer.next_click_positive},
                "answer": self.counter}


def serve(session: Session, output_dir: Path, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout,
          proposals: ModelProposals | None = None, series: str | None = None) -> int:
    """Read requests until "quit" or end of input; one event per line on `stdout`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def emit(line: str) -> None:
        with lock:
            stdout.write(line + "\n")
            stdout.flush()

    protocol = Protocol(session, output_dir, emit, proposals, series)
    requests: queue.Queue = queue.Queue()

    def reader() -> None:
        number = 0
        for line in stdin:
            line = line.strip()
            if not line:
                continue
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except ValueError:
                emit(encode_event(EventKind.ERROR, message="A request must be one JSON object on one line.", exit_code=2))
                continue
            number += 1
            if request.get("type") == Request.CANCEL:
                protocol.cancel_before = number  # every earlier request still running or waiting
            requests.put((number, request))
        requests.put(None)

    threading.Thread(target=reader, daemon=True).start()
    protocol.event("result", {"type": Request.READY.value}, message="ready", requests=list(REQUESTS))
    while True:
        if session.features_pending and not protocol.paused:   # idle: the scan's remaining windows, one at a time
            try:
                item = requests.get_nowait()
            except queue.Empty:
                protocol.background_step(lambda: not requests.empty())
                continue
        else:
            item = requests.get()
        if item is None or not protocol.handle(item[1], item[0]):
            return 0
