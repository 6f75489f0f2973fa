"""`coralbay serve`: the remote engine, for a team that shares one GPU machine.

An HTTP API (Starlette on uvicorn, the optional `serve` extra) in front of the engine's own
processes: each interactive session is a `coralbay interact` worker speaking its JSON-lines
protocol, each job a `coralbay segment`/`classify` run, so a crash, cancel or out-of-memory hits
one user only. The pieces, in the order a request meets them:

- `limits`      the limits of one server (sizes, caps, rates) in one dataclass
- `users`       per-user tokens: only their hash on disk (0600), constant-time check, revoke live
- `tls`         `init-tls`: a private CA and a server certificate
- `audit`       the audit log (JSON lines, 0600), never a token
- `volume_format` the upload format: JSON geometry header + raw voxels (optionally zlib)
- `images`      uploads by content hash, resumable, per user
- `journal`     a session's append-only, fsync'd journal (replayed after a crash)
- `worker`      one `coralbay interact` process and its request/answer bookkeeping
- `sessions`    interactive sessions: ownership, caps, replay, changed-crop answers
- `jobs`        segment/classify runs of an uploaded image
- `app`         the routes under /v1 and the security middleware
- `server`      starting uvicorn: the loopback/TLS rules

Docs: docs/serve-admin.md (administrators), docs/serve-users.md (users).
"""
