"""`eval-interactive --sequence --teach-between-scans`: the simulated user's Teach-model loop.

Why: a user who accepts a scan's structures, presses Teach model, and starts the next scan from
the taught model's proposal only has to correct it; whether that loop saves clicks scan after
scan is issue 24's claim, and it can only be measured by running the loop itself. So after each
scan the session's accepted structures (the simulated user's final answers, written to the
examples folder by `Session.accept`, never the references: a real user teaches with what they
accepted) are taught through the engine's teach API: the first teach from the session's model,
each later one incrementally from the model taught before (`--from`), as the user's loop runs.
The next scan's structures start from the newest taught model's proposal (`ModelProposals`, as
`--propose-with`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from coralbay.interactive.engine import load_bundle
from coralbay.interactive.proposals import ModelProposals
from coralbay.io.examples import read_examples


@dataclass
class TaughtModel:
    name: str
    folder: Path
    scans: int          # example scans it was taught on
    seconds: float      # the teach's wall-clock seconds


class TeachBetweenScans:
    """Teaches from the examples folder after a scan; proposes with the newest taught model."""

    def __init__(self, base: str, work: Path, steps: int | None = None, minutes: float | None = None,
                 device: str = "auto", seed: int = 0) -> None:
        self.base, self.work, self.steps, self.minutes = base, Path(work), steps, minutes
        self.device, self.seed = device, seed
        self.examples = self.work / "examples"   # the session's examples_dir
        self.latest: TaughtModel | None = None

    def teach(self, after_scan: int) -> dict:
        """Teach from every accepted structure so far (the first teach from the base model, each
        later one from the model taught before); the teach's record."""
        from coralbay.training.teach import TeachRequest, teach_bundle

        scans = [scan for scan in read_examples(self.examples) if scan.structures] if self.examples.is_dir() else []
        if not scans:   # nothing accepted yet (every answer empty): the previous model stays
            return {"after_scan": after_scan, "taught": None, "reason": "no accepted structure yet"}
        name = f"taught-after-scan-{after_scan}"
        request = TeachRequest(examples=self.examples, base=self.base, name=name, output=self.work / name,
                               steps=self.steps, minutes=self.minutes,
                               start_from=str(self.latest.folder) if self.latest else None,
                               seed=self.seed, device=self.device, add_to_catalog=False)
        started = time.perf_counter()
        result = teach_bundle(request)
        seconds = round(time.perf_counter() - started, 1)
        training = result.metrics["training"]
        record = {"after_scan": after_scan, "taught": name, "taught_on_scans": len(scans),
                  "from": self.latest.name if self.latest else self.base, "seconds": seconds,
                  **{key: training.get(key) for key in ("steps", "chosen_step", "stopped", "holdout_dice", "warnings")}}
        self.latest = TaughtModel(name, result.bundle, len(scans), seconds)
        return record

    def proposals(self, device: str) -> ModelProposals | None:
        """The newest taught model's proposals for the next scan (None before the first teach)."""
        return None if self.latest is None else ModelProposals(load_bundle(str(self.latest.folder)), device)

    def scan_record(self) -> dict:
        """What the scan about to be measured starts from: which taught model, taught on how many scans, in how long."""
        latest = self.latest
        return {"proposed_by": latest.name if latest else None, "taught_on_scans": latest.scans if latest else 0,
                "teach_seconds": latest.seconds if latest else None}
