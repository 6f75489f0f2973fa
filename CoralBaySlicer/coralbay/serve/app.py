"""The HTTP API under /v1 and the middleware every request passes first.

Order of the checks (middleware, before any route runs): back-off of an address that sent too
many bad tokens (429), the token in the Authorization header (401 for missing, wrong, expired or
revoked, on every route but health), the per-user rate (429). Then each route checks its body's
size before reading it (413) and its fields before using them (400); ids of someone else's
session, image or job answer 404 like unknown ones. Every request leaves one audit line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from coralbay import __version__
from coralbay.errors import CoralBayError, InputError
from coralbay.serve.audit import AuditLog
from coralbay.serve.idempotency import HEADER as IDEMPOTENCY_HEADER, IdempotencyKey, KeyReused
from coralbay.serve.images import ImageStore, UploadConflict, check_digest
from coralbay.serve.jobs import JobManager, read_label_result, read_report
from coralbay.serve.limits import AuthBackoff, RateLimit, ServeLimits
from coralbay.serve.session_requests import check_request
from coralbay.serve.sessions import Busy, Conflict, NotFound, ServedModel, SessionManager
from coralbay.serve.users import UserStore
from coralbay.serve.volume_format import encode_volume
from coralbay.serve.worker import WorkerDied

SESSION_PATH = re.compile(r"^/v1/(sessions|jobs)/([^/]+)")
UPLOAD_BUFFER = 4 << 20
PUBLIC_PATHS = ("/v1/health",)
WORKFLOWS = ("interactive", "segment", "classify")
# Why no teach: it writes a new model from a user's accepted masks; on a shared server that model
# would have to be owned, stored, limited and offered per user. Slicer teaches on its own computer.
TEACH_NOT_OFFERED = "not offered: Teach model runs on your computer (the local engine), on the masks you accepted"


class TooLarge(CoralBayError):
    """A body above the limit (413)."""


class LengthRequired(CoralBayError):
    """A body without Content-Length (411): its size must be known before it is read."""


STATUS = [(NotFound, 404), (Busy, 503), (Conflict, 409), (KeyReused, 409), (UploadConflict, 409), (TooLarge, 413),
          (LengthRequired, 411), (WorkerDied, 503), (InputError, 400), (CoralBayError, 400)]


@dataclass
class ServerState:
    users: UserStore
    audit: AuditLog
    images: ImageStore
    sessions: SessionManager
    jobs: JobManager
    models: dict[str, ServedModel]
    limits: ServeLimits
    require_tls: bool = False


def error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _user(request: Request) -> str:
    return request.scope["coralbay_user"]


async def read_body(request: Request, cap: int) -> bytes:
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise LengthRequired("Send the body with a Content-Length header.")
    if int(length) > cap:
        raise TooLarge(f"The body has {length} bytes; this server accepts at most {cap} here.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise TooLarge(f"The body exceeds {cap} bytes.")
    if len(body) != int(length):
        raise InputError("The body is shorter than its Content-Length (the upload was cut).")
    return bytes(body)


async def read_json(request: Request, cap: int) -> object:
    body = await read_body(request, cap)
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InputError("The body must be JSON (UTF-8).") from None


def handles_errors(route: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Our errors as one sentence with their status; anything else as 500 without details."""
    async def wrapped(request: Request) -> Response:
        try:
            return await route(request)
        except CoralBayError as exc:
            status = next(code for kind, code in STATUS if isinstance(exc, kind))
            headers = {"Retry-After": str(request.app.state.coralbay.limits.retry_after_s)} if status == 503 else {}
            return error(status, str(exc), **headers)
    wrapped.__name__ = route.__name__
    return wrapped


def build_app(state: ServerState) -> Starlette:
    limits = state.limits
    upload_locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def info(request: Request) -> Response:
        return JSONResponse({"api": "v1", "version": __version__, "user": _user(request),
                             "models": [{k: v for k, v in m.summary.items() if k != "path"} for m in state.models.values()],
                             "limits": limits.public(), "workflows": list(WORKFLOWS), "teach": TEACH_NOT_OFFERED})

    async def image(request: Request) -> Response:
        user, digest = _user(request), check_digest(request.path_params["digest"])
        if request.method == "HEAD":
            found = state.images.state(user, digest)
            if found is None:
                return Response(status_code=404)
            return Response(status_code=200, headers={"Upload-Offset": str(found[1]),
                                                      "Upload-Complete": "1" if found[0] else "0"})
        key = (user, digest)
        lock = upload_locks.setdefault(key, asyncio.Lock())
        if lock.locked():
            raise Conflict("This image is being uploaded by another request.")
        async with lock:
            return await _put_image(request, user, digest)

    async def _put_image(request: Request, user: str, digest: str) -> Response:
        found = state.images.state(user, digest)
        if found is not None and found[0]:
            return JSONResponse({"image": digest, "complete": True, "stored": found[1]}, status_code=200)
        try:
            total = int(request.headers.get("upload-length", ""))
            offset = int(request.headers.get("upload-offset", "0"))
            length = int(request.headers.get("content-length", ""))
        except ValueError:
            raise LengthRequired("An upload needs Content-Length, Upload-Length and Upload-Offset headers "
                                 "(whole numbers).") from None
        if total > limits.max_upload_bytes:
            raise TooLarge(f"The image has {total} bytes; this server accepts at most {limits.max_upload_bytes}.")
        if min(total, offset, length) < 0 or offset + length > total or total == 0:
            raise InputError("Upload-Offset plus Content-Length must not exceed Upload-Length.")
        stored = found[1] if found else 0
        if offset != stored:
            return JSONResponse({"error": f"The stored part ends at byte {stored}; send from there."},
                                status_code=409, headers={"Upload-Offset": str(stored)})
        buffer, received = bytearray(), 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > length:
                    raise TooLarge("The body is longer than its Content-Length.")
                buffer += chunk
                if len(buffer) >= UPLOAD_BUFFER:
                    stored = await asyncio.to_thread(state.images.append, user, digest, stored, bytes(buffer))
                    buffer.clear()
        finally:  # what arrived is kept, even from a cut connection: the client resumes from it
            if buffer:
                stored = await asyncio.to_thread(state.images.append, user, digest, stored, bytes(buffer))
        if stored < total:
            return JSONResponse({"image": digest, "complete": False, "stored": stored}, status_code=202,
                                headers={"Upload-Offset": str(stored)})
        header = await asyncio.to_thread(state.images.finish, user, digest)
        return JSONResponse({"image": digest, "complete": True, "stored": stored, "size": list(header.size),
                             "dtype": header.dtype}, status_code=201)

    async def sessions(request: Request) -> Response:
        body = await read_json(request, 4096)
        model = body.get("model") if isinstance(body, dict) else None
        key = IdempotencyKey.of_request(_user(request), request.headers.get(IDEMPOTENCY_HEADER), body)
        session = state.sessions.create(_user(request), model, key)
        return JSONResponse({"session": session.id, "model": session.model.name}, status_code=201)

    def _session(request: Request):
        return state.sessions.get(_user(request), request.path_params["session_id"])

    async def session(request: Request) -> Response:
        if request.method == "DELETE":
            await state.sessions.delete(_user(request), request.path_params["session_id"])
            return JSONResponse({"deleted": True})
        s = _session(request)
        return JSONResponse({"session": s.id, "model": s.model.name, "last_seq": s.journal.last_seq,
                             "running": bool(s.worker and s.worker.alive), "replays": s.replays})

    async def session_request(request: Request) -> Response:
        s = _session(request)
        seq, body = check_request(await read_json(request, limits.max_json_bytes))
        answer, status = await s.handle(seq, body)
        return JSONResponse(answer, status_code=status)

    async def events(request: Request) -> Response:
        s = _session(request)
        try:
            after = int(request.query_params.get("after", "0"))
            wait = min(float(request.query_params.get("wait", str(limits.long_poll_s))), limits.long_poll_s)
        except ValueError:
            raise InputError("after is a whole number and wait a number of seconds.") from None
        if not wait >= 0:
            raise InputError("wait must be a number of seconds >= 0.")
        return JSONResponse({"events": await s.events_after(after, wait, state.sessions.closing)})

    async def cancel(request: Request) -> Response:
        await _session(request).cancel()
        return JSONResponse({"cancelled": True})

    async def mask(request: Request) -> Response:
        s = _session(request)
        voxels = await s.mask(request.path_params["name"])
        return await _volume_response(voxels, s.geometry())

    async def labels(request: Request) -> Response:
        s = _session(request)
        voxels, structures = await s.labels()
        return await _volume_response(voxels, s.geometry(), {"X-CoralBay-Structures": json.dumps(structures)})

    async def _volume_response(voxels, header, headers: dict | None = None) -> Response:
        body = await asyncio.to_thread(encode_volume, voxels, header.spacing, header.origin, header.direction)
        return Response(body, media_type="application/octet-stream", headers=headers)

    async def jobs(request: Request) -> Response:
        body = await read_json(request, 4096)
        key = IdempotencyKey.of_request(_user(request), request.headers.get(IDEMPOTENCY_HEADER), body)
        job = await state.jobs.create(_user(request), body, key)
        return JSONResponse(job.public(), status_code=201)

    async def job(request: Request) -> Response:
        return JSONResponse(state.jobs.get(_user(request), request.path_params["job_id"]).public())

    async def job_cancel(request: Request) -> Response:
        return JSONResponse(state.jobs.cancel(_user(request), request.path_params["job_id"]).public())

    async def job_result(request: Request) -> Response:
        found = state.jobs.result(_user(request), request.path_params["job_id"])
        if found.task == "classify":
            return JSONResponse(await asyncio.to_thread(read_report, found))
        body, table = await asyncio.to_thread(read_label_result, found)
        return Response(body, media_type="application/octet-stream", headers={"X-CoralBay-Label-Table":
                                                                              json.dumps(json.loads(table))})

    routes = [
        Route("/v1/health", health, methods=["GET"]),
        Route("/v1/info", handles_errors(info), methods=["GET"]),
        Route("/v1/images/{digest}", handles_errors(image), methods=["HEAD", "PUT"]),
        Route("/v1/sessions", handles_errors(sessions), methods=["POST"]),
        Route("/v1/sessions/{session_id}", handles_errors(session), methods=["GET", "DELETE"]),
        Route("/v1/sessions/{session_id}/requests", handles_errors(session_request), methods=["POST"]),
        Route("/v1/sessions/{session_id}/events", handles_errors(events), methods=["GET"]),
        Route("/v1/sessions/{session_id}/cancel", handles_errors(cancel), methods=["POST"]),
        Route("/v1/sessions/{session_id}/masks/{name}", handles_errors(mask), methods=["GET"]),
        Route("/v1/sessions/{session_id}/labels", handles_errors(labels), methods=["GET"]),
        Route("/v1/jobs", handles_errors(jobs), methods=["POST"]),
        Route("/v1/jobs/{job_id}", handles_errors(job), methods=["GET"]),
        Route("/v1/jobs/{job_id}/cancel", handles_errors(job_cancel), methods=["POST"]),
        Route("/v1/jobs/{job_id}/result", handles_errors(job_result), methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        async def sweep_forever() -> None:   # idle sessions, expired sessions and finished jobs
            while True:
                await asyncio.sleep(limits.sweep_every_s)
                await state.sessions.sweep()
                await state.jobs.sweep()

        sweeper = asyncio.get_running_loop().create_task(sweep_forever())
        yield
        sweeper.cancel()
        await state.sessions.close_all()   # workers and jobs end with the server
        await state.jobs.close_all()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.coralbay = state
    return SecurityMiddleware(app, state)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class SecurityMiddleware:
    """Token, back-off, rate and audit around every route (health only answers "ok")."""

    def __init__(self, app: Starlette, state: ServerState) -> None:
        self.app, self.state = app, state
        self.backoff = AuthBackoff(state.limits)
        self.rate = RateLimit(state.limits)

    @property
    def routes(self):
        return self.app.routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        address = (scope.get("client") or ("?", 0))[0]
        path = scope.get("path", "")
        sent = {"status": 0, "bytes": 0}

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
            elif message["type"] == "http.response.body":
                sent["bytes"] += len(message.get("body", b""))
            await send(message)

        user = None
        try:
            if self.state.require_tls and scope.get("scheme") != "https":
                return await error(403, "This server accepts only TLS connections (https).")(scope, receive, counting_send)
            if path in PUBLIC_PATHS:
                return await self.app(scope, receive, counting_send)
            wait = self.backoff.retry_after(address)
            if wait > 0:
                return await error(429, "Too many failed logins from this address; wait and try again.",
                                   **{"Retry-After": str(int(wait) + 1)})(scope, receive, counting_send)
            user = self._authenticate(scope)
            if user is None:
                self.backoff.failed(address)
                return await error(401, "A valid token is needed in the Authorization header (Bearer).",
                                   **{"WWW-Authenticate": "Bearer"})(scope, receive, counting_send)
            if not self.rate.allow(user):
                return await error(429, "Too many requests; slow down.", **{"Retry-After": "1"})(
                    scope, receive, counting_send)
            scope["coralbay_user"] = user
            await self.app(scope, receive, counting_send)
        finally:
            match = SESSION_PATH.match(path)
            self.state.audit.write(user=user, address=address, method=scope.get("method"), path=path,
                                   session=match.group(2) if match and match.group(1) == "sessions" else None,
                                   status=sent["status"], bytes_in=_content_length(scope), bytes_out=sent["bytes"],
                                   duration_ms=round((time.perf_counter() - started) * 1000, 1))

    def _authenticate(self, scope) -> str | None:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    return None
                found = self.state.users.authenticate(token.strip())
                return found.name if found else None
        return None
