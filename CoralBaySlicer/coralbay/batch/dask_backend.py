"""Running cases on a Dask `distributed` cluster: an existing scheduler, or a LocalCluster.

- `--cluster tcp://HOST:PORT` / `tls://HOST:PORT` connects a Client to a scheduler that HPC or
  cloud tooling started (dask-jobqueue, dask-kubernetes, `dask scheduler`); with tls:// and the
  --tls-* files, every connection is encrypted and both sides authenticated (Dask's Security).
- `--cluster local:N` starts a LocalCluster of N worker processes that listens on 127.0.0.1
  only, with no dashboard, so nothing on this machine is reachable from the network.

Each case is two tasks: preparing it (`prepare_case`: reading the scan, hashing it, cropping and
resampling it onto the model grid; a CPU task, no resources) and the network with the restore and
the writing of its folder (`process_case`), which asks for one `GPU` when the cluster's workers
declare that resource (`dask worker --resources GPU=1`), so GPU workers never wait on disk or on
resampling. Tasks get paths, never image data, from the client: workers read from shared storage,
and the prepared model-grid volume (not the scan) goes from the CPU task's worker to the GPU
task's worker directly, as Dask moves task results, never through the scheduler. Only a bounded number of cases
is in flight at once, so the scheduler's memory stays flat however long the cohort is. A task
whose worker dies is rescheduled by Dask up to `allowed-failures` times on other workers, then
raises KilledWorker, which becomes that case's failure.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from typing import Callable, Iterator

from coralbay.batch.case import CaseJob, prepare_case, process_case
from coralbay.batch.cohort import Case
from coralbay.errors import InputError, UsageError, import_optional

OnRecord = Callable[[dict], None]
log = logging.getLogger("coralbay.batch")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
LOCAL_PATTERN = re.compile(r"^local:(\d+)$")
REMOTE_PATTERN = re.compile(r"^(tcp|tls)://[^\s/]+:\d+/?$")


def check_cluster_address(address: str) -> None:
    """Usage error for an address that is neither local:N nor tcp:// / tls://HOST:PORT, or when
    Dask is not installed."""
    local = LOCAL_PATTERN.match(address)
    if (local and int(local.group(1)) >= 1) or (not local and REMOTE_PATTERN.match(address)):
        import_optional("distributed", "coralbay batch --cluster")  # before any work starts
        return
    raise UsageError(f"The cluster {address!r} is not local:N (N >= 1) or a scheduler address "
                     "tcp://HOST:PORT or tls://HOST:PORT.")


def _security(tls_ca: str | None, tls_cert: str | None, tls_key: str | None):
    from distributed.security import Security

    if not (tls_ca or tls_cert or tls_key):
        return None
    if not (tls_ca and tls_cert):
        raise UsageError("TLS needs at least --tls-ca-file and --tls-cert (and --tls-key unless the "
                         "certificate file holds the key).")
    return Security(tls_ca_file=tls_ca, tls_client_cert=tls_cert, tls_client_key=tls_key,
                    require_encryption=True)


@contextlib.contextmanager
def open_client(address: str, max_attempts: int, tls_ca: str | None = None, tls_cert: str | None = None,
                tls_key: str | None = None) -> Iterator["object"]:
    """A Client on `address` (a scheduler, or local:N started here on loopback); closed after use."""
    check_cluster_address(address)
    import dask
    from distributed import Client, LocalCluster

    local = LOCAL_PATTERN.match(address)
    # A task whose worker dies is tried max_attempts times in all (applies to clusters started here;
    # a remote scheduler keeps its own setting).
    with dask.config.set({"distributed.scheduler.allowed-failures": max_attempts - 1}):
        if local:
            cluster = LocalCluster(n_workers=int(local.group(1)), threads_per_worker=1, processes=True,
                                   host="127.0.0.1", scheduler_port=0, dashboard_address=None,
                                   resources=_local_gpu_resources(), silence_logs=logging.ERROR)
            try:
                with Client(cluster) as client:
                    yield client
            finally:
                cluster.close()
            return
        security = _security(tls_ca, tls_cert, tls_key)
        if address.startswith("tls://") and security is None:
            raise UsageError("A tls:// scheduler needs --tls-ca-file and --tls-cert (Dask TLS security).")
        host = address.split("://", 1)[1].rsplit(":", 1)[0]
        if address.startswith("tcp://") and host not in LOOPBACK_HOSTS:
            log.warning(f"The connection to {address} is neither encrypted nor authenticated, and its "
                        "scheduler runs any code sent to it; use tls:// (docs/batch.md) unless the network "
                        "is private to you.")
        timeout = dask.config.get("distributed.comm.timeouts.connect")  # Dask's own setting, default 30 s
        try:
            client = Client(address, timeout=timeout, security=security)
        except (OSError, TimeoutError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(f"The Dask scheduler at {address} cannot be reached within "
                             f"{timeout} ({reason[:200]}).") from None
        with client:
            yield client


def _local_gpu_resources() -> dict[str, float] | None:
    """LocalCluster workers declare one GPU each only when this machine has CUDA."""
    import torch

    return {"GPU": 1} if torch.cuda.is_available() else None


def _gpu_resources(client) -> dict[str, float] | None:
    """Ask network tasks for a GPU only when some worker offers one (else they would never run)."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    has_gpu = any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers.values())
    return {"GPU": 1} if has_gpu else None


def run_dask(client, cases: list[Case], job: CaseJob, on_record: OnRecord, in_flight: int | None = None) -> None:
    """Run `cases` on the cluster; `on_record` gets each case's record as it finishes."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    gpu = _gpu_resources(client)
    workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))
    in_flight = in_flight or 2 * workers + 2
    token = uuid.uuid4().hex[:8]  # distinct keys per run: no stale result of an earlier run is reused
    pending = list(reversed(cases))
    by_future: dict = {}

    def submit_next(stream) -> None:
        case = pending.pop()
        prepared = client.submit(prepare_case, case, job, key=f"coralbay-prepare-{case.id}-{token}", pure=False)
        future = client.submit(process_case, case, job, prepared, key=f"coralbay-case-{case.id}-{token}",
                               resources=gpu, pure=False)
        by_future[future] = (case, prepared)
        stream.add(future)

    stream = as_completed()
    for _ in range(min(in_flight, len(pending))):
        submit_next(stream)
    for future in stream:
        case, prepared = by_future.pop(future)
        try:
            record = future.result()
        except KilledWorker:
            record = {"id": case.id, "status": "failed",
                      "error": "The worker running this case died every time it was tried (out of memory "
                               "or killed from outside); the case was given up."}
        except Exception as exc:  # noqa: BLE001 - one case's failure, in one sentence
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            record = {"id": case.id, "status": "failed", "error": f"The cluster could not run this case "
                                                                  f"({type(exc).__name__}: {detail[:200]})."}
        future.release()
        prepared.release()
        on_record(record)
        if pending:
            submit_next(stream)
