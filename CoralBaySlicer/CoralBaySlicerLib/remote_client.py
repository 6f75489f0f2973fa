"""The remote engine's client for the Slicer module: standard library only (http.client, ssl,
zlib, hashlib), so nothing is installed into Slicer for it.

Security: https is verified against the CA file the administrator gave (host name included) or,
instead, against a pinned SHA-256 fingerprint of the server's certificate, checked right after
the handshake and before the token is sent; without either, the system's CAs verify it. There is
no way to skip verification. Plain http is refused except to this machine (127.0.0.1/localhost).
The token travels only in the Authorization header.

`RemoteEngine` does the requests (uploads by content hash, resumable; sessions; jobs);
`RemoteJob` runs a segment/classify job with `EngineRun`'s shape (poll/wait/cancel), and
`remote_session.RemoteInteractiveSession` the interactive section's session.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

from CoralBaySlicerLib.remote_volumes import (Volume, decode_download, encode_and_hash, read_nrrd, worth_compressing,
                                              write_nrrd)

UPLOAD_CHUNK = 32 << 20
COMPRESSIONS = ("auto", "zlib", "none")
RETRIES = 3
IDEMPOTENCY_HEADER = "Idempotency-Key"   # the server's coralbay.serve.idempotency.HEADER (this file imports no engine)


class RemoteError(RuntimeError):
    """A refused request or an unreachable server, as one sentence (`status`: the HTTP status, or 0)."""

    def __init__(self, message: str, status: int = 0, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """https whose certificate must have the pinned SHA-256 fingerprint (checked before any request)."""

    def __init__(self, host: str, port: int, fingerprint: str, timeout: float) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False      # the pin names the one certificate; a CA is not involved
        context.verify_mode = ssl.CERT_NONE  # ... so the chain is not checked, the pin below is
        super().__init__(host, port, timeout=timeout, context=context)
        self.fingerprint = fingerprint.replace(":", "").lower()

    def connect(self) -> None:
        super().connect()
        seen = hashlib.sha256(self.sock.getpeercert(binary_form=True)).hexdigest()
        if not hmac.compare_digest(seen, self.fingerprint):
            self.close()
            raise ssl.SSLCertVerificationError(f"the server's certificate fingerprint {seen[:16]}... is not the pinned one")


class RemoteEngine:
    """One server, one user; safe to use from several threads (one connection per thread)."""

    def __init__(self, url: str, token: str, ca_file: str | None = None, fingerprint: str | None = None,
                 timeout: float = 120.0, compression: str = "auto") -> None:
        """`compression` of uploads: "zlib" (level 1), "none", or "auto": none to a server on this
        machine (no network to spare; compressing 150 MB takes seconds), else zlib when a sample
        of the voxels shrinks by 15 % or more."""
        if compression not in COMPRESSIONS:
            raise RemoteError(f"The upload compression is one of {', '.join(COMPRESSIONS)}.")
        self.compression = compression
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RemoteError("The server address must look like https://host:port.")
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise RemoteError("Plain http is only allowed to this machine; use https:// for a server on the network.")
        if not token or any(c.isspace() for c in token):
            raise RemoteError("Give the token the administrator made for you (one word, no spaces).")
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.token, self.timeout = token, timeout
        self.fingerprint = fingerprint.replace(":", "").lower() if fingerprint else None
        self.context = None
        if self.scheme == "https" and not self.fingerprint:
            self.context = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
        self._local = threading.local()
        self._digests: dict[tuple | str, str] = {}   # (file, size, mtime) or content key -> its upload's sha256

    # -- transport ------------------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.scheme == "http":
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            elif self.fingerprint:
                conn = _PinnedHTTPSConnection(self.host, self.port, self.fingerprint, self.timeout)
            else:
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.context)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             ok: tuple[int, ...] = (200, 201, 202)) -> tuple[int, dict, bytes]:
        """One request (retried on a dropped connection: every request of this API may be repeated)."""
        headers = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        if body is not None:
            headers.setdefault("Content-Length", str(len(body)))
        for attempt in range(RETRIES):
            try:
                conn = self._connection()
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except ssl.SSLError as exc:
                self._drop_connection()
                raise RemoteError(f"The server's certificate was refused ({exc.__class__.__name__}: "
                                  f"{getattr(exc, 'verify_message', '') or exc}); check the CA file or fingerprint.") from None
            except (ConnectionError, http.client.HTTPException, socket.timeout, OSError) as exc:
                self._drop_connection()
                if attempt == RETRIES - 1:
                    raise RemoteError(f"The server at {self.host}:{self.port} cannot be reached ({exc.__class__.__name__}).") from None
                time.sleep(0.2 * (attempt + 1))
        reply_headers = {k.lower(): v for k, v in response.getheaders()}
        if response.status not in ok:
            raise RemoteError(_sentence(data, response.status), response.status,
                              float(reply_headers["retry-after"]) if reply_headers.get("retry-after", "").isdigit() else None)
        return response.status, reply_headers, data

    def call_json(self, method: str, path: str, payload: object = None, ok: tuple[int, ...] = (200, 201, 202),
                  headers: dict | None = None) -> dict:
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        extra = {"Content-Type": "application/json"} if body is not None else {}
        return json.loads(self.call(method, path, body, {**extra, **(headers or {})}, ok)[2] or b"{}")

    def create(self, path: str, payload: dict) -> dict:
        """POST that creates a session or a job, once: the retries `call` makes after a dropped
        connection carry the same Idempotency-Key, so the server answers them with what the
        first one created (else a response lost on the way back would start a second job)."""
        return self.call_json("POST", path, payload, headers={IDEMPOTENCY_HEADER: uuid.uuid4().hex})

    # -- what the panel uses --------------------------------------------------------------------
    def test_connection(self) -> str:
        """The panel's *Test connection*: one sentence saying who we are on which server."""
        info = self.call_json("GET", "/v1/info")
        models = ", ".join(m["name"] for m in info.get("models", [])) or "none"
        return f"Connected to CoralBay {info.get('version')} as {info.get('user')}; models: {models}."

    def models(self) -> list[dict]:
        return self.call_json("GET", "/v1/info").get("models", [])

    def upload(self, image: str | Path | Volume) -> str:
        """Upload an image (a NRRD file or a Volume) once; returns its SHA-256 (its name on the server).

        Why two caches: the same unchanged file is not even read again; the same voxels under
        another file (Slicer writes a new temporary file for each open) are hashed raw (fast)
        instead of compressed again (seconds for a CT) when the server still has their upload."""
        key = None
        if not isinstance(image, Volume):
            stat = Path(image).stat()
            key = (str(Path(image).resolve()), stat.st_size, stat.st_mtime_ns)
            if self._still_there(self._digests.get(key)):
                return self._digests[key]
        volume = image if isinstance(image, Volume) else read_nrrd(image)
        content = content_key(volume)
        if self._still_there(self._digests.get(content)):
            digest = self._digests[content]
        else:
            body, digest = encode_and_hash(volume, self.upload_compression(volume))
            self.upload_bytes(body, digest)
        for known in (key, content):
            if known is not None:
                self._digests[known] = digest
        return digest

    def _still_there(self, digest: str | None) -> bool:
        return bool(digest) and self.call("HEAD", f"/v1/images/{digest}", ok=(200, 404))[1].get("upload-complete") == "1"

    def upload_compression(self, volume: Volume) -> str:
        """What `upload` sends the voxels as (see `__init__`)."""
        if self.compression != "auto":
            return self.compression
        return "zlib" if not _loopback(self.host) and worth_compressing(volume.data) else "none"

    def upload_bytes(self, body: bytes, digest: str) -> None:
        path = f"/v1/images/{digest}"
        offset = 0
        status, headers, _ = self.call("HEAD", path, ok=(200, 404))
        if status == 200:
            if headers.get("upload-complete") == "1":
                return
            offset = int(headers.get("upload-offset", "0"))
        while offset < len(body):
            chunk = memoryview(body)[offset:offset + UPLOAD_CHUNK]   # no copy of a 150 MB body
            status, headers, _ = self.call("PUT", path, chunk, {"Upload-Offset": str(offset),
                                                                 "Upload-Length": str(len(body)),
                                                                 "Content-Type": "application/octet-stream"},
                                           ok=(200, 201, 202, 409))
            offset = int(headers.get("upload-offset", offset + len(chunk))) if status in (202, 409) else len(body)

    def download_volume(self, path: str) -> tuple[Volume, dict]:
        _, headers, body = self.call("GET", path)
        return decode_download(body), headers


def content_key(volume: Volume) -> str:
    """The SHA-256 of a volume's geometry and raw voxels (whatever compression its upload used)."""
    sha = hashlib.sha256(json.dumps(volume.header("none"), sort_keys=True).encode("utf-8"))
    sha.update(volume.data)
    return "raw:" + sha.hexdigest()


def _sentence(data: bytes, status: int) -> str:
    try:
        return str(json.loads(data)["error"])
    except (ValueError, KeyError, TypeError):
        return f"The server answered HTTP {status}."


class RemoteJob:
    """A segment or classify job on the server, shaped like `process.EngineRun` for the panel:
    `start()`, `poll()` (events), `finished`, `wait()`, `cancel()`; outputs land in `folder`."""

    def __init__(self, engine: RemoteEngine, task: str, model: str, folder: str | Path, **options) -> None:
        self.engine, self.task, self.model, self.folder, self.options = engine, task, model, Path(folder), options
        self.state, self.fraction, self.message = "prepared", 0.0, ""
        self.result: dict | None = None
        self.error: str | None = None
        self.needs_confirmation = False   # refused as a long run; start again with allow_long_run=True
        self.job_id: str | None = None

    def start(self, image: str | Path | Volume) -> None:
        digest = self.engine.upload(image)
        job = self.engine.create("/v1/jobs", {"task": self.task, "model": self.model, "image": digest, **self.options})
        self.job_id, self.state = job["job"], "running"

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed", "cancelled")

    def poll(self) -> list[dict]:
        if self.finished or self.job_id is None:
            return []
        status = self.engine.call_json("GET", f"/v1/jobs/{self.job_id}")
        self.fraction, self.message = float(status["fraction"]), status["message"]
        events = [{"event": "progress", "fraction": self.fraction, "message": self.message}]
        if status["state"] == "done":
            self.result = {"event": "result", "outputs": self._fetch()}
            self.state = "succeeded"
            events.append(self.result)
        elif status["state"] in ("failed", "cancelled", "interrupted"):   # interrupted: the server restarted
            self.state = "cancelled" if status["state"] == "cancelled" else "failed"
            self.error = status.get("error") or "The job failed."
            self.needs_confirmation = bool(status.get("needs_confirmation"))
            events.append({"event": "error", "message": self.error})
        return events

    def _fetch(self) -> dict:
        path = f"/v1/jobs/{self.job_id}/result"
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.task == "classify":
            report = self.engine.call_json("GET", path)
            target = self.folder / "report.json"
            target.write_text(json.dumps(report, indent=1), encoding="utf-8")
            return {"report": str(target)}
        volume, headers = self.engine.download_volume(path)
        labels = write_nrrd(volume, self.folder / "labels.nrrd")
        table = self.folder / "labels.labels.json"
        table.write_text(headers.get("x-coralbay-label-table", "[]"), encoding="utf-8")
        return {"labels": str(labels), "label_table": str(table)}

    def wait(self, timeout: float | None = None, interval: float = 0.2) -> str:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            self.poll()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"The remote job did not finish within {timeout} s.")
            time.sleep(interval)
        return self.state

    def cancel(self) -> None:
        if self.job_id is not None and not self.finished:
            self.engine.call_json("POST", f"/v1/jobs/{self.job_id}/cancel")
            self.state, self.error = "cancelled", "Cancelled."
