"""`coralbay serve`: the remote engine (docs/serve-admin.md), and its users and certificates."""

from __future__ import annotations

import argparse
from pathlib import Path

from coralbay.commands._common import EPILOG, positive_float, positive_int
from coralbay.device import DEVICE_CHOICES

DEFAULT_STATE = "~/.coralbay-serve"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="remote engine over HTTPS for Slicer on other machines (tokens, TLS)",
        description="Serve the engine to users on other machines: interactive sessions and segment/classify "
                    "jobs of uploaded images, each user with a token. Listens on 127.0.0.1 unless --host is "
                    "given; any other address needs --tls-cert and --tls-key. See docs/serve-admin.md.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "-m", action="append", default=[], metavar="M",
                   help="a model to offer (catalog name or bundle folder; repeat for several)")
    p.add_argument("--state-dir", default=DEFAULT_STATE, metavar="DIR",
                   help=f"users, audit log, uploads and session journals (default {DEFAULT_STATE})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8443, help="port (default 8443; 0 picks a free one and prints it)")
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="server certificate (PEM)")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="server private key (PEM)")
    p.add_argument("--require-tls", action="store_true", help="refuse to start without TLS, even on 127.0.0.1")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="compute device of the engine's processes")
    p.add_argument("--sessions-per-user", type=positive_int, default=2, metavar="N")
    p.add_argument("--sessions-total", type=positive_int, default=8, metavar="N")
    p.add_argument("--requests-per-second", type=positive_int, default=50, metavar="N", help="per user")
    p.add_argument("--auth-failures", type=positive_int, default=10, metavar="N",
                   help="bad tokens from one address within a minute before it must wait 30 s (default 10)")
    p.add_argument("--session-idle-minutes", type=positive_float, default=20.0, metavar="MIN",
                   help="stop the engine process of a session without requests for this long; its journal "
                        "stays and the next request rebuilds it (default 20)")
    p.add_argument("--session-expire-hours", type=positive_float, default=168.0, metavar="H",
                   help="remove a session without requests for this long (default 168, a week)")
    p.set_defaults(run=run)
    actions = p.add_subparsers(dest="serve_action", metavar="ACTION")
    add = actions.add_parser("add-user", help="add a user (or give one a new token); prints the token once")
    add.add_argument("name")
    add.add_argument("--expires", metavar="AGE", help="token lifetime such as 90d or 12h (default: no expiry)")
    revoke = actions.add_parser("revoke", help="revoke a user's token (takes effect at once, no restart)")
    revoke.add_argument("name")
    actions.add_parser("users", help="list users, their expiry and whether they are revoked")
    tls = actions.add_parser("init-tls", help="make a private CA and a server certificate")
    tls.add_argument("--host", dest="tls_hosts", action="append", required=True, metavar="NAME",
                     help="the server's host name or address as clients reach it (repeat for several)")
    tls.add_argument("--output", type=Path, required=True, metavar="DIR", help="folder for ca.pem, server.pem and keys")
    for sub in (add, revoke, actions.choices["users"], tls):
        sub.add_argument("--state-dir", default=DEFAULT_STATE, metavar="DIR")


def _require_extra() -> None:
    """The server's packages come with the `serve` extra: one sentence naming it (exit 2) if one is missing."""
    from coralbay.errors import import_optional

    for module in ("starlette", "uvicorn", "cryptography"):
        import_optional(module, "The remote engine (coralbay serve)")


def run(args: argparse.Namespace) -> int:
    from coralbay.serve.users import UserStore

    state = Path(args.state_dir).expanduser()
    action = args.serve_action
    if action == "add-user":
        token = UserStore(state / "users.json").add(args.name, args.expires)
        print(f"Token for {args.name} (shown once; give it to the user, it is not stored):\n{token}")
        return 0
    if action == "revoke":
        UserStore(state / "users.json").revoke(args.name)
        print(f"Revoked {args.name}; their token stops working with the next request.")
        return 0
    if action == "users":
        for user in UserStore(state / "users.json").users().values():
            print(f"{user.name}\texpires {user.expires or 'never'}\t{'revoked' if user.revoked else 'active'}")
        return 0
    _require_extra()
    if action == "init-tls":
        from coralbay.serve.tls import init_tls

        made = init_tls(args.output, args.tls_hosts)
        print(f"Wrote {made['ca.pem']} (give it to clients), {made['server.pem']} and {made['server.key']}; "
              f"server certificate SHA-256 fingerprint {made['fingerprint']}.")
        return 0
    from coralbay.serve.server import ServeConfig, run_server

    config = ServeConfig(models=args.model, state_dir=state, host=args.host, port=args.port, tls_cert=args.tls_cert,
                         tls_key=args.tls_key, require_tls=args.require_tls, device=args.device,
                         limits={"sessions_per_user": args.sessions_per_user, "sessions_total": args.sessions_total,
                                 "requests_per_second": float(args.requests_per_second),
                                 "auth_failures": args.auth_failures,
                                 "session_idle_s": 60.0 * args.session_idle_minutes,
                                 "session_expire_s": 3600.0 * args.session_expire_hours})
    return run_server(config)
