"""A create request (POST sessions, POST jobs) sent again with the same `Idempotency-Key` gets the
first one's answer instead of a second session or job.

Why: the client repeats a request whose connection dropped (`RemoteEngine.call`). If the server
had already acted on it, a plain repeat starts a second job (GPU time, and one of the user's
running-job slots) or leaves an orphan session. The key is the client's (random, one per logical
request, the same on each retry); the server keeps it in the record it creates on disk, so it
holds across a restart, with the body's fingerprint, so that a key reused for another request is
refused rather than answered with the wrong job. The idea is the IETF draft "The
Idempotency-Key HTTP Header Field"; a request without the header is created as before.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Callable, Iterable, TypeVar

from coralbay.errors import CoralBayError, InputError

Created = TypeVar("Created")

HEADER = "Idempotency-Key"
_KEY = re.compile(r"[A-Za-z0-9._:-]{16,128}")


class KeyReused(CoralBayError):
    """The key came before with a different request (409): answering with that one's result would
    be wrong, and creating anew would break the key's promise."""


@dataclass(frozen=True)
class IdempotencyKey:
    user: str
    key: str
    fingerprint: str   # SHA-256 of the body as canonical JSON

    @classmethod
    def of_request(cls, user: str, header: str | None, body: object) -> IdempotencyKey | None:
        """The request's key, checked; None when the client sent none."""
        if header is None:
            return None
        if not _KEY.fullmatch(header):
            raise InputError(f"The {HEADER} header is 16 to 128 letters, digits or . _ : - (a random id).")
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return cls(user, header, hashlib.sha256(canonical.encode("ascii")).hexdigest())

    def record(self) -> dict:
        """What the created record keeps (its user is the record's own)."""
        return {"idempotency_key": self.key, "request_sha256": self.fingerprint}

    def earlier(self, created: Iterable[Created], record_of: Callable[[Created], tuple[str, dict]],
                what: str) -> Created | None:
        """What this key's first request created (among `created`, whose user and record
        `record_of` gives), or None; KeyReused if the key came with another request."""
        for item in created:
            user, record = record_of(item)
            if user == self.user and record.get("idempotency_key") == self.key:
                if record.get("request_sha256") != self.fingerprint:
                    raise KeyReused(f"This {HEADER} was sent before with another {what}; send a new key "
                                    f"for a new {what}.")
                return item
        return None
