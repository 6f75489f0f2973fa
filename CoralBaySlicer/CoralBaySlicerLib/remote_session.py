"""The interactive section's session on a remote engine, with `InteractiveSession`'s interface.

Why the same interface: the panel calls `request()` (returns an id at once), drains `poll()`
from a timer, `cancel()`s and `close()`s, whether the engine is a local process or a server; so
every interactive workflow works on either. Here a thread sends the requests one after another
(each with the session's next sequence number, so a retry after a dropped connection is answered
from the server's journal instead of being applied twice), turns local file paths into what the
server takes (the scan uploaded once by hash; a stroke as the compressed crop around it) and the
answer's changed crop back into a full mask file, as the local engine writes one. The mask copy
is checked against the server's CRC-32 and fetched whole if it ever differs.
"""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
import zlib
from pathlib import Path

from CoralBaySlicerLib.interactive_session import InteractiveSession, SessionError
from CoralBaySlicerLib.remote_client import RemoteEngine, RemoteError
from CoralBaySlicerLib.remote_volumes import (Volume, crop_bytes, nonzero_box, paste_bytes, read_nrrd,
                                              write_nrrd)

PATH_REQUESTS = ("scribble", "segment")
LOCAL_ONLY = ("labels",)
BUSY_RETRIES = 20


class RemoteInteractiveSession:
    def __init__(self, engine: RemoteEngine, model: str, work_dir: str | Path) -> None:
        self.engine, self.model = engine, model
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.session_id: str | None = None
        self.restarts = 0
        self.lines: list[str] = []
        self._seq = 0
        self._next_id = 0
        self._geometry: Volume | None = None
        self._masks: dict[str, bytearray] = {}
        self._outbox: queue.Queue = queue.Queue()
        self._events: queue.Queue = queue.Queue()
        self._pending: dict[str, dict] = {}
        self._cancel_before = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self._current: dict | None = None   # the request being answered (its progress events carry its id)

    # -- the local session's interface ---------------------------------------------------------------
    def start(self) -> None:
        self.session_id = self.engine.create("/v1/sessions", {"model": self.model})["session"]
        self._thread = threading.Thread(target=self._run, name="CoralBay remote session", daemon=True)
        self._thread.start()
        threading.Thread(target=self._follow_progress, name="CoralBay remote progress", daemon=True).start()

    @property
    def pid(self) -> None:
        return None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    def _write(self, request: dict) -> None:
        """Queue a request for the sending thread (ids are the local session's numbers)."""
        self._outbox.put((int(request["id"]), request))

    def cancel(self) -> list[str]:
        ids = list(self._pending)
        if ids:
            self._cancel_before = self._next_id + 1
            try:
                self.engine.call_json("POST", f"/v1/sessions/{self.session_id}/cancel", {})
            except RemoteError as exc:
                self._events.put({"event": "log", "level": "warning", "message": str(exc)})
        return ids

    def poll(self) -> list[dict]:
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return events
            if event.get("event") in ("result", "error"):
                self._pending.pop(str(event.get("id")), None)
            events.append(event)

    # The local session's request and waiting helpers work unchanged on this class (same
    # _next_id/_pending/_closed/poll; `_write` above queues instead of writing to a pipe).
    request = InteractiveSession.request
    wait = InteractiveSession.wait
    ask = InteractiveSession.ask

    def close(self, timeout: float = 10.0) -> None:
        """End the session on the server (its journal goes; accepted labels were fetched already)."""
        if self._closed:
            return
        self._closed = True
        self._outbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        if self.session_id is not None:
            try:
                self.engine.call_json("DELETE", f"/v1/sessions/{self.session_id}")
            except RemoteError:
                pass  # the server forgets it with its state folder; nothing local depends on it

    # -- the sending thread --------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            number, request = item
            if number < self._cancel_before:
                self._events.put(self._error(request, "Cancelled.", 130))
                continue
            self._current = request
            try:
                self._events.put(self._send(request))
            except (RemoteError, OSError, ValueError) as exc:
                self._events.put(self._error(request, str(exc), 1))

    def _follow_progress(self) -> None:
        """Long-poll the session's events: progress (features of a new scan) reaches `poll()` as the
        local engine's progress events do, under the id of the request being answered."""
        after = 0
        while not self._closed:
            try:
                found = self.engine.call_json("GET", f"/v1/sessions/{self.session_id}/events?after={after}&wait=10")
            except RemoteError:
                time.sleep(1.0)
                continue
            for event in found.get("events", []):
                after = max(after, int(event.get("index", after)))
                current = self._current
                if event.get("event") == "progress" and current is not None and not self._closed:
                    self._events.put({**{k: v for k, v in event.items() if k != "index"},
                                      "id": current["id"], "request": current["type"]})

    def _error(self, request: dict, message: str, code: int) -> dict:
        return {"event": "error", "id": request["id"], "request": request["type"], "message": message,
                "exit_code": code}

    def _send(self, request: dict) -> dict:
        kind = request["type"]
        if kind == "labels":
            return self._labels(request)
        body = {k: v for k, v in request.items() if k not in ("id", "image", "path")}
        if kind == "open":
            volume = read_nrrd(request["image"])
            body["image"] = self.engine.upload(volume)
            self._geometry = Volume("uint8", volume.size, volume.spacing, volume.origin, volume.direction, b"")
            self._masks = {}
        elif kind in PATH_REQUESTS:
            body["crop"] = self._crop(request["path"])
        body["seq"] = self._seq + 1
        answer = self._post(body)
        if "event" not in answer:   # refused before it was journaled (the number stays free)
            raise RemoteError(str(answer.get("error") or "The server refused the request."))
        self._seq = body["seq"]
        event = {k: v for k, v in answer.items() if k not in ("seq", "crop", "mask_crc32", "size", "repeated")}
        event.update(id=request["id"], request=kind)
        if answer.get("event") == "result" and "mask_crc32" in answer:
            event["mask"] = str(self._apply(answer))
        return event

    def _post(self, body: dict) -> dict:
        """Send one numbered request; the same number again after a refusal for capacity (safe: the
        server's journal answers a number it has seen with its stored answer)."""
        path = f"/v1/sessions/{self.session_id}/requests"
        for attempt in range(BUSY_RETRIES):
            try:
                return self.engine.call_json("POST", path, body, ok=(200, 409, 422))
            except RemoteError as exc:
                if exc.status not in (429, 503) or attempt == BUSY_RETRIES - 1:
                    raise
                time.sleep(min(exc.retry_after or 0.5, 5.0))
        raise SessionError("unreachable")

    def _crop(self, path: str) -> dict:
        stroke = read_nrrd(path)
        box = nonzero_box(stroke.data, stroke.size)
        if box is None:
            start, stop = (0, 0, 0), (1, 1, 1)
        else:
            start, stop = box
        size = [b - a for a, b in zip(start, stop)]
        data = crop_bytes(stroke.data, stroke.size, start, stop)
        return {"offset": list(start), "size": size, "data": base64.b64encode(zlib.compress(data, 1)).decode("ascii")}

    def _apply(self, answer: dict) -> Path:
        """The full mask after this answer (our copy plus the changed crop), written as the local engine would."""
        name, geometry = str(answer["name"]), self._geometry
        if geometry is None:
            raise SessionError("An answer arrived before a scan was opened.")
        full = self._masks.get(name)
        if full is None:
            full = self._masks[name] = bytearray(len_voxels(geometry.size))
        crop = answer.get("crop")
        if crop:
            paste_bytes(full, geometry.size, crop["offset"], crop["size"], zlib.decompress(base64.b64decode(crop["data"])))
        if zlib.crc32(full) != answer["mask_crc32"]:
            fetched, _ = self.engine.download_volume(f"/v1/sessions/{self.session_id}/masks/{name}")
            full = self._masks[name] = bytearray(fetched.data)
        mask = Volume("uint8", geometry.size, geometry.spacing, geometry.origin, geometry.direction, bytes(full))
        return write_nrrd(mask, self.work_dir / f"{safe_name(name)}.nrrd")

    def _labels(self, request: dict) -> dict:
        volume, headers = self.engine.download_volume(f"/v1/sessions/{self.session_id}/labels")
        target = Path(request.get("path") or self.work_dir / "accepted.nrrd")
        if not target.name.endswith(".nrrd"):  # this client writes NRRD only; the answer names the file
            target = target.with_name(target.name.split(".")[0] + ".nrrd")
        write_nrrd(volume, target)
        return {"event": "result", "id": request["id"], "request": "labels", "path": str(target),
                "structures": json.loads(headers.get("x-coralbay-structures", "{}"))}


def len_voxels(size) -> int:
    return size[0] * size[1] * size[2]


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".") or "mask"
