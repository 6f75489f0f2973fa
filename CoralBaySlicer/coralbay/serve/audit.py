"""The audit log: one JSON line per request (time, user, address, session, request, status, bytes,
duration), file mode 0600. Why it never holds a token: whoever reads logs must not be able to act
as a user; the Authorization header is never passed to it, and paths never carry a token."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.chmod(self.path, 0o600)
        self._lock = threading.Lock()

    def write(self, **fields) -> None:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}
        line = (json.dumps(record, default=str) + "\n").encode("utf-8")
        with self._lock:
            os.write(self._fd, line)

    def close(self) -> None:
        os.close(self._fd)
