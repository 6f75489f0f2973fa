"""What the `coralbay serve` tests share: a real server in a subprocess on 127.0.0.1, its users,
and scans in the upload format. Servers are stopped by the fixture that started them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from conftest import cli_env, run_cli, write_interactive_phantom

START_TIMEOUT_S = 120


class RunningServer:
    def __init__(self, process: subprocess.Popen, url: str, state_dir: Path) -> None:
        self.process, self.url, self.state_dir = process, url, state_dir

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def start_server(state_dir: Path, models: list[Path], *extra: str) -> RunningServer:
    """`coralbay serve --port 0 ...`; returns once it prints where it listens."""
    argv = [sys.executable, "-m", "coralbay", "serve", "--state-dir", str(state_dir), "--port", "0", "--device", "cpu"]
    for model in models:
        argv += ["--model", str(model)]
    stderr_path = state_dir.parent / f"{state_dir.name}-stderr.txt"
    process = subprocess.Popen([*argv, *extra], stdout=subprocess.PIPE, stderr=stderr_path.open("ab"),
                               text=True, env=cli_env(), start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    line = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line or process.poll() is not None:
            break
    if not line.startswith("{"):
        process.kill()
        raise RuntimeError(f"the server did not start: {stderr_path.read_text()[-2000:]}")
    return RunningServer(process, json.loads(line)["url"], state_dir)


@contextmanager
def running_server(state_dir: Path, models: list[Path], *extra: str) -> Iterator[RunningServer]:
    server = start_server(state_dir, models, *extra)
    try:
        yield server
    finally:
        server.stop()


def add_user(state_dir: Path, name: str, *extra: str) -> str:
    result = run_cli("serve", "add-user", name, "--state-dir", state_dir, *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def nrrd_copy(source: Path, target: Path, compress: bool = True) -> Path:
    """The scan as Slicer writes it for the engine (NRRD), which the stdlib client reads."""
    import SimpleITK as sitk

    sitk.WriteImage(sitk.ReadImage(str(source)), str(target), compress)
    return target


def served_phantom(folder: Path, models: list[Path], users: tuple[str, ...]) -> tuple[RunningServer, dict, Path, Path]:
    """A small phantom beside a running server that offers `models` to `users`:
    (server, {user: token}, ct, labels). The caller stops the server."""
    ct, labels = write_interactive_phantom(folder / "phantom")
    state = folder / "state"
    state.mkdir()
    tokens = {name: add_user(state, name) for name in users}
    return start_server(state, models), tokens, ct, labels
