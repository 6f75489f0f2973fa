"""`coralbay serve` doing the work: uploads by hash, an interactive session against the local
engine, ownership, replay after killing the worker and the whole server, and jobs. Real server
and real `coralbay interact` workers on 127.0.0.1, the tiny bundle, the small phantom."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the serve extra (starlette, uvicorn, cryptography) is not installed")

import SimpleITK as sitk  # noqa: E402

from conftest import ENGINE_DIR, cli_env, run_cli  # noqa: E402
from serve_support import nrrd_copy, served_phantom, start_server  # noqa: E402

from CoralBaySlicerLib.interactive_session import InteractiveSession, interact_argv  # noqa: E402
from CoralBaySlicerLib.remote_client import RemoteEngine, RemoteError, RemoteJob  # noqa: E402
from CoralBaySlicerLib.remote_session import RemoteInteractiveSession  # noqa: E402
from CoralBaySlicerLib.remote_volumes import encode_upload, read_nrrd  # noqa: E402

import sys  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_seg_bundle, tiny_cls_bundle):
    folder = tmp_path_factory.mktemp("serve-sessions")
    server, tokens, ct, labels = served_phantom(folder, [tiny_seg_bundle, tiny_cls_bundle], ("alice", "bob"))
    state = folder / "state"
    world = {"folder": folder, "ct": ct, "labels": labels, "scan": nrrd_copy(ct, folder / "ct.nrrd"), "state": state,
             "tokens": tokens, "server": server, "bundles": [tiny_seg_bundle, tiny_cls_bundle]}
    yield world
    world["server"].stop()   # the one running now (a test restarts it)


def _clicks(labels: Path) -> list[dict]:
    """Six clicks on the liver: five inside at spread positions, one negative just outside."""
    image = sitk.ReadImage(str(labels))
    voxels = np.argwhere(sitk.GetArrayFromImage(image) == 1)
    inside = [voxels[int(len(voxels) * f)] for f in (0.5, 0.2, 0.8, 0.35, 0.65)]
    outside = np.argwhere(sitk.GetArrayFromImage(image) == 0)[len(voxels) // 3]
    lps = lambda zyx: [float(c) for c in image.TransformIndexToPhysicalPoint([int(i) for i in zyx[::-1]])]  # noqa: E731
    clicks = [{"lps": lps(v), "positive": True} for v in inside]
    clicks.insert(4, {"lps": lps(outside), "positive": False})
    return clicks


def _mask(path: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def _status(server, method: str, path: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    data = json.dumps(body).encode() if body is not None else b""
    conn.request(method, path, body=data, headers={"Authorization": f"Bearer {token}", "Content-Length": str(len(data))})
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, {}


def test_upload_once_by_hash_resumable_and_checked(world):
    engine = RemoteEngine(world["server"].url, world["tokens"]["alice"], compression="zlib")  # checked and inflated
    body = encode_upload(read_nrrd(world["scan"]))
    digest = hashlib.sha256(body).hexdigest()
    half = len(body) // 2
    status, headers, _ = engine.call("PUT", f"/v1/images/{digest}", body[:half],
                                     {"Upload-Offset": "0", "Upload-Length": str(len(body))})
    assert status == 202 and int(headers["upload-offset"]) == half     # a cut upload keeps what arrived
    status, headers, _ = engine.call("HEAD", f"/v1/images/{digest}")
    assert headers["upload-complete"] == "0" and int(headers["upload-offset"]) == half
    assert engine.upload(world["scan"]) == digest                       # resumes from the offset
    status, headers, _ = engine.call("HEAD", f"/v1/images/{digest}")
    assert headers["upload-complete"] == "1"
    assert engine.upload(world["scan"]) == digest                       # again: found by its hash
    bob = RemoteEngine(world["server"].url, world["tokens"]["bob"])
    assert bob.call("HEAD", f"/v1/images/{digest}", ok=(404,))[0] == 404   # dedup is per user
    wrong = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(RemoteError, match="SHA-256") as refused:
        engine.upload_bytes(body, wrong)
    assert refused.value.status == 400 and bob.call("HEAD", f"/v1/images/{wrong}", ok=(404,))[0] == 404


def test_the_same_voxels_are_not_encoded_again_while_the_server_has_them(world, tmp_path, monkeypatch):
    """An open of the same scan from another file (Slicer writes a new temporary one each time)
    costs a raw hash and a HEAD, not an encoding (seconds of zlib for a CT over a network);
    once the server no longer has it, it is encoded and sent again. Encodings are counted."""
    import CoralBaySlicerLib.remote_client as client

    encodings = []
    real = client.encode_and_hash
    monkeypatch.setattr(client, "encode_and_hash", lambda *a: encodings.append(1) or real(*a))
    again = nrrd_copy(world["ct"], tmp_path / "again.nrrd", compress=False)
    engine = RemoteEngine(world["server"].url, world["tokens"]["alice"], compression="none")
    digest = engine.upload(world["scan"])
    assert engine.upload(again) == engine.upload(read_nrrd(again)) == digest and len(encodings) == 1
    stored = world["state"] / "images" / "alice" / f"{digest}.cbv"
    stored.unlink()
    assert engine.upload(again) == digest and len(encodings) == 2 and stored.is_file()


def test_remote_session_equals_local_and_survives_kills(world, tmp_path):
    """Clicks 1-6 remote and local give identical masks; the worker is killed after click 3 and the
    whole server after click 5 (then a first try of click 6 is cancelled during the rebuild), and
    click 6 still equals the uninterrupted local run."""
    server, tokens = world["server"], world["tokens"]
    clicks = _clicks(world["labels"])
    local = InteractiveSession(interact_argv(sys.executable, str(world["bundles"][0]), tmp_path / "local-out",
                                             tmp_path / "local-examples", device="CPU", cache_dir=tmp_path / "cache"),
                               env={**cli_env(), "PYTHONPATH": str(ENGINE_DIR)})
    local.start()
    engine = RemoteEngine(server.url, tokens["alice"])
    remote = RemoteInteractiveSession(engine, "tiny-seg", tmp_path / "remote")
    remote.start()
    try:
        for session in (local, remote):
            assert session.ask("open", image=str(world["scan"]))["event"] == "result"
            assert session.ask("start", name="liver", value=1)["event"] == "result"
        sid = remote.session_id
        for number, click in enumerate(clicks, start=1):
            if number == 4:   # the worker dies between clicks 3 and 4: the next request replays
                _kill_workers_of(world["state"] / "sessions" / sid)
            if number == 6:   # the whole server dies between clicks 5 and 6, and comes back
                server.stop(signal.SIGKILL)
                world["server"] = server = start_server(world["state"], world["bundles"])
                engine = RemoteEngine(server.url, tokens["alice"])
                remote.engine = engine
                # click 6 starts the rebuild; Cancel stops it and click 6 is not applied. The new
                # worker is stopped first: else a fast machine finishes the rebuild within the grace
                earlier = _workers_of(world["state"] / "sessions" / sid)
                request_id = remote.request("point", name="liver", **click)
                _stop_new_worker_of(world["state"] / "sessions" / sid, earlier)
                cancelled_at = time.monotonic()
                assert remote.cancel() == [request_id]
                answer = remote.wait(request_id, timeout=60)
                assert answer["event"] == "error" and answer["message"] == "Cancelled.", answer
                cancel_seconds = time.monotonic() - cancelled_at
                assert cancel_seconds < 10, cancel_seconds   # about 2 s: the worker is stopped after the grace
            want = local.ask("point", name="liver", **click)
            got = remote.ask("point", name="liver", **click)
            assert got["event"] == want["event"] == "result", (number, got, want)
            assert got["voxels"] == want["voxels"] and np.array_equal(_mask(got["mask"]), _mask(want["mask"])), number
        status, info = _status(server, "GET", f"/v1/sessions/{sid}", tokens["alice"])
        assert status == 200 and info["last_seq"] == 9 and info["replays"] >= 1   # the cancelled click has seq 8
        # the same sequence number again: the stored answer, not a 7th click
        seq7 = {"seq": 9, "type": "point", "name": "liver", **clicks[5]}
        status, again = _status(server, "POST", f"/v1/sessions/{sid}/requests", tokens["alice"], seq7)
        assert status == 200 and again["repeated"] and again["answer"] == got["answer"]
        assert _status(server, "GET", f"/v1/sessions/{sid}", tokens["alice"])[1]["last_seq"] == 9
        # user B on A's ids: 404 everywhere, A's state unchanged
        bob = tokens["bob"]
        for method, path, body in [("GET", f"/v1/sessions/{sid}", None),
                                   ("POST", f"/v1/sessions/{sid}/requests", {"seq": 10, "type": "undo", "name": "liver"}),
                                   ("GET", f"/v1/sessions/{sid}/events?wait=0", None),
                                   ("POST", f"/v1/sessions/{sid}/cancel", {}),
                                   ("GET", f"/v1/sessions/{sid}/masks/liver", None),
                                   ("GET", f"/v1/sessions/{sid}/labels", None),
                                   ("DELETE", f"/v1/sessions/{sid}", None)]:
            assert _status(server, method, path, bob, body)[0] == 404, (method, path)
        assert _status(server, "GET", f"/v1/sessions/{sid}", tokens["alice"])[1]["last_seq"] == 9
        accepted = remote.ask("accept", name="liver")
        labels = remote.ask("labels", path=str(tmp_path / "accepted.nii.gz"))
        assert accepted["event"] == "result" and labels["structures"] == {"liver": 1}
        assert np.array_equal(_mask(labels["path"]) == 1, _mask(got["mask"]) == 1)
    finally:
        local.close()
        remote.close()


def _kill_workers_of(session_folder: Path) -> None:
    """SIGKILL the session's `coralbay interact` process (found by its output folder on the command line)."""
    workers = _workers_of(session_folder)
    assert len(workers) == 1, workers
    os.kill(workers.pop(), signal.SIGKILL)


def _workers_of(session_folder: Path) -> set[int]:
    """The pids of the session's `coralbay interact` processes (their output folder is on the command line)."""
    import psutil

    marker = str(session_folder / "work")
    found = set()
    for process in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in process.info["cmdline"] or []):
            found.add(process.pid)
    return found


def _stop_new_worker_of(session_folder: Path, earlier: set[int], timeout: float = 120) -> None:
    """SIGSTOP the session's worker that is not one of `earlier` (waits for it to appear)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = _workers_of(session_folder) - earlier
        if new:
            for pid in new:
                os.kill(pid, signal.SIGSTOP)
            return
        time.sleep(0.02)
    raise AssertionError("the server started no worker for the session")


def test_jobs_run_the_commands_and_cancel(world, tmp_path, tiny_seg_bundle, tiny_cls_bundle):
    engine = RemoteEngine(world["server"].url, world["tokens"]["alice"])
    job = RemoteJob(engine, "segment", "tiny-seg", tmp_path / "seg")
    job.start(world["scan"])
    assert job.wait(timeout=300) == "succeeded", job.error
    local = run_cli("segment", world["scan"], "--model", tiny_seg_bundle, "--output", tmp_path / "local.nrrd",
                    "--device", "cpu", "--progress", "none")
    assert local.returncode == 0, local.stderr
    assert np.array_equal(_mask(job.result["outputs"]["labels"]), _mask(str(tmp_path / "local.nrrd")))
    assert "liver" in Path(job.result["outputs"]["label_table"]).read_text()
    cls = RemoteJob(engine, "classify", "tiny-cla", tmp_path / "cls")
    cls.start(world["scan"])
    assert cls.wait(timeout=300) == "succeeded", cls.error
    report = json.loads(Path(cls.result["outputs"]["report"]).read_text())
    assert set(report["probabilities"]) == {"negative", "positive"} and "input" not in report
    assert abs(sum(report["probabilities"].values()) - 1) < 1e-4
    slow = RemoteJob(engine, "segment", "tiny-seg", tmp_path / "cancelled")
    slow.start(world["scan"])
    slow.cancel()
    status, info = _status(world["server"], "GET", f"/v1/jobs/{slow.job_id}", world["tokens"]["alice"])
    assert info["state"] == "cancelled"
    assert _status(world["server"], "GET", f"/v1/jobs/{slow.job_id}", world["tokens"]["bob"])[0] == 404
    with pytest.raises(RemoteError) as refused:   # a model the server does not offer for the task
        engine.call_json("POST", "/v1/jobs", {"task": "classify", "model": "tiny-seg", "image": "0" * 64})
    assert refused.value.status == 400
    # the server is SIGKILLed while a job runs: after the restart the finished jobs' results are
    # still there, the running one says interrupted (or done, had it finished); never a 5xx
    running = RemoteJob(engine, "segment", "tiny-seg", tmp_path / "interrupted")
    running.start(world["scan"])
    world["server"].stop(signal.SIGKILL)
    world["server"] = server = start_server(world["state"], world["bundles"])
    engine = RemoteEngine(server.url, world["tokens"]["alice"])
    assert engine.call_json("GET", f"/v1/jobs/{cls.job_id}")["state"] == "done"
    assert engine.call_json("GET", f"/v1/jobs/{cls.job_id}/result") == report
    volume, _ = engine.download_volume(f"/v1/jobs/{job.job_id}/result")
    assert volume.data == _mask(job.result["outputs"]["labels"]).tobytes()
    state = engine.call_json("GET", f"/v1/jobs/{running.job_id}")
    assert state["state"] in ("done", "interrupted"), state
    if state["state"] == "interrupted":
        assert "start it again" in state["error"]
        running.engine = engine
        assert running.wait(timeout=30) == "failed" and "start it again" in running.error
    assert engine.call_json("GET", f"/v1/jobs/{slow.job_id}")["state"] == "cancelled"


def test_idle_sessions_stop_their_worker_then_expire(world, tmp_path):
    """A server with small idle and expiry times: a session without requests has its worker
    stopped (journal kept: the next click replays it, as after a kill; that the replay gives the
    uninterrupted run's masks is the kill test's), and one untouched for longer is removed."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "users.json").write_bytes((world["state"] / "users.json").read_bytes())
    os.chmod(state / "users.json", 0o600)
    # idle after 3 s (a stall of the test between its requests must not reach it), expiry after 10.8 s
    server = start_server(state, world["bundles"], "--session-idle-minutes", "0.05", "--session-expire-hours", "0.003")
    alice = world["tokens"]["alice"]
    try:
        engine = RemoteEngine(server.url, alice)
        info = engine.call_json("GET", "/v1/info")   # clients read the times, and that teach is not offered
        assert info["limits"]["session_idle_s"] == pytest.approx(3.0) and info["teach"].startswith("not offered")
        assert "teach" not in info["workflows"]
        forgotten = engine.call_json("POST", "/v1/sessions", {"model": "tiny-seg"})["session"]
        remote = RemoteInteractiveSession(engine, "tiny-seg", tmp_path / "remote")
        remote.start()
        clicks = _clicks(world["labels"])
        assert remote.ask("open", image=str(world["scan"]))["event"] == "result"
        assert remote.ask("start", name="liver", value=1)["event"] == "result"
        first = remote.ask("point", name="liver", **clicks[0])
        sid = remote.session_id
        deadline = time.monotonic() + 60
        while _status(server, "GET", f"/v1/sessions/{sid}", alice)[1]["running"]:   # idle after 3 s
            assert time.monotonic() < deadline, "the idle worker was not stopped"
            time.sleep(0.3)
        second = remote.ask("point", name="liver", **clicks[1])
        info = _status(server, "GET", f"/v1/sessions/{sid}", alice)[1]
        # a result (not "open a scan first"): the stopped worker's state came back from the journal
        assert first["event"] == second["event"] == "result" and info["replays"] == 1 and info["last_seq"] == 4
        while _status(server, "GET", f"/v1/sessions/{forgotten}", alice)[0] != 404:   # expired after 10.8 s
            assert time.monotonic() < deadline + 60, "the expired session was not removed"
            time.sleep(0.5)
        assert not (state / "sessions" / forgotten).exists()
        remote.close()
    finally:
        server.stop()
