"""Acceptance measurements of `coralbay serve` on one machine, loopback only (docs/serve-admin.md).

    PYTHONPATH=CoralBaySlicer python benchmarks/serve/serve_bench.py --json benchmarks/serve/result.json

1. Per click, remote minus local: the same clicks on the same scan through the server (plain
   http and TLS) and through a local `coralbay interact` process, interleaved click by click so
   machine load hits both alike; median and p95 of the difference; masks compared voxel by voxel.
2. Upload of a 512x512x300 int16 CT: plain, TLS, repeated (resolved by its hash), resumed after a cut.
3. N users x M clicks at once on a server capped at N sessions: errors, masks equal to the solo
   (local) run, and the (N+1)th session refused with 503.
4. Cancel: user B cancels a session request (features of a larger scan) and a segment job while
   user A clicks; how long each cancel takes, and A's latency before vs during.
Times are wall-clock seconds of this machine; the JSON records the command and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "CoralBaySlicer"))

from CoralBaySlicerLib.interactive_session import InteractiveSession, interact_argv  # noqa: E402
from CoralBaySlicerLib.remote_client import RemoteEngine, RemoteError, RemoteJob  # noqa: E402
from CoralBaySlicerLib.remote_session import RemoteInteractiveSession  # noqa: E402
from CoralBaySlicerLib.remote_volumes import Volume, encode_and_hash  # noqa: E402

MODEL = "demo-phantom-seg"
POLL_S = 0.001
DEVICE = ["cpu"]   # --device: the engine processes' device, local and served alike
OPEN_CANCEL_AFTER_S = 4.0   # B cancels its open this long after asking (it takes ~8 s here)


def engine_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "CoralBaySlicer"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def start_server(state: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "coralbay", "serve", "--model", MODEL, "--state-dir", str(state),
                                "--port", "0", "--device", DEVICE[0], "--requests-per-second", "1000", *extra],
                               stdout=subprocess.PIPE, text=True, env=engine_env())
    return process, json.loads(process.stdout.readline())["url"]


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)


def add_user(state: Path, name: str) -> str:
    out = subprocess.run([sys.executable, "-m", "coralbay", "serve", "add-user", name, "--state-dir", str(state)],
                         capture_output=True, text=True, env=engine_env(), check=True)
    return out.stdout.strip().splitlines()[-1]


def phantom(folder: Path, spacing: float = 3.0) -> tuple[Path, Path]:
    from coralbay.phantom import generate_phantom, write_phantom

    ph = generate_phantom(10007, spacing=spacing, size_mm=(180, 150, 120), lesions=False)   # development phantom
    folder.mkdir(parents=True, exist_ok=True)
    ct, labels = folder / "ct.nii.gz", folder / "labels.nii.gz"
    write_phantom(ph, ct, labels)
    scan = folder / "ct.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(ct)), str(scan), True)
    return scan, labels


def clicks(labels: Path, count: int, name_value: int = 1) -> list[dict]:
    """Alternating positive clicks inside the structure and negative ones just outside, seeded."""
    image = sitk.ReadImage(str(labels))
    array = sitk.GetArrayFromImage(image)
    inside, outside = np.argwhere(array == name_value), np.argwhere((array == 0))
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        zyx = inside[rng.integers(len(inside))] if i % 3 != 2 else outside[rng.integers(len(outside))]
        out.append({"lps": [float(c) for c in image.TransformIndexToPhysicalPoint([int(v) for v in zyx[::-1]])],
                    "positive": i % 3 != 2})
    return out


def mask(path: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def ask_now(session, kind: str, **fields) -> dict:
    """`ask`, polling every millisecond instead of the panel timer's 20 ms, for local and remote
    alike: the timer would add up to 20 ms of its own to either side of each difference."""
    return session.wait(session.request(kind, **fields), 600, interval=POLL_S)


def summary(values: list[float]) -> dict:
    return {"median_ms": round(statistics.median(values) * 1000, 1),
            "p95_ms": round(float(np.percentile(values, 95)) * 1000, 1), "n": len(values)}


def latency(work: Path, scan: Path, labels: Path, count: int, tls_dir: Path | None) -> tuple[dict, list[np.ndarray]]:
    state = work / "lat-state"
    token = add_user(state, "alice")
    servers = [start_server(state)]
    if tls_dir is not None:
        servers.append(start_server(work / "lat-state-tls", "--tls-cert", str(tls_dir / "server.pem"),
                                    "--tls-key", str(tls_dir / "server.key")))
        (work / "lat-state-tls" / "users.json").write_bytes((state / "users.json").read_bytes())
    panel_device = {"cpu": "CPU", "cuda": "GPU"}[DEVICE[0]]
    local = InteractiveSession(interact_argv(sys.executable, MODEL, work / "local-out", work / "local-ex",
                                             device=panel_device, cache_dir=work / "local-cache"), env=engine_env())
    local.start()
    remotes = []
    for index, (_, url) in enumerate(servers):
        engine = RemoteEngine(url, token, ca_file=str(tls_dir / "ca.pem") if url.startswith("https") else None)
        session = RemoteInteractiveSession(engine, MODEL, work / f"remote-{index}")
        session.start()
        remotes.append(session)
    try:
        for session in [local, *remotes]:
            assert session.ask("open", image=str(scan), timeout=600)["event"] == "result"
            assert session.ask("start", name="liver", value=1, timeout=600)["event"] == "result"
        times = {"local": [], "plain": [], "tls": []}
        local_masks, identical = [], 0
        for click in clicks(labels, count):
            started = time.perf_counter()
            want = ask_now(local, "point", name="liver", **click)
            times["local"].append(time.perf_counter() - started)
            local_masks.append(mask(want["mask"]))
            for session, key in zip(remotes, ("plain", "tls")):
                started = time.perf_counter()
                got = ask_now(session, "point", name="liver", **click)
                times[key].append(time.perf_counter() - started)
                identical += int(np.array_equal(mask(got["mask"]), local_masks[-1]))
        result = {"clicks": count, "poll_interval_s": POLL_S, "local": summary(times["local"]),
                  "masks_identical": identical,
                  "masks_compared": count * len(remotes)}
        for key in ("plain", "tls")[:len(remotes)]:
            result[f"{key}_minus_local"] = summary([r - l for r, l in zip(times[key], times["local"])])
        return result, local_masks
    finally:
        for session in [local, *remotes]:
            session.close()
        for process, _ in servers:
            stop(process)


def upload(work: Path, tls_dir: Path | None, shape=(300, 512, 512)) -> dict:
    """Encoding (with its hash) and sending are timed apart; `*_upload_s` is the sending, the
    `*_total_s` a user waits is encode + send. "none" is what the client sends to a loopback
    server by default (compression="auto"); "zlib" (level 1) what it sends over a network."""
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    body = ((y - shape[1] / 2) ** 2 / (0.4 * shape[1]) ** 2 + (x - shape[2] / 2) ** 2 / (0.45 * shape[2]) ** 2) < 1
    ct = np.where(body, 40, -1000).astype(np.int16) + rng.normal(0, 15, shape).astype(np.int16)  # CT-like noise
    volume = Volume("int16", shape[::-1], (0.8, 0.8, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), ct.tobytes())
    result: dict = {"shape_xyz": list(shape[::-1])}
    encoded = {}
    for compression in ("none", "zlib"):
        started = time.perf_counter()
        encoded[compression] = encode_and_hash(volume, compression)
        result[f"{compression}_encoded_mb"] = round(len(encoded[compression][0]) / 1e6, 1)
        result[f"{compression}_encode_and_hash_s"] = round(time.perf_counter() - started, 2)
    for key, tls in (("plain", None), ("resumed", None), ("tls", tls_dir)):
        if key == "tls" and tls is None:
            continue
        state = work / f"up-{key}"
        token = add_user(state, "alice")
        extra = ("--tls-cert", str(tls / "server.pem"), "--tls-key", str(tls / "server.key")) if tls else ()
        process, url = start_server(state, *extra)
        try:
            engine = RemoteEngine(url, token, ca_file=str(tls / "ca.pem") if tls else None)
            result.setdefault("client_default_to_loopback", engine.upload_compression(volume))
            for compression in ("none", "zlib") if key != "resumed" else ("none",):
                data, digest = encoded[compression]
                name = f"{key}_{compression}"
                if key == "resumed":   # a killed upload: the first half arrived, the client resumes from there
                    half = len(data) // 2
                    engine.call("PUT", f"/v1/images/{digest}", data[:half],
                                {"Upload-Offset": "0", "Upload-Length": str(len(data))})
                    result["resumed_from_offset"] = int(engine.call("HEAD", f"/v1/images/{digest}")[1]["upload-offset"])
                started = time.perf_counter()
                engine.upload_bytes(data, digest)
                result[f"{name}_upload_s"] = round(time.perf_counter() - started, 2)
                encode_s = result[f"{compression}_encode_and_hash_s"]
                result[f"{name}_total_s"] = round(result[f"{name}_upload_s"] + encode_s, 2)
                started = time.perf_counter()
                engine.upload_bytes(data, digest)
                result[f"{name}_repeated_by_hash_s"] = round(time.perf_counter() - started, 3)
        finally:
            stop(process)
    return result


def concurrent(work: Path, scan: Path, labels: Path, users: int, per_user: int, solo: list[np.ndarray]) -> dict:
    state = work / "conc-state"
    tokens = [add_user(state, f"user{i}") for i in range(users + 1)]
    process, url = start_server(state, "--sessions-total", str(users), "--sessions-per-user", "1")
    sessions = [RemoteInteractiveSession(RemoteEngine(url, token), MODEL, work / f"user{i}") for i, token in
                enumerate(tokens[:users])]
    errors, equal = [], [0] * users
    try:
        for session in sessions:
            session.start()
        try:
            RemoteInteractiveSession(RemoteEngine(url, tokens[-1]), MODEL, work / "ninth").start()
            ninth = "accepted (cap not enforced)"
        except RemoteError as exc:
            ninth = f"{exc.status} {exc}"
        the_clicks = clicks(labels, per_user)

        def user(index: int) -> None:
            session = sessions[index]
            try:
                for kind, fields in (("open", {"image": str(scan)}), ("start", {"name": "liver", "value": 1})):
                    if session.ask(kind, timeout=1800, **fields)["event"] != "result":
                        errors.append((index, kind))
                for number, click in enumerate(the_clicks):
                    got = session.ask("point", name="liver", timeout=1800, **click)
                    if got["event"] != "result":
                        errors.append((index, number, got.get("message")))
                    elif np.array_equal(mask(got["mask"]), solo[number]):
                        equal[index] += 1
            except Exception as exc:  # noqa: BLE001 - counted as an error of this user
                errors.append((index, repr(exc)))

        started = time.perf_counter()
        threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        health = RemoteEngine(url, tokens[0]).call("GET", "/v1/health")[0]
        return {"users": users, "clicks_per_user": per_user, "errors": errors, "masks_equal_solo": equal,
                "ninth_session": ninth, "health_after": health, "seconds": round(time.perf_counter() - started, 1)}
    finally:
        for session in sessions:
            session.close()
        stop(process)


def cancel(work: Path, scan: Path, labels: Path, per_phase: int) -> dict:
    """User A clicks; user B (the phantom at 1 mm, 27x the voxels) opens it in a session and runs a
    segment job, and cancels each once it is under way. How long each cancel takes to come back
    (the session's answer "Cancelled.", the job's state), and A's click latency: alone, while B's
    work runs, and in the 3 s after each cancel (the same server; the machine's CPUs are shared
    by A, B's processes and the server, so B's work itself slows A on a small machine)."""
    state = work / "cancel-state"
    alice, bob = add_user(state, "alice"), add_user(state, "bob")
    big, _ = phantom(work / "big", spacing=1.0)
    process, url = start_server(state)
    a = RemoteInteractiveSession(RemoteEngine(url, alice), MODEL, work / "cancel-a")
    b = RemoteInteractiveSession(RemoteEngine(url, bob), MODEL, work / "cancel-b")
    the_clicks = clicks(labels, per_phase)
    done: list[tuple[float, float]] = []   # (start, seconds) of A's clicks while B works
    enough = threading.Event()

    def clicker(count: int | None) -> None:
        number = 0
        while not enough.is_set() and (count is None or number < count):
            started = time.perf_counter()
            answer = ask_now(a, "point", name="liver", **the_clicks[number % len(the_clicks)])
            assert answer["event"] == "result", answer
            done.append((started, time.perf_counter() - started))
            number += 1

    result: dict = {"b_scan_size": list(sitk.ReadImage(str(big)).GetSize())}
    marks: dict[str, float] = {}
    try:
        for session in (a, b):
            session.start()
        assert ask_now(a, "open", image=str(scan))["event"] == "result"
        assert ask_now(a, "start", name="liver", value=1)["event"] == "result"
        clicker(per_phase)                          # A alone: the baseline
        before = [t for _, t in done]
        done.clear()
        thread = threading.Thread(target=clicker, args=(None,))
        thread.start()
        marks["session_work"] = time.perf_counter()
        request = b.request("open", image=str(big))   # B's worker start and features: ~8 s on 2 busy CPUs
        time.sleep(OPEN_CANCEL_AFTER_S)
        marks["session_cancel"] = started = time.perf_counter()
        b.cancel()
        answer = b.wait(request, 600, interval=POLL_S)
        result["session_cancel_s"] = round(time.perf_counter() - started, 2)
        result["session_cancel_answer"] = answer.get("message") if answer["event"] == "error" else "finished first"
        job = RemoteJob(b.engine, "segment", MODEL, work / "cancel-job")
        marks["job_work"] = time.perf_counter()
        job.start(big)
        while job.fraction < 0.2 and not job.finished:   # past loading: sliding windows run
            job.poll()
            time.sleep(0.05)
        marks["job_cancel"] = started = time.perf_counter()
        job.cancel()
        result["job_state_after_cancel"] = b.engine.call_json("GET", f"/v1/jobs/{job.job_id}")["state"]
        result["job_cancel_s"] = round(time.perf_counter() - started, 2)
        time.sleep(3.0)
        enough.set()
        thread.join()
        working = [t for s, t in done if marks["session_work"] <= s < marks["session_cancel"]
                   or marks["job_work"] <= s < marks["job_cancel"]]
        after = [t for s, t in done if any(0 <= s - marks[k] < 3.0 for k in ("session_cancel", "job_cancel"))]
        result["a_clicks_alone"] = summary(before)
        result["a_clicks_while_b_works"] = summary(working) if working else None
        result["a_clicks_3s_after_b_cancels"] = summary(after) if after else None
        return result
    finally:
        enough.set()
        for session in (a, b):
            session.close()
        stop(process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clicks", type=int, default=50)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--user-clicks", type=int, default=20)
    parser.add_argument("--parts", default="latency,upload,concurrent,cancel")
    parser.add_argument("--cancel-clicks", type=int, default=20, help="A's clicks before B starts (cancel part)")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="device of the engine processes, local and served (cuda: the GPU latency table)")
    args = parser.parse_args()
    parts = args.parts.split(",")
    DEVICE[0] = args.device
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "commit": commit,
              "load_average_at_start": os.getloadavg(),
              "cpus": os.cpu_count(), "model": MODEL, "device": args.device}
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp)
        scan, labels = phantom(work)
        subprocess.run([sys.executable, "-m", "coralbay", "serve", "init-tls", "--host", "127.0.0.1", "--output",
                        str(work / "tls")], check=True, env=engine_env(), capture_output=True)
        solo: list[np.ndarray] = []
        if "latency" in parts or "concurrent" in parts:
            result["latency"], solo = latency(work, scan, labels, max(args.clicks, args.user_clicks), work / "tls")
        if "upload" in parts:
            result["upload"] = upload(work, work / "tls")
        if "concurrent" in parts:
            result["concurrent"] = concurrent(work, scan, labels, args.users, args.user_clicks, solo)
        if "cancel" in parts:
            result["cancel"] = cancel(work, scan, labels, args.cancel_clicks)
    result["load_average_at_end"] = os.getloadavg()
    args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
