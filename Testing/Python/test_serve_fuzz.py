"""Property-based fuzzing of every `coralbay serve` route with hostile input, on a real server.

Each case must be refused with a 4xx, never a 5xx; the server's memory stays bounded and health
keeps answering. Bodies: random JSON, huge or negative dimensions, truncated uploads,
compression bombs, `../` names, pickles, .pt (zip) files, object .npy arrays. Bounded for CI
(CORALBAY_FUZZ_EXAMPLES raises the count for a longer run before a release).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import pickle
import struct
import urllib.parse
import zlib

import pytest

pytest.importorskip("starlette", reason="the serve extra (starlette, uvicorn, cryptography) is not installed")
psutil = pytest.importorskip("psutil")

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
import numpy as np  # noqa: E402

from serve_support import add_user, running_server  # noqa: E402

EXAMPLES = int(os.environ.get("CORALBAY_FUZZ_EXAMPLES", "60"))
MAGIC = b"CORALBAY-VOLUME\n"
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_seg_bundle):
    state = tmp_path_factory.mktemp("serve-fuzz") / "state"
    state.mkdir()
    token = add_user(state, "alice")
    with running_server(state, [tiny_seg_bundle], "--requests-per-second", "100000") as running:
        running.token = token
        status, body = _call(running, "POST", "/v1/sessions", json.dumps({"model": "tiny-seg"}).encode())
        assert status == 201, body
        running.session = json.loads(body)["session"]
        running.rss = psutil.Process(running.process.pid).memory_info().rss
        yield running
        assert psutil.Process(running.process.pid).memory_info().rss < running.rss + (300 << 20)
        assert _call(running, "GET", "/v1/health")[0] == 200


def _call(server, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    sent = {"Authorization": f"Bearer {server.token}", "Content-Length": str(len(body)), **(headers or {})}
    conn.request(method, path, body=body, headers=sent)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def _refused(status: int, data: bytes, case) -> None:
    assert 400 <= status < 500, (status, data[:300], case)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25)
hostile_names = st.sampled_from(["..", "../etc/passwd", "..%2F..%2Fetc", "%00", "a" * 300, "liver/../../x", "CON",
                                 ".hidden", "~root", "${HOME}", "x\\y"])


def _volume(header: dict, payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(text)) + text + payload


def _hostile_uploads() -> list[bytes]:
    good = {"version": 1, "dtype": "int16", "size": [4, 4, 4], "spacing": [1, 1, 1], "origin": [0, 0, 0],
            "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1], "compression": "zlib"}
    npy = io.BytesIO()
    np.save(npy, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return [
        pickle.dumps({"__reduce__": "os.system"}),
        b"PK\x03\x04" + b"\0" * 100 + b"archive/data.pkl",                         # a torch .pt is a zip
        npy.getvalue(),
        _volume({**good, "size": [65535, 65535, 65535]}, b""),                       # huge dims
        _volume({**good, "size": [-4, 4, 4]}, b""),                                   # negative dims
        _volume({**good, "size": [4, 4, 4]}, zlib.compress(b"\0" * (50 << 20))),      # compression bomb
        _volume({**good, "size": [4, 4, 4], "compression": "none"}, b"\0" * 10),       # truncated voxels
        _volume({**good, "dtype": "object"}, b""),
        _volume({**good, "dtype": "float64", "size": [4096, 4096, 4096]}, b""),
        _volume({**good, "direction": [0] * 9}, zlib.compress(b"\0" * 128)),
        _volume(good, zlib.compress(b"\0" * 128))[:-5],                               # truncated stream
        MAGIC + struct.pack("<I", 10**9),                                             # header length lie
        MAGIC + struct.pack("<I", 5) + b"[1,2]",
    ]


@pytest.mark.parametrize("index", range(len(_hostile_uploads())))
def test_hostile_uploads_are_refused(server, index):
    body = _hostile_uploads()[index]
    digest = hashlib.sha256(body).hexdigest()
    status, data = _call(server, "PUT", f"/v1/images/{digest}", body,
                         {"Upload-Offset": "0", "Upload-Length": str(len(body))})
    _refused(status, data, index)
    assert _call(server, "HEAD", f"/v1/images/{digest}")[0] == 404   # nothing of it is kept


def test_upload_size_is_checked_before_reading(server):
    status, _ = _call(server, "PUT", f"/v1/images/{'a' * 64}", b"x", {"Upload-Length": str(1 << 40)})
    assert status == 413
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.putrequest("POST", f"/v1/sessions/{server.session}/requests")
    conn.putheader("Authorization", f"Bearer {server.token}")
    conn.putheader("Content-Length", str(1 << 40))
    conn.endheaders()
    assert conn.getresponse().status == 413   # refused from the header, the body never read
    conn.close()


@FUZZ
@given(body=json_values, name=hostile_names)
def test_random_json_on_every_json_route(server, body, name):
    data = json.dumps(body).encode()
    sid = server.session
    quoted = urllib.parse.quote(name, safe="")
    for method, path in [("POST", "/v1/sessions"), ("POST", f"/v1/sessions/{sid}/requests"), ("POST", "/v1/jobs"),
                         ("POST", f"/v1/sessions/{quoted}/requests"), ("GET", f"/v1/sessions/{sid}/masks/{quoted}"),
                         ("GET", f"/v1/jobs/{quoted}"), ("PUT", f"/v1/images/{quoted}"), ("GET", f"/v1/sessions/{sid}/labels"),
                         ("GET", f"/v1/sessions/{sid}/events?after={quoted}&wait=0")]:
        if isinstance(body, dict) and body.get("seq") == 1:
            body["seq"] = 2   # a well-formed first request would start a worker; the fuzz is about refusals
        status, reply = _call(server, method, path, data, {"Upload-Length": str(len(data))} if method == "PUT" else None)
        _refused(status, reply, (method, path, body))


@FUZZ
@given(kind=st.sampled_from(["point", "box", "scribble", "segment", "start", "undo", "open", "status"]),
       fields=st.dictionaries(st.sampled_from(["lps", "lower", "upper", "crop", "name", "value", "image", "path",
                                               "positive", "negative_value"]), json_values, max_size=4),
       crop_size=st.lists(st.integers(-5, 2**31), min_size=3, max_size=3))
def test_malformed_session_requests(server, kind, fields, crop_size):
    if "crop" in fields:
        fields["crop"] = {"offset": [0, 0, 0], "size": crop_size,
                          "data": zlib.compress(b"\1" * (64 << 20)).hex()}   # a bomb, in the wrong encoding too
    body = {"seq": 2, "type": kind, **fields}
    status, reply = _call(server, "POST", f"/v1/sessions/{server.session}/requests", json.dumps(body).encode())
    _refused(status, reply, body)


def test_truncated_and_lying_bodies(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.putrequest("POST", "/v1/sessions")
    conn.putheader("Authorization", f"Bearer {server.token}")
    conn.putheader("Content-Length", "100")
    conn.endheaders()
    conn.send(b'{"model": "tiny')
    conn.sock.shutdown(1)   # the client stops sending: the server answers or closes, never crashes
    try:
        status = conn.getresponse().status
        assert 400 <= status < 500
    except (http.client.HTTPException, ConnectionError):
        pass
    conn.close()
    for raw in (b"[" * 100000, b'{"model": "\xff\xfe"}', b"\x80\x04\x95" + b"\0" * 20):
        _refused(*_call(server, "POST", "/v1/sessions", raw), raw[:20])
    assert _call(server, "GET", "/v1/health")[0] == 200
