"""`coralbay serve` security by default, on a real server on 127.0.0.1 (no engine worker runs here).

Tokens: missing, wrong, expired and revoked tokens get 401 on every route of the app's route
table but health; revoke takes effect without a restart; tokens are in no log. Addresses: a
non-loopback host without a certificate refuses to start with one sentence. TLS: the client
verifies the CA and host name, or a pinned fingerprint; a wrong CA or host name is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import stat
import http.client
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the serve extra (starlette, uvicorn, cryptography) is not installed")
pytest.importorskip("trustme", reason="trustme (test extra) makes the throwaway CA")

from conftest import run_cli  # noqa: E402
from serve_support import add_user, running_server  # noqa: E402

from CoralBaySlicerLib.remote_client import RemoteEngine, RemoteError  # noqa: E402


@pytest.fixture(scope="module")
def state(tmp_path_factory, tiny_seg_bundle):
    folder = tmp_path_factory.mktemp("serve-security") / "state"
    folder.mkdir()
    tokens = {name: add_user(folder, name) for name in ("alice", "revoked", "expired")}
    assert run_cli("serve", "revoke", "revoked", "--state-dir", folder).returncode == 0
    users = json.loads((folder / "users.json").read_text())
    users["users"]["expired"]["expires"] = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)).isoformat()
    (folder / "users.json").write_text(json.dumps(users))
    return folder, tokens


@pytest.fixture(scope="module")
def server(state, tiny_seg_bundle):
    with running_server(state[0], [tiny_seg_bundle], "--auth-failures", "1000") as running:
        yield running


def _request(server, method: str, path: str, token: str | None, body: bytes | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Content-Length": str(len(body or b""))}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body, headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


def _route_table(state_dir: Path, bundle: Path) -> list[tuple[str, str]]:
    """(method, concrete path) of every route the app serves, filled with made-up ids."""
    from coralbay.serve.app import build_app
    from coralbay.serve.server import ServeConfig, build_state

    app = build_app(build_state(ServeConfig(models=[str(bundle)], state_dir=state_dir.parent / "table-state")))
    found = []
    for route in app.routes:
        path = re.sub(r"\{[^}]+\}", "0" * 64, route.path)
        found += [(method, path) for method in sorted(route.methods or ())]
    return found


def test_every_route_but_health_needs_a_valid_token(server, state, tiny_seg_bundle):
    routes = _route_table(state[0], tiny_seg_bundle)
    assert len(routes) >= 15 and ("GET", "/v1/health") in routes
    tokens = state[1]
    bad = {"missing": None, "wrong": "cbt_" + "x" * 43, "not bearer": None, "expired": tokens["expired"],
           "revoked": tokens["revoked"]}
    for method, path in routes:
        if path == "/v1/health":
            continue
        for why, token in bad.items():
            assert _request(server, method, path, token) == 401, (method, path, why)
    assert _request(server, "GET", "/v1/health", None) == 200
    assert _request(server, "GET", "/v1/info", tokens["alice"]) == 200


def test_health_says_only_ok(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/v1/health")
    assert json.loads(conn.getresponse().read()) == {"status": "ok"}


def test_revoke_takes_effect_without_restart_and_files_are_private(server, state):
    folder, _ = state
    token = add_user(folder, "carol", "--expires", "90d")
    assert _request(server, "GET", "/v1/info", token) == 200
    assert run_cli("serve", "revoke", "carol", "--state-dir", folder).returncode == 0
    assert _request(server, "GET", "/v1/info", token) == 401
    for name in ("users.json", "audit.log"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    assert token not in (folder / "users.json").read_text()


def test_tokens_appear_in_no_log(server, state):
    folder, tokens = state
    engine = RemoteEngine(server.url, tokens["alice"])
    assert "alice" in engine.test_connection()
    with pytest.raises(RemoteError):
        RemoteEngine(server.url, tokens["revoked"]).test_connection()
    logs = [folder / "audit.log", folder.parent / f"{folder.name}-stderr.txt"]
    text = "".join(p.read_text() for p in logs if p.is_file())
    assert '"user": "alice"' in text
    for token in tokens.values():
        assert token not in text and token[4:] not in text


def test_repeated_bad_tokens_back_off(tmp_path, tiny_seg_bundle):
    folder = tmp_path / "state"
    folder.mkdir()
    token = add_user(folder, "alice")
    with running_server(folder, [tiny_seg_bundle], "--auth-failures", "3") as server:
        statuses = [_request(server, "GET", "/v1/info", "cbt_guess") for _ in range(4)]
        assert statuses[:3] == [401, 401, 401] and statuses[3] == 429
        assert _request(server, "GET", "/v1/health", None) == 200   # health still answers
        assert _request(server, "GET", "/v1/info", token) == 429     # a guesser cannot reset it with a good token


def test_non_loopback_without_certificate_refuses_with_one_sentence(tmp_path, tiny_seg_bundle):
    result = run_cli("serve", "--model", tiny_seg_bundle, "--state-dir", tmp_path / "s", "--host", "0.0.0.0",
                     "--port", "0", timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "without TLS" in lines[0], result.stderr
    result = run_cli("serve", "--model", tiny_seg_bundle, "--state-dir", tmp_path / "s", "--require-tls",
                     "--port", "0", timeout=120)
    assert result.returncode == 2 and "--require-tls" in result.stderr


def test_tls_verifies_ca_host_name_and_pin(tmp_path, tiny_seg_bundle):
    import trustme

    folder = tmp_path / "state"
    folder.mkdir()
    token = add_user(folder, "alice")
    made = run_cli("serve", "init-tls", "--host", "127.0.0.1", "--host", "localhost", "--output", tmp_path / "tls")
    assert made.returncode == 0, made.stderr
    fingerprint = re.search(r"fingerprint ([0-9a-f]{64})", made.stdout).group(1)
    assert stat.S_IMODE((tmp_path / "tls" / "server.key").stat().st_mode) == 0o600
    wrong_host = run_cli("serve", "init-tls", "--host", "other.example", "--output", tmp_path / "tls-other")
    assert wrong_host.returncode == 0
    stranger = trustme.CA()
    stranger.cert_pem.write_to_path(str(tmp_path / "stranger-ca.pem"))
    tls = tmp_path / "tls"
    with running_server(folder, [tiny_seg_bundle], "--tls-cert", str(tls / "server.pem"),
                        "--tls-key", str(tls / "server.key"), "--require-tls") as server:
        assert server.url.startswith("https://")
        assert "alice" in RemoteEngine(server.url, token, ca_file=str(tls / "ca.pem")).test_connection()
        assert "alice" in RemoteEngine(server.url, token, fingerprint=fingerprint).test_connection()
        with pytest.raises(RemoteError, match="certificate"):
            RemoteEngine(server.url, token, ca_file=str(tmp_path / "stranger-ca.pem")).test_connection()
        with pytest.raises(RemoteError, match="certificate"):
            RemoteEngine(server.url, token, fingerprint="0" * 64).test_connection()
        with pytest.raises(RemoteError, match="certificate"):  # the right CA, the wrong name: the other CA's server
            RemoteEngine(server.url, token, ca_file=str(tmp_path / "tls-other" / "ca.pem")).test_connection()
        plain = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)  # --require-tls: no plain http
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            plain.request("GET", "/v1/health")
            plain.getresponse().read()
    # the host name check itself: a certificate for another name, served here, is refused with the right CA
    other = tmp_path / "tls-other"
    with running_server(folder, [tiny_seg_bundle], "--tls-cert", str(other / "server.pem"),
                        "--tls-key", str(other / "server.key")) as server:
        with pytest.raises(RemoteError, match="certificate"):
            RemoteEngine(server.url, token, ca_file=str(other / "ca.pem")).test_connection()


def test_plain_http_to_another_machine_is_refused_by_the_client():
    with pytest.raises(RemoteError, match="https"):
        RemoteEngine("http://192.0.2.1:8443", "cbt_x")
