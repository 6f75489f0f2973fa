"""Interactive sessions: owned by one user, journaled, answered with the changed crop only.

A session is a folder `<state>/sessions/<id>/` (session.json, journal.jsonl, the stroke crops
the server wrote, the worker's folder and log). Its worker is started on the first request that
needs it; when the worker (or the server) was killed, that request first replays the journal
into a fresh worker (the worker's folders are emptied, so the replay starts where the original
run started and reaches the same state). Another user's session id answers as unknown (404).

Idle sessions (no request for `session_idle_s`, 20 min by default) have their worker stopped, so
a forgotten Slicer does not hold a model and its features in memory; the journal stays, and the
next request rebuilds the session from it, as after a kill. After `session_expire_s` (7 days)
without a request the session and its folder are removed. Long polls of events do not count as
use: an open Slicer polls them while nobody works in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coralbay.atomic import write_text_atomic
from coralbay.errors import CoralBayError, InputError
from coralbay.serve.crops import changed_box, decode_crop, encode_crop, mask_crc32
from coralbay.serve.idempotency import IdempotencyKey
from coralbay.serve.images import ImageStore, check_digest
from coralbay.serve.journal import Journal
from coralbay.serve.limits import ServeLimits
from coralbay.serve.session_requests import CROP_REQUESTS
from coralbay.serve.volume_format import VolumeHeader, read_header_of_file
from coralbay.serve.worker import InteractWorker, WorkerDied

SESSION_ID_BYTES = 16
CANCEL_GRACE_S = 2.0
MAX_EVENTS = 500
WORKER_CRASHES_PER_REQUEST = 2


class NotFound(CoralBayError):
    """Unknown here, or someone else's: the same answer for both (404)."""


class Busy(CoralBayError):
    """A cap is reached (503 with Retry-After)."""


class Conflict(CoralBayError):
    """A sequence number out of order, or reused for a different request (409)."""


@dataclass(frozen=True)
class ServedModel:
    name: str
    folder: Path
    task: str
    summary: dict


@dataclass(frozen=True)
class EngineSettings:
    device: str
    state: Path
    limits: ServeLimits


class RemoteSession:
    def __init__(self, record: dict, folder: Path, model: ServedModel, images: ImageStore,
                 settings: EngineSettings) -> None:
        self.id, self.user = record["id"], record["user"]
        self.record, self.folder, self.model, self.images, self.settings = record, folder, model, images, settings
        self.journal = Journal.open(folder / "journal.jsonl")
        self.lock = asyncio.Lock()
        self.worker: InteractWorker | None = None
        self.masks: dict[str, np.ndarray] = {}
        self.image_digest: str | None = None
        self.events: list[dict] = []
        self.event_count = 0
        self._new_event = asyncio.Event()
        self.cancelling = False
        self.replays = 0
        self.removed = False
        self.crashes: dict[int, int] = {}
        self.last_used = max((p.stat().st_mtime for p in (folder / "journal.jsonl", folder / "session.json")
                              if p.is_file()), default=time.time())   # wall time: it outlives a restart

    @contextlib.asynccontextmanager
    async def in_use(self):
        """The session's lock, counted as use from asking for it to the answer (idle time starts
        when a request ends: a scan's features may take longer than the idle time)."""
        self.last_used = time.time()
        try:
            async with self.lock:
                if self.removed:   # expired or deleted while this request was on its way
                    raise NotFound("There is no such session.")
                yield
        finally:
            self.last_used = time.time()

    async def stop_worker(self) -> bool:
        """Stop an idle worker (the journal stays, so the next request replays); False if busy."""
        if self.lock.locked() or self.worker is None or not self.worker.alive:
            return False
        async with self.lock:
            worker, self.worker = self.worker, None
            await worker.close()
        return True

    # ---------------------------------------------------------------- events (long poll)
    def add_event(self, event: dict) -> None:
        self.event_count += 1
        self.events.append({**{k: v for k, v in event.items() if k != "id"}, "index": self.event_count})
        del self.events[:-MAX_EVENTS]
        self._new_event.set()
        self._new_event = asyncio.Event()

    async def events_after(self, after: int, wait_s: float, closing: asyncio.Event | None = None) -> list[dict]:
        """Events after index `after`, waiting up to `wait_s` for one (or until the server closes,
        so that a long poll does not hold its shutdown for the whole wait)."""
        if self.event_count <= after:
            waits = [asyncio.ensure_future(self._new_event.wait())]
            if closing is not None:
                waits.append(asyncio.ensure_future(closing.wait()))
            try:
                await asyncio.wait(waits, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
        return [e for e in self.events if e["index"] > after]

    # ---------------------------------------------------------------- worker and replay
    def _argv(self) -> list[str]:
        work = self.folder / "work"
        cache = self.settings.state / "cache" / self.user / self.model.name
        cache.mkdir(parents=True, exist_ok=True)
        return ["interact", "--model", str(self.model.folder), "--output-dir", str(work / "out"),
                "--examples", str(work / "examples"), "--cache", str(cache), "--device", self.settings.device]

    async def ensure_worker(self) -> None:
        """A running worker in the journal's state (replayed into a fresh one when needed)."""
        if self.worker is not None and self.worker.alive:
            return
        shutil.rmtree(self.folder / "work", ignore_errors=True)
        (self.folder / "work").mkdir()
        self.masks, self.image_digest = {}, None
        self.worker = InteractWorker(self._argv(), self.folder / "worker.log", self._progress)
        await self.worker.start()
        entries = self.journal.replayable()
        if entries:
            self.replays += 1
        for entry in entries:
            engine_request = await self._engine_request(entry.seq, entry.request)
            event = await self.worker.ask(engine_request, self.settings.limits.answer_timeout_s)
            if event.get("exit_code") == 130:   # a cancel cut the replay short: never keep a partial state
                self.worker.kill()
                raise WorkerDied("The session's rebuild was cancelled.")
            answer, status = await self._answer(entry.seq, entry.request, event)
            if entry.answer is None:
                await asyncio.to_thread(self.journal.record_answer, entry.seq, answer, status)

    def _progress(self, event: dict) -> None:
        self.add_event({"event": "progress", "stage": event.get("stage"), "fraction": event.get("fraction"),
                        "message": event.get("message")})

    async def _engine_request(self, seq: int, request: dict) -> dict:
        """The worker's form of a client request: server paths instead of digests and crops."""
        kind = request["type"]
        if kind == "open":
            digest = check_digest(str(request.get("image", "")))
            try:
                path = await asyncio.to_thread(self.images.engine_file, self.user, digest)
            except FileNotFoundError:
                raise NotFound("There is no uploaded image with that SHA-256 (upload it first).") from None
            self.image_digest = digest
            return {"type": "open", "image": str(path)}
        if kind in CROP_REQUESTS:
            return {**{k: v for k, v in request.items() if k != "crop"},
                    "path": str(await asyncio.to_thread(self._write_crop, seq, request["crop"]))}
        return dict(request)

    def _write_crop(self, seq: int, crop: dict) -> Path:
        import SimpleITK as sitk

        from coralbay.io.volumes import write_image

        target = self.folder / "inputs" / f"{seq}.nrrd"
        if target.is_file():
            return target
        header = self.geometry()
        image = sitk.GetImageFromArray(decode_crop(crop, header.size[::-1]))
        image.SetSpacing(header.spacing)
        image.SetOrigin(header.origin)
        image.SetDirection(header.direction)
        target.parent.mkdir(exist_ok=True)
        write_image(image, target)
        return target

    async def _answer(self, seq: int, request: dict, event: dict) -> tuple[dict, int]:
        """The client's answer: the engine's fields, the changed crop instead of a mask path."""
        if event.get("event") == "error":
            code = int(event.get("exit_code") or 1)
            return {"seq": seq, "event": "error", "message": event.get("message"), "exit_code": code,
                    "not_applied": code == 130}, 409 if code == 130 else 422
        answer = {k: v for k, v in event.items() if k not in ("id", "mask", "path", "request", "scan_id")}
        answer.update(seq=seq, event="result", request=request["type"])
        if event.get("mask"):
            name = str(event["name"])
            mask = await asyncio.to_thread(_read_mask, Path(event["mask"]))
            box = await asyncio.to_thread(changed_box, self.masks.get(name), mask)
            answer["crop"] = None if box is None else encode_crop(mask, box)
            answer["mask_crc32"] = mask_crc32(mask)
            answer["size"] = list(mask.shape[::-1])
            self.masks[name] = mask
        return answer, 200

    # ---------------------------------------------------------------- requests
    async def handle(self, seq: int, request: dict) -> tuple[dict, int]:
        async with self.in_use():
            entry = self.journal.entries.get(seq)
            if entry is not None and entry.request != request:
                raise Conflict(f"Sequence number {seq} was used for another request; the next is "
                               f"{self.journal.last_seq + 1}.")
            if entry is None and seq != self.journal.last_seq + 1:
                raise Conflict(f"The next sequence number of this session is {self.journal.last_seq + 1}.")
            if entry is not None and entry.answer is not None:
                return {**entry.answer, "repeated": True}, entry.status
            self.cancelling = False
            try:
                await self.ensure_worker()
            except WorkerDied:
                if not self.cancelling:
                    raise
                return self._cancelled_before_applied(seq, request, entry is None)
            if entry is not None and entry.answer is not None:   # answered by the replay
                return entry.answer, entry.status
            engine_request = await self._engine_request(seq, request)
            if entry is None:
                self.journal.record_request(seq, request)
            try:
                event = await self.worker.ask(engine_request, self.settings.limits.answer_timeout_s)
            except WorkerDied:
                if not self.cancelling:
                    self.crashes[seq] = self.crashes.get(seq, 0) + 1
                    if self.crashes[seq] < WORKER_CRASHES_PER_REQUEST:
                        raise
                event = {"event": "error", "exit_code": 130 if self.cancelling else 1,
                         "message": "Cancelled." if self.cancelling else
                         "The engine process stopped twice while answering this request; it was not applied."}
            answer, status = await self._answer(seq, request, event)
            if self.crashes.get(seq):
                answer["not_applied"] = True   # never replayed: it could only stop the worker again
            await asyncio.to_thread(self.journal.record_answer, seq, answer, status)   # fsync: off the event loop
            self.add_event({k: v for k, v in answer.items() if k != "crop"})
            return answer, status

    def _cancelled_before_applied(self, seq: int, request: dict, new: bool) -> tuple[dict, int]:
        """Cancelled while the session was being rebuilt: journaled as not applied, so the
        sequence numbers stay in step and no replay applies it."""
        answer = {"seq": seq, "event": "error", "message": "Cancelled.", "exit_code": 130, "not_applied": True}
        if new:
            self.journal.record_request(seq, request)
        self.journal.record_answer(seq, answer, 409)
        return answer, 409

    async def cancel(self) -> None:
        """Stop what runs: the protocol's cancel, and a kill if the worker is still busy after the grace."""
        if self.worker is None or not self.lock.locked():
            return
        self.cancelling = True
        self.worker.cancel()
        worker = self.worker

        async def kill_if_still_busy() -> None:
            await asyncio.sleep(CANCEL_GRACE_S)
            if self.cancelling and self.lock.locked() and self.worker is worker:
                worker.kill()
        asyncio.get_running_loop().create_task(kill_if_still_busy())

    async def mask(self, name: str) -> np.ndarray:
        async with self.in_use():
            if not self.journal.entries:   # nothing asked yet: no worker is started to say so
                raise NotFound(f"This session has no mask named {name!r}.")
            await self.ensure_worker()
            if name not in self.masks:
                raise NotFound(f"This session has no mask named {name!r}.")
            return self.masks[name]

    def geometry(self) -> VolumeHeader:
        """The open scan's header (the grid of every mask and label map of the session)."""
        if self.image_digest is None:
            raise InputError("Open a scan first.")
        limits = self.settings.limits
        return read_header_of_file(self.images.complete_path(self.user, self.image_digest), limits.max_voxels,
                                   limits.max_decoded_bytes)

    async def labels(self) -> tuple[np.ndarray, dict]:
        """The accepted structures as one label map, and their label values by name."""
        async with self.in_use():
            if not self.journal.entries:
                raise InputError("Open a scan first.")
            await self.ensure_worker()
            if self.image_digest is None:
                raise InputError("Open a scan first.")
            path = self.folder / "work" / "accepted-labels.nrrd"
            event = await self.worker.ask({"type": "labels", "path": str(path)}, self.settings.limits.answer_timeout_s)
            if event.get("event") == "error":
                raise InputError(str(event.get("message")))
            return await asyncio.to_thread(_read_mask, path), event.get("structures", {})

    async def close(self) -> None:
        if self.worker is not None:
            await self.worker.close()


def _read_mask(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.uint8, copy=False)


class SessionManager:
    """All sessions of this server, on disk and (once used) in memory with a worker."""

    def __init__(self, root: Path, models: dict[str, ServedModel], images: ImageStore,
                 settings: EngineSettings) -> None:
        self.root, self.models, self.images, self.settings = Path(root), models, images, settings
        self.root.mkdir(parents=True, exist_ok=True)
        self.sessions: dict[str, RemoteSession] = {}
        self.closing = asyncio.Event()   # set when the server begins to stop: long polls answer at once
        for record_path in sorted(self.root.glob("*/session.json")):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                record = json.loads(record_path.read_text(encoding="utf-8"))
                if record["model"] in models:
                    self.sessions[record["id"]] = RemoteSession(record, record_path.parent, models[record["model"]],
                                                                images, settings)

    def create(self, user: str, model_name: object, key: IdempotencyKey | None = None) -> RemoteSession:
        """A new session; a request repeated with its Idempotency-Key gets the session it made.
        (No await here, so a retry cannot overtake its original: no lock is needed.)"""
        earlier = key.earlier(self.sessions.values(), lambda s: (s.user, s.record), "session") if key else None
        if earlier is not None:
            return earlier
        limits = self.settings.limits
        model = self.models.get(model_name) if isinstance(model_name, str) else None
        if model is None or model.task != "segmentation":
            names = ", ".join(n for n, m in self.models.items() if m.task == "segmentation") or "none"
            raise InputError(f"Choose a segmentation model this server offers: {names}.")
        if sum(s.user == user for s in self.sessions.values()) >= limits.sessions_per_user:
            raise Busy(f"You have {limits.sessions_per_user} sessions open, the most this server allows; end one first.")
        if len(self.sessions) >= limits.sessions_total:
            raise Busy("The server has as many sessions open as it allows; try again later.")
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        folder = self.root / session_id
        folder.mkdir(mode=0o700)
        record = {"id": session_id, "user": user, "model": model.name, "created": time.time(),
                  **(key.record() if key is not None else {})}
        write_text_atomic(folder / "session.json", json.dumps(record))
        session = RemoteSession(record, folder, model, self.images, self.settings)
        self.sessions[session_id] = session
        return session

    def get(self, user: str, session_id: str) -> RemoteSession:
        session = self.sessions.get(session_id)
        if session is None or not secrets.compare_digest(session.user.encode(), user.encode()):
            raise NotFound("There is no such session.")
        return session

    async def delete(self, user: str, session_id: str) -> None:
        session = self.get(user, session_id)
        self.sessions.pop(session_id, None)
        session.removed = True
        await session.close()
        shutil.rmtree(session.folder, ignore_errors=True)

    async def sweep(self, now: float | None = None) -> tuple[int, int]:
        """Stop the workers of idle sessions and remove expired ones (busy ones are left alone);
        returns (workers stopped, sessions removed)."""
        now = time.time() if now is None else now
        limits, stopped, removed = self.settings.limits, 0, 0
        for session in list(self.sessions.values()):
            idle = now - session.last_used
            if session.lock.locked():
                continue
            if idle > limits.session_expire_s:
                self.sessions.pop(session.id, None)
                session.removed = True
                await session.close()
                await asyncio.to_thread(shutil.rmtree, session.folder, True)
                removed += 1
            elif idle > limits.session_idle_s and await session.stop_worker():
                stopped += 1
        return stopped, removed


    async def close_all(self) -> None:
        for session in list(self.sessions.values()):
            await session.close()
