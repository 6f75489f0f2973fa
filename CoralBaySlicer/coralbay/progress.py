"""Progress reporting: a terminal progress bar, or JSON lines that the Slicer module reads.

The JSON-lines protocol (one object per line on stdout, standard library only so Slicer can parse
it before PyTorch is installed):

    {"event": "progress", "stage": "inference", "fraction": 0.42, "message": "window 42/100"}
    {"event": "log", "level": "warning", "message": "Intensities do not look like CT ..."}
    {"event": "result", "outputs": {"labels": "/path/labels.nii.gz"}, ...}
    {"event": "error", "message": "One sentence saying what went wrong.", "exit_code": 1}

`fraction` is the overall fraction in [0, 1] of the whole command; `stage` names the step.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable, Iterable, TextIO

EVENT_TYPES = ("progress", "log", "result", "error")


def encode_event(event: str, **fields: Any) -> str:
    """One protocol line (without the newline)."""
    if event not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event!r}")
    return json.dumps({"event": event, **fields}, sort_keys=True, default=str)


def decode_event(line: str) -> dict | None:
    """Parse one protocol line; None for lines that are not protocol events (e.g. library noise)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or obj.get("event") not in EVENT_TYPES:
        return None
    return obj


class Reporter:
    """Reports progress of a command made of weighted stages.

    mode "jsonl" writes protocol lines to `stream` (stdout by default); mode "bar" draws a
    one-line bar on stderr; mode "quiet" reports nothing but results and errors.
    """

    def __init__(self, mode: str = "bar", stream: TextIO | None = None,
                 stages: dict[str, float] | None = None) -> None:
        if mode not in ("bar", "jsonl", "quiet"):
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode = mode
        self.stream = stream if stream is not None else (sys.stdout if mode == "jsonl" else sys.stderr)
        weights = stages or {}
        total = sum(weights.values()) or 1.0
        self._offsets: dict[str, tuple[float, float]] = {}
        start = 0.0
        for name, weight in weights.items():
            self._offsets[name] = (start / total, weight / total)
            start += weight
        self._last_draw = 0.0
        self._bar_open = False

    def overall(self, stage: str, fraction: float) -> float:
        start, width = self._offsets.get(stage, (0.0, 0.0))
        return min(1.0, max(0.0, start + width * min(1.0, max(0.0, fraction))))

    def progress(self, stage: str, fraction: float, message: str = "") -> None:
        overall = self.overall(stage, fraction)
        if self.mode == "jsonl":
            self._write(encode_event("progress", stage=stage, fraction=round(overall, 4), message=message))
        elif self.mode == "bar":
            now = time.monotonic()
            if now - self._last_draw < 0.1 and fraction < 1.0:
                return
            self._last_draw = now
            width = 30
            filled = int(round(overall * width))
            text = f"\r[{'#' * filled}{'.' * (width - filled)}] {overall * 100:5.1f}% {stage}: {message}"
            self.stream.write(text[:120].ljust(120))
            self.stream.flush()
            self._bar_open = True

    def log(self, message: str, level: str = "info") -> None:
        if self.mode == "jsonl":
            self._write(encode_event("log", level=level, message=message))
        elif self.mode == "bar" or level in ("warning", "error"):
            self._end_bar()
            print(f"{level}: {message}" if level != "info" else message, file=sys.stderr)

    def result(self, **fields: Any) -> None:
        self._end_bar()
        if self.mode == "jsonl":
            self._write(encode_event("result", **fields))

    def error(self, message: str, exit_code: int = 1) -> None:
        self._end_bar()
        if self.mode == "jsonl":
            self._write(encode_event("error", message=message, exit_code=exit_code))

    def stage_callback(self, stage: str) -> Callable[[float, str], None]:
        """A `callback(fraction, message)` bound to one stage, for long loops deep in the engine."""
        return lambda fraction, message="": self.progress(stage, fraction, message)

    def _end_bar(self) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self.stream.flush()
            self._bar_open = False

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()


def read_events(lines: Iterable[str]) -> list[dict]:
    """All protocol events among `lines` (helper for tests and for the Slicer log)."""
    return [e for e in (decode_event(line) for line in lines) if e is not None]
