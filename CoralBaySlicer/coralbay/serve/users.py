"""Per-user tokens: printed once, stored only as a hash (file mode 0600), checked in constant time.

Why a plain SHA-256 and no slow password hash: a token is 32 random bytes (256 bits), not a
password a person chose, so it cannot be guessed from its hash; a fast hash keeps every request
cheap. Why the file is re-read when it changes: `coralbay serve revoke` (another process) takes
effect on the next request, without a restart.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from coralbay.atomic import atomic_file
from coralbay.errors import CoralBayError, UsageError

TOKEN_PREFIX = "cbt_"
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
EXPIRY = re.compile(r"^(\d{1,5})([dh])$")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_expiry(text: str | None, now: dt.datetime | None = None) -> str | None:
    """'90d' or '12h' -> an ISO time in UTC; None: never expires."""
    if text is None:
        return None
    match = EXPIRY.match(text.strip())
    if not match:
        raise UsageError(f"--expires must be a number of days or hours such as 90d or 12h, not {text!r}.")
    amount, unit = int(match.group(1)), match.group(2)
    delta = dt.timedelta(days=amount) if unit == "d" else dt.timedelta(hours=amount)
    return ((now or dt.datetime.now(dt.timezone.utc)) + delta).isoformat(timespec="seconds")


@dataclass(frozen=True)
class User:
    name: str
    token_hash: str
    expires: str | None
    revoked: bool

    def valid(self, now: dt.datetime) -> bool:
        return not self.revoked and (self.expires is None or dt.datetime.fromisoformat(self.expires) > now)


class UserStore:
    """The users file (`<state>/users.json`): name -> token hash, expiry, revoked."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, User] = {}

    def _load(self) -> dict[str, User]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._users = None, {}
            return self._users
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self._users = {name: User(name, entry["hash"], entry.get("expires"), bool(entry.get("revoked")))
                               for name, entry in data["users"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise CoralBayError(f"The users file {self.path} is damaged ({type(exc).__name__}); "
                                    "restore it from a backup or add the users again.") from None
            self._stamp = stamp
        return self._users

    def users(self) -> dict[str, User]:
        return dict(self._load())

    def authenticate(self, token: str) -> User | None:
        """The user whose valid token this is; every stored hash is compared (constant time)."""
        digest = token_hash(token)
        now = dt.datetime.now(dt.timezone.utc)
        found = None
        for user in self._load().values():
            if hmac.compare_digest(digest, user.token_hash) and user.valid(now):
                found = user
        return found

    def _save(self, users: dict[str, User]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"users": {u.name: {"hash": u.token_hash, "expires": u.expires, "revoked": u.revoked}
                          for u in users.values()}}
        with atomic_file(self.path) as tmp:
            os.chmod(tmp, 0o600)
            tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")

    def add(self, name: str, expires: str | None = None) -> str:
        """Add (or re-key) a user; returns the token, which is stored nowhere."""
        if not USER_NAME.match(name):
            raise UsageError("A user name is 1-64 letters, digits, dots, dashes or underscores.")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        users = self.users()
        users[name] = User(name, token_hash(token), parse_expiry(expires), False)
        self._save(users)
        return token

    def revoke(self, name: str) -> None:
        users = self.users()
        if name not in users:
            raise UsageError(f"There is no user {name!r}; 'coralbay serve users' lists them.")
        old = users[name]
        users[name] = User(old.name, old.token_hash, old.expires, True)
        self._save(users)
