"""A session's journal: every request before it is forwarded, every answer after, fsync'd.

Why: the journal, not the worker's memory, is the session. After a worker or the whole server is
killed, replaying the journal's requests into a fresh worker rebuilds the same state (the engine
answers the same prompts with the same masks), and a request repeated with a sequence number
already answered gets the stored answer instead of being applied twice. A line cut short by a
kill is the last one and is ignored (its request had not been answered, so it is asked again).

Why one fsync per request, on the answer: a request's line is written (the kernel keeps it
through a server kill) and the answer's fsync makes both durable before the client sees the
answer. If the machine itself stops before that fsync, the client never had the answer and
sends the same number again; a request line without its answer is replayed, then answered
from the journal. Half the fsyncs of writing each line durably (each costs milliseconds per click).
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

    def _append(self, record: dict, durable: bool) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8"))
            if durable:
                os.fdatasync(fd) if hasattr(os, "fdatasync") else os.fsync(fd)
        finally:
            os.close(fd)

    def record_request(self, seq: int, request: dict) -> Entry:
        """Written before the worker sees it, made durable with its answer (see the docstring)."""
        self._append({"seq": seq, "request": request}, durable=False)
        self.entries[seq] = Entry(seq, request)
        return self.entries[seq]

    def record_answer(self, seq: int, answer: dict, status: int) -> None:
        """Durable (fsync'd) before it returns: the answer may be given to the client after this."""
        self._append({"seq": seq, "answer": answer, "status": status}, durable=True)
        self.entries[seq].answer, self.entries[seq].status = answer, status

    def replayable(self) -> list[Entry]:
        """The requests a fresh worker must see again, in order (those not applied are left out)."""
        return [self.entries[s] for s in sorted(self.entries) if self.entries[s].applied]
