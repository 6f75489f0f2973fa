"""The embedded default: a pool of worker processes on this machine, with no server to start.

Why not concurrent.futures: when one of its workers dies (SIGKILL, the kernel's OOM killer) the
whole ProcessPoolExecutor breaks and every pending case with it. Here each worker has its own
pipe and the parent watches its process sentinel: a dead worker's case goes back to the queue
(up to `max_attempts` tries in all, each on a fresh process) and a new worker takes its place.
Workers keep their models loaded between cases (see case.py) and exit when the parent's pipe
closes, so a killed parent leaves no worker behind once its current case is written.

Look-ahead (off unless `CORALBAY_BATCH_LOOKAHEAD=1`): while there are more cases than workers,
the parent gives each busy worker its next case in advance, and the worker prepares it
(`prepare_case`: read, hash, resample; CPU) on a thread while the network runs on the current
one, the local counterpart of the Dask path's CPU and GPU tasks. A case given in advance counts
as tried only when it starts; if its worker dies it goes back to the queue untouched. Why off by
default: on the 2-core development machine (phantoms, whose preparation is 0.2 s of a 4-14 s
case, and other jobs holding the cores) it measured 0.76-1.02x of the throughput without it
(docs/batch.md); it can pay where preparing takes seconds (large DICOM series) and cores are free.

Threads: each worker runs torch on cores / workers threads (at least 1), so N workers do not
oversubscribe the cores; an explicit OMP_NUM_THREADS in the environment wins.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Callable

import torch

from coralbay.batch.case import CaseJob, PreparedCase, prepare_case, process_case
from coralbay.batch.cohort import Case
from coralbay.errors import CoralBayError

OnRecord = Callable[[dict], None]


LOOKAHEAD_ENV = "CORALBAY_BATCH_LOOKAHEAD"


def lookahead_enabled() -> bool:
    return os.environ.get(LOOKAHEAD_ENV, "0") == "1"


def threads_per_worker(workers: int) -> int:
    """torch threads for each of `workers` processes: the usable cores shared out, at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def _worker_main(conn: Connection, threads: int) -> None:
    """A worker's loop: receive (case, job, next case or None), send back the case's record after
    starting the next case's preparation on a thread; stop at None or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(threads)
    preparer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coralbay-prepare")
    ahead: dict[str, Future[PreparedCase]] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        case, job, next_case = message
        waiting = ahead.pop(case.id, None)
        prepared = waiting.result() if waiting is not None else prepare_case(case, job)
        if next_case is not None:
            ahead[next_case.id] = preparer.submit(prepare_case, next_case, job)
        prepared.prepared_ahead = waiting is not None
        conn.send(process_case(case, job, prepared))


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    case: Case | None = None
    next_case: Case | None = None  # given in advance: being prepared while `case` runs


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
    threads = threads_per_worker(workers)
    lookahead = lookahead_enabled()

    def start_worker() -> None:
        parent_end, child_end = context.Pipe()
        process = context.Process(target=_worker_main, args=(child_end, threads), daemon=True,
                                  name="coralbay-batch-worker")
        process.start()
        child_end.close()
        pool.append(_Worker(process, parent_end))

    try:
        for _ in range(min(workers, len(cases))):
            start_worker()
        while queue or any(w.case or w.next_case for w in pool):
            for worker in pool:
                if worker.case is None and (worker.next_case or queue):
                    worker.case, worker.next_case = worker.next_case or queue.popleft(), None
                    attempts[worker.case.id] = attempts.get(worker.case.id, 0) + 1
                    # Only while there is more than a case per worker left, so the last cases
                    # are not held by a busy worker while another is idle.
                    if lookahead and len(queue) >= len(pool):
                        worker.next_case = queue.popleft()
                    worker.conn.send((worker.case, job, worker.next_case))
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
                    if worker.next_case is not None:
                        queue.appendleft(worker.next_case)  # not started: back untouched
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
