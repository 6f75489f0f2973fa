"""A session's journal: every request before it is forwarded, every answer after, fsync'd.

Why: the journal, not the worker's memory, is the session. After a worker or the whole server is
killed, replaying the journal's requests into a fresh worker rebuilds the same state (the engine
answers the same prompts with the same masks), and a request repeated with a sequence number
already answered gets the stored answer instead of being applied twice. A line cut short by a
kill is the last one and is ignored (its request had not been answered, so it is asked again).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Entry:
    seq: int
    request: dict
    answer: dict | None = None
    status: int = 200

    @property
    def applied(self) -> bool:
        """False for a cancelled request, or one that stopped the worker: replaying it changes nothing."""
        return self.answer is None or not self.answer.get("not_applied")


@dataclass
class Journal:
    path: Path
    entries: dict[int, Entry] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path) -> "Journal":
        journal = cls(Path(path))
        if journal.path.is_file():
            for line in journal.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    seq = int(record["seq"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill
                if "request" in record:
                    journal.entries[seq] = Entry(seq, record["request"])
                elif seq in journal.entries:
                    journal.entries[seq].answer = record["answer"]
                    journal.entries[seq].status = int(record.get("status", 200))
        return journal

    @property
    def last_seq(self) -> int:
        return max(self.entries, default=0)

    def _append(self, record: dict) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def record_request(self, seq: int, request: dict) -> Entry:
        self._append({"seq": seq, "request": request})
        self.entries[seq] = Entry(seq, request)
        return self.entries[seq]

    def record_answer(self, seq: int, answer: dict, status: int) -> None:
        self._append({"seq": seq, "answer": answer, "status": status})
        self.entries[seq].answer, self.entries[seq].status = answer, status

    def replayable(self) -> list[Entry]:
        """The requests a fresh worker must see again, in order (those not applied are left out)."""
        return [self.entries[s] for s in sorted(self.entries) if self.entries[s].applied]
