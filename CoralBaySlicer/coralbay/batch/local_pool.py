"""The embedded default: a pool of worker processes on this machine, with no server to start.

Why not concurrent.futures: when one of its workers dies (SIGKILL, the kernel's OOM killer) the
whole ProcessPoolExecutor breaks and every pending case with it. Here each worker has its own
pipe and the parent watches its process sentinel: a dead worker's case goes back to the queue
(up to `max_attempts` tries in all, each on a fresh process) and a new worker takes its place.
Workers keep their models loaded between cases (see case.py) and exit when the parent's pipe
closes, so a killed parent leaves no worker behind once its current case is written.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Callable

from coralbay.batch.case import CaseJob, run_case
from coralbay.batch.cohort import Case
from coralbay.errors import CoralBayError

OnRecord = Callable[[dict], None]


def _worker_main(conn: Connection) -> None:
    """A worker's loop: receive (case, job), send back the case's record; stop at None or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        case, job = message
        conn.send(run_case(case, job))


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    case: Case | None = None


def died_sentence(exitcode: int | None, attempts: int) -> str:
    how = f"was killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exited with code {exitcode}"
    return (f"The worker process {how} while running this case, {attempts} time(s) "
            "(out of memory or killed from outside); the case was given up.")


def run_local(cases: list[Case], job: CaseJob, workers: int, on_record: OnRecord,
              max_attempts: int = 3) -> None:
    """Run `cases` on `workers` processes; `on_record` gets each case's record as it finishes."""
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    queue: deque[Case] = deque(cases)
    attempts: dict[str, int] = {}
    pool: list[_Worker] = []
    idle_deaths = 0

    def start_worker() -> None:
        parent_end, child_end = context.Pipe()
        process = context.Process(target=_worker_main, args=(child_end,), daemon=True,
                                  name="coralbay-batch-worker")
        process.start()
        child_end.close()
        pool.append(_Worker(process, parent_end))

    try:
        for _ in range(min(workers, len(cases))):
            start_worker()
        while queue or any(w.case for w in pool):
            for worker in pool:
                if worker.case is None and queue:
                    worker.case = queue.popleft()
                    attempts[worker.case.id] = attempts.get(worker.case.id, 0) + 1
                    worker.conn.send((worker.case, job))
            ready = wait([w.conn for w in pool] + [w.process.sentinel for w in pool])
            for worker in list(pool):
                if worker.conn in ready:
                    try:
                        record = worker.conn.recv()
                    except (EOFError, OSError):
                        record = None  # died while sending: treated below as a death
                    if record is not None:
                        record["attempts"] = attempts[worker.case.id] if worker.case else 1
                        worker.case = None
                        on_record(record)
                        continue
                if worker.process.sentinel in ready or not worker.process.is_alive():
                    worker.process.join()
                    pool.remove(worker)
                    worker.conn.close()
                    case = worker.case
                    if case is None:
                        idle_deaths += 1
                        if idle_deaths > 3 * workers:
                            raise CoralBayError("The batch worker processes keep dying before they take "
                                                f"a case (last exit code {worker.process.exitcode}).")
                    else:
                        if attempts[case.id] < max_attempts:
                            queue.appendleft(case)
                        else:
                            on_record({"id": case.id, "status": "failed", "attempts": attempts[case.id],
                                       "error": died_sentence(worker.process.exitcode, attempts[case.id])})
                    if queue and len(pool) < workers:
                        start_worker()
    finally:
        for worker in pool:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in pool:
            worker.process.join(timeout=5 if worker.case is None else 0.1)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
