"""Starting the server: the loopback/TLS rules, the models it offers, uvicorn.

Why refuse a non-loopback address without TLS: tokens and scans would cross the network in
clear text; there is no option to allow it. Why `--port 0` prints the address: tests and
scripts start a server on a free port and read where it listens from its first line.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path

from coralbay.errors import UsageError

LOOPBACK_NAMES = ("localhost",)


@dataclass
class ServeConfig:
    models: list[str]
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 8443
    tls_cert: Path | None = None
    tls_key: Path | None = None
    require_tls: bool = False
    device: str = "auto"
    limits: dict = field(default_factory=dict)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_security(config: ServeConfig) -> None:
    """One sentence, before anything starts, for a set-up that would expose tokens or scans."""
    if (config.tls_cert is None) != (config.tls_key is None):
        raise UsageError("Give both --tls-cert and --tls-key, or neither.")
    has_tls = config.tls_cert is not None
    if not has_tls and not is_loopback(config.host):
        raise UsageError(f"Refusing to listen on {config.host} without TLS: give --tls-cert and --tls-key "
                         "(make them with 'coralbay serve init-tls --host NAME').")
    if config.require_tls and not has_tls:
        raise UsageError("--require-tls needs --tls-cert and --tls-key.")
    for path in (config.tls_cert, config.tls_key):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"The TLS file {path} does not exist.")
    if has_tls:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(config.tls_cert), str(config.tls_key))
        except (ssl.SSLError, OSError) as exc:
            raise UsageError(f"The TLS certificate or key cannot be used ({exc.__class__.__name__}).") from None


def served_models(names: list[str]):
    """The models the server offers, by their manifest name (clients choose only among these)."""
    from coralbay.bundle.catalog import resolve_model
    from coralbay.bundle.manifest import read_manifest
    from coralbay.serve.sessions import ServedModel

    models = {}
    for name in names:
        manifest = read_manifest(resolve_model(name))
        models[manifest.name] = ServedModel(manifest.name, manifest.folder, str(manifest.task), manifest.summary())
    if not models:
        raise UsageError("Give at least one --model for the server to offer.")
    return models


def build_state(config: ServeConfig):
    from coralbay.serve.app import ServerState
    from coralbay.serve.audit import AuditLog
    from coralbay.serve.images import ImageStore
    from coralbay.serve.jobs import JobManager
    from coralbay.serve.limits import ServeLimits
    from coralbay.serve.sessions import EngineSettings, SessionManager
    from coralbay.serve.users import UserStore

    state_dir = Path(config.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    limits = ServeLimits(**config.limits)
    models = served_models(config.models)
    images = ImageStore(state_dir / "images", limits.max_voxels, limits.max_decoded_bytes)
    settings = EngineSettings(config.device, state_dir, limits)
    return ServerState(users=UserStore(state_dir / "users.json"), audit=AuditLog(state_dir / "audit.log"),
                       images=images, sessions=SessionManager(state_dir / "sessions", models, images, settings),
                       jobs=JobManager(state_dir / "jobs", models, images, settings), models=models,
                       limits=limits, require_tls=config.require_tls)


def run_server(config: ServeConfig) -> int:
    import uvicorn

    from coralbay.serve.app import build_app

    check_security(config)
    state = build_state(config)
    if not state.users.users():
        print("coralbay serve: no users yet; add one with 'coralbay serve add-user NAME'.", file=sys.stderr)
    uv = uvicorn.Config(build_app(state), host=config.host, port=config.port, log_level="warning",
                        access_log=False, ssl_certfile=str(config.tls_cert) if config.tls_cert else None,
                        ssl_keyfile=str(config.tls_key) if config.tls_key else None, timeout_keep_alive=30,
                        limit_concurrency=256, timeout_graceful_shutdown=5, server_header=False, proxy_headers=False, lifespan="on")
    server = uvicorn.Server(uv)

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            host, port = server.servers[0].sockets[0].getsockname()[:2]
            scheme = "https" if config.tls_cert else "http"
            print(json.dumps({"event": "result", "message": "listening", "url": f"{scheme}://{host}:{port}"}),
                  flush=True)
        while not server.should_exit and not task.done():   # a stop begins: end the long polls at once
            await asyncio.sleep(0.1)
        state.sessions.closing.set()
        await task

    asyncio.run(main())
    state.audit.close()
    return 0 if server.started else 1
