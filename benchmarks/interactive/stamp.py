"""Adds to an eval-interactive JSON the commit it measured, the command that made it, the machine
and when: `python stamp.py OUT.json COMMAND...` (run_dev.sh and run_test.sh call it after each run)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def measured_commit() -> tuple[str, str]:
    """HEAD now, and "yes" when tracked files differ from it."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True).stdout.strip()
    return commit, "yes" if dirty else "no"


def main(path: str, command: list[str]) -> None:
    out = Path(path)
    report = json.loads(out.read_text())
    commit, dirty = os.environ.get("MEASURED_COMMIT"), os.environ.get("MEASURED_DIRTY")
    if not commit:  # the runners set both when they start: HEAD may move while a long run goes on
        commit, dirty = measured_commit()
    report["run"] = {"commit": commit, "uncommitted_changes": dirty == "yes", "command": " ".join(command),
                     "finished_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                     "machine": f"{platform.machine()}, {os.cpu_count()} CPUs visible, OMP_NUM_THREADS="
                                f"{os.environ.get('OMP_NUM_THREADS', 'unset')}"}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(out)


if __name__ == "__main__":
    if sys.argv[1:] == ["--now"]:   # the runners, at their start: MEASURED_COMMIT MEASURED_DIRTY
        print(*measured_commit())
    else:
        main(sys.argv[1], sys.argv[2:])
