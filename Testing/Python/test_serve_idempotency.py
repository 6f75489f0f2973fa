"""A create request repeated with its Idempotency-Key (`coralbay.serve.idempotency`) gets what the
first one created: on a real `coralbay serve` on loopback, across a SIGKILL of the server, for two
copies sent at once, and through a real TCP proxy that loses the first answer on its way back,
which is what makes the Slicer client (`RemoteEngine.call`) send it again."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="coralbay serve needs the [serve] extra (starlette, uvicorn)")

from serve_support import nrrd_copy, served_phantom, start_server  # noqa: E402

from CoralBaySlicerLib.remote_client import RemoteEngine, RemoteJob  # noqa: E402
from CoralBaySlicerLib.remote_session import RemoteInteractiveSession  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_seg_bundle):
    folder = tmp_path_factory.mktemp("serve-idempotency")
    server, tokens, ct, _ = served_phantom(folder, [tiny_seg_bundle], ("alice", "bob", "carol"))
    world = {"state": folder / "state", "tokens": tokens, "server": server, "bundles": [tiny_seg_bundle],
             "scan": nrrd_copy(ct, folder / "ct.nrrd")}
    world["digest"] = RemoteEngine(server.url, tokens["alice"]).upload(world["scan"])
    for user in ("bob", "carol"):
        RemoteEngine(server.url, tokens[user]).upload(world["scan"])
    yield world
    world["server"].stop()


def _post(server, path: str, token: str, body: dict, key: str | None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    data = json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Length": str(len(data)), "Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    conn.request("POST", path, body=data, headers=headers)
    response = conn.getresponse()
    answer = json.loads(response.read() or b"{}")
    conn.close()
    return response.status, answer


def _jobs_on_disk(world, user: str) -> list[str]:
    records = [json.loads(p.read_text()) for p in (world["state"] / "jobs").glob("*/job.json")]
    return sorted(r["id"] for r in records if r["user"] == user)


def _finished(engine: RemoteEngine, job_id: str, timeout: float = 300) -> str:
    """Wait for a job's end (the user's cap of running jobs is 2)."""
    deadline = time.monotonic() + timeout
    while (state := engine.call_json("GET", f"/v1/jobs/{job_id}")["state"]) == "running":
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.2)
    return state


def test_a_job_sent_again_with_its_key_is_the_same_job_even_after_a_server_kill(world):
    alice, bob = world["tokens"]["alice"], world["tokens"]["bob"]
    job = {"task": "segment", "model": "tiny-seg", "image": world["digest"]}
    key = uuid.uuid4().hex
    before = _jobs_on_disk(world, "alice")
    status, first = _post(world["server"], "/v1/jobs", alice, job, key)
    assert status == 201, first
    status, again = _post(world["server"], "/v1/jobs", alice, job, key)
    assert status == 201 and again["job"] == first["job"], (first, again)
    assert _jobs_on_disk(world, "alice") == sorted(before + [first["job"]])   # one job, not two
    engine = RemoteEngine(world["server"].url, alice)
    assert _finished(engine, first["job"]) == "done"

    # the same key with another body is refused, not answered with the first job
    status, refused = _post(world["server"], "/v1/jobs", alice, {**job, "overlap": 0.25}, key)
    assert status == 409 and "Idempotency-Key" in refused["error"] and "\n" not in refused["error"], refused
    # keys are the user's own: bob's request with the same key is a job of his
    status, bobs = _post(world["server"], "/v1/jobs", bob, job, key)
    assert status == 201 and bobs["job"] != first["job"]
    # a key that is not a random id is refused in one sentence
    status, bad = _post(world["server"], "/v1/jobs", alice, job, "x")
    assert status == 400 and "Idempotency-Key" in bad["error"], bad

    # the key is in the job's record on disk: after a SIGKILL of the server it still finds the job
    world["server"].stop(signal.SIGKILL)
    world["server"] = start_server(world["state"], world["bundles"])
    status, after = _post(world["server"], "/v1/jobs", alice, job, key)
    assert status == 201 and after["job"] == first["job"] and after["state"] == "done", after
    assert _jobs_on_disk(world, "alice") == sorted(before + [first["job"]])


@pytest.mark.parametrize("path, body", [("/v1/jobs", "job"), ("/v1/sessions", {"model": "tiny-seg"})])
def test_two_copies_sent_at_once_make_one(world, path, body):
    """The first copy may still be creating (a job awaits its image and its process) when the
    second arrives; the second waits for it and gets the same answer."""
    alice = world["tokens"]["alice"]
    body = {"task": "segment", "model": "tiny-seg", "image": world["digest"]} if body == "job" else body
    key = uuid.uuid4().hex
    before = _jobs_on_disk(world, "alice")
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _post(world["server"], path, alice, body, key), range(4)))
    assert [status for status, _ in answers] == [201] * 4, answers
    made = {answer.get("job") or answer.get("session") for _, answer in answers}
    assert len(made) == 1, answers
    status, refused = _post(world["server"], path, alice, {**body, "model": "other"}, key)
    assert status == 409 and "Idempotency-Key" in refused["error"], refused
    engine = RemoteEngine(world["server"].url, alice)
    if body.get("task"):
        assert sorted(set(_jobs_on_disk(world, "alice")) - set(before)) == sorted(made)
        _finished(engine, made.pop())
    else:
        engine.call_json("DELETE", f"/v1/sessions/{made.pop()}")


def test_jobs_sent_at_once_without_a_key_still_keep_the_cap_of_running_jobs(world):
    """Starts of one user's jobs take turns: else each await of a start let the next request pass
    the cap (2 running jobs per user) before the first job was counted."""
    carol = world["tokens"]["carol"]
    job = {"task": "segment", "model": "tiny-seg", "image": world["digest"]}
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _post(world["server"], "/v1/jobs", carol, job, None), range(4)))
    assert sorted(status for status, _ in answers) == [201, 201, 503, 503], answers
    engine = RemoteEngine(world["server"].url, carol)
    for status, answer in answers:
        if status == 201:
            _finished(engine, answer["job"])


class LosesTheFirstAnswer:
    """A TCP proxy on loopback that forwards HTTP/1.1 both ways, except that the server's answer to
    the first request whose line starts with `lose` is dropped and the client's connection closed:
    a response lost on the network after the server acted."""

    def __init__(self, port: int, lose: bytes) -> None:
        self.port, self.lose, self.lost = port, lose, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    @staticmethod
    def _message(stream, bodyless: bool = False) -> bytes:
        """One HTTP message (head and a Content-Length body; only the head of a HEAD's answer) from
        a socket file; b"" at the end."""
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = stream.readline()
            if not line:
                return b""
            head += line
        length = next((int(h.split(b":", 1)[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")), 0)
        return head if bodyless else head + stream.read(length)

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.port))
        from_client, from_server = client.makefile("rb"), upstream.makefile("rb")
        try:
            while request := self._message(from_client):
                upstream.sendall(request)
                answer = self._message(from_server, bodyless=request.startswith(b"HEAD "))
                if request.startswith(self.lose) and not self.lost:
                    self.lost += 1
                    return   # the server acted; its answer never reaches the client
                client.sendall(answer)
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self.listener.close()


def test_a_lost_answer_is_retried_by_the_client_without_a_second_job(world):
    alice = world["tokens"]["alice"]
    before = _jobs_on_disk(world, "alice")

    # why the key is needed: the same loss without one (a plain POST, retried) starts two jobs
    proxy = LosesTheFirstAnswer(world["server"].port, b"POST /v1/jobs ")
    try:
        plain = RemoteEngine(proxy.url, alice).call_json("POST", "/v1/jobs", {"task": "segment", "model": "tiny-seg",
                                                                             "image": world["digest"]})
    finally:
        proxy.close()
    made = sorted(set(_jobs_on_disk(world, "alice")) - set(before))
    assert proxy.lost == 1 and len(made) == 2 and plain["job"] in made, made
    engine = RemoteEngine(world["server"].url, alice)
    for job_id in made:
        _finished(engine, job_id)

    # the Slicer client's job start sends one key with all its tries: one job, the one it follows
    before = _jobs_on_disk(world, "alice")
    proxy = LosesTheFirstAnswer(world["server"].port, b"POST /v1/jobs ")
    try:
        job = RemoteJob(RemoteEngine(proxy.url, alice), "segment", "tiny-seg", Path(world["state"]).parent / "job-out")
        job.start(world["scan"])
        assert proxy.lost == 1
        made = sorted(set(_jobs_on_disk(world, "alice")) - set(before))
        assert made == [job.job_id], made
        assert job.wait(timeout=300) == "succeeded", job.error
    finally:
        proxy.close()

    # and so does the interactive session's start
    sessions = world["state"] / "sessions"
    earlier = {p.name for p in sessions.iterdir()}
    proxy = LosesTheFirstAnswer(world["server"].port, b"POST /v1/sessions ")
    try:
        remote = RemoteInteractiveSession(RemoteEngine(proxy.url, alice), "tiny-seg", Path(world["state"]).parent / "s")
        remote.start()
        assert proxy.lost == 1
        assert sorted({p.name for p in sessions.iterdir()} - earlier) == [remote.session_id]
        remote.close()
    finally:
        proxy.close()
