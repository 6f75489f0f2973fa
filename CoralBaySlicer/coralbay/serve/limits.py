"""The limits of one server, and the counters that enforce the rates (standard library only).

Why in one place: an administrator reads and sets them together (`coralbay serve --help`,
docs/serve-admin.md), and every route checks the same numbers.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass


@dataclass(frozen=True)
class ServeLimits:
    max_upload_bytes: int = 2 << 30          # one image upload (the encoded body), checked before reading
    max_voxels: int = 1024 * 1024 * 1024     # one image
    max_decoded_bytes: int = 2 << 30         # one image's voxels once decompressed (any voxel type)
    max_json_bytes: int = 32 << 20           # one JSON request (a scribble crop travels in it)
    sessions_per_user: int = 2
    sessions_total: int = 8
    jobs_per_user: int = 2
    requests_per_second: float = 50.0        # per user, averaged over `rate_window_s`
    rate_window_s: float = 2.0
    auth_failures: int = 10                  # per address within `auth_window_s`, then refused for a while
    auth_window_s: float = 60.0
    auth_backoff_s: float = 30.0
    answer_timeout_s: float = 600.0          # the longest a worker may take for one answer
    long_poll_s: float = 25.0                # the longest an events request waits
    retry_after_s: int = 30                  # said to a client refused for capacity
    session_idle_s: float = 1200.0           # no request for this long: the session's worker is stopped
    session_expire_s: float = 7 * 86400.0    # no request for this long: the session is removed

    @property
    def sweep_every_s(self) -> float:
        """How often idle and expired sessions are looked for (a quarter of the shorter time, 0.2-60 s)."""
        return min(60.0, max(0.2, min(self.session_idle_s, self.session_expire_s) / 4))

    def public(self) -> dict:
        """What `GET /v1/info` tells clients."""
        return {"max_upload_bytes": self.max_upload_bytes, "max_voxels": self.max_voxels,
                "max_json_bytes": self.max_json_bytes, "sessions_per_user": self.sessions_per_user,
                "sessions_total": self.sessions_total, "requests_per_second": self.requests_per_second,
                "session_idle_s": self.session_idle_s, "session_expire_s": self.session_expire_s}


class SlidingCounter:
    """Events per key within the last `window_s` seconds."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._events: dict[str, deque] = defaultdict(deque)

    def add(self, key: str, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        events = self._events[key]
        events.append(now)
        while events and events[0] < now - self.window_s:
            events.popleft()
        return len(events)

    def count(self, key: str, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        events = self._events.get(key)
        while events and events[0] < now - self.window_s:
            events.popleft()
        return len(events or ())


class AuthBackoff:
    """After `limits.auth_failures` bad tokens from one address, that address waits `auth_backoff_s`
    (guessing tokens gets slow; a good token does not lift it, so a guesser cannot reset it)."""

    def __init__(self, limits: ServeLimits) -> None:
        self.limits = limits
        self.failures = SlidingCounter(limits.auth_window_s)
        self.blocked_until: dict[str, float] = {}

    def retry_after(self, address: str) -> float:
        return max(0.0, self.blocked_until.get(address, 0.0) - time.monotonic())

    def failed(self, address: str) -> None:
        if self.failures.add(address) >= self.limits.auth_failures:
            self.blocked_until[address] = time.monotonic() + self.limits.auth_backoff_s


class RateLimit:
    """Requests per user: at most `requests_per_second` x `rate_window_s` within the window."""

    def __init__(self, limits: ServeLimits) -> None:
        self.limits = limits
        self.counter = SlidingCounter(limits.rate_window_s)

    def allow(self, user: str) -> bool:
        return self.counter.add(user) <= self.limits.requests_per_second * self.limits.rate_window_s
