"""`run_batch`: check the cohort and the output folder, skip what is done, run the rest, tabulate.

The parent never writes inside a case folder (workers do, atomically); it writes the folder's
marker first and the tables last, also when interrupted (the cases not reached are `pending`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from coralbay.batch import engine
from coralbay.batch.case import CaseJob
from coralbay.batch.cohort import Case, read_cohort
from coralbay.batch.dask_backend import check_cluster_address, open_client, run_dask
from coralbay.batch.ledger import (MARKER_FORMAT, MARKER_NAME, check_output_folder, is_done, model_hash,
                                   read_case_record, settings_hash)
from coralbay.batch.local_pool import run_local
from coralbay.batch.results import write_results
from coralbay.errors import BundleError

log = logging.getLogger("coralbay.batch")

Progress = Callable[[str, float, str], None]
MAX_ATTEMPTS = 3  # tries of a case whose worker dies (OOM, SIGKILL) before it is marked failed


@dataclass(frozen=True)
class BatchOptions:
    cohort: str
    model: str
    output: str
    compare: bool = False
    classify_model: str | None = None
    workers: int = 1
    cluster: str | None = None
    backbone: str | None = None
    trust_remote_code: bool = False
    device: str = "auto"
    overlap: float | None = None
    window_batch: int | None = None
    tolerance_mm: float = engine.DEFAULT_TOLERANCE_MM
    redo: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


def _model_folder(model: str) -> Path:
    return engine.resolve_model(model)


def make_job(options: BatchOptions) -> CaseJob:
    """The shared job, with the model and settings hashes that decide what a rerun redoes."""
    folder = _model_folder(options.model)
    if not (folder / engine.MANIFEST_NAME).is_file():
        raise BundleError(f"The model folder {folder} has no {engine.MANIFEST_NAME}.")
    models = model_hash(folder, engine.MANIFEST_NAME, options.backbone)
    if options.classify_model:
        classify_folder = _model_folder(options.classify_model)
        if not (classify_folder / engine.MANIFEST_NAME).is_file():
            raise BundleError(f"The model folder {classify_folder} has no {engine.MANIFEST_NAME}.")
        models += ":" + model_hash(classify_folder, engine.MANIFEST_NAME, None)
    # What changes a case's outputs; the device, window batch and worker count do not.
    settings = {"engine": engine.engine_version, "overlap": options.overlap, "compare": options.compare,
                "tolerance_mm": options.tolerance_mm if options.compare else None,
                "classify": bool(options.classify_model)}
    return CaseJob(output_dir=str(Path(options.output).absolute()), model=str(folder.absolute()),
                   backbone=options.backbone, trust_remote_code=options.trust_remote_code, device=options.device,
                   overlap=options.overlap, window_batch=options.window_batch, compare=options.compare,
                   tolerance_mm=options.tolerance_mm,
                   classify_model=str(_model_folder(options.classify_model).absolute()) if options.classify_model else None,
                   model_hash=models, settings_hash=settings_hash(settings))


def run_batch(options: BatchOptions, progress: Progress = lambda s, f, m="": None,
              on_case: Callable[[dict], None] = lambda r: None) -> dict:
    """Run the cohort; returns summary.json's content."""
    started = time.time()
    if options.cluster:
        check_cluster_address(options.cluster)
    output = Path(options.output)
    check_output_folder(output)
    cohort_notes: list[str] = []
    cases = read_cohort(options.cohort, engine.VOLUME_SUFFIXES, cohort_notes)
    for note in cohort_notes:
        log.warning(note)
    job = make_job(options)
    with contextlib.ExitStack() as stack:
        # Reach the cluster before writing anything, so an unreachable one leaves no trace.
        client = stack.enter_context(open_client(options.cluster, MAX_ATTEMPTS, options.tls_ca, options.tls_cert,
                                                 options.tls_key)) if options.cluster else None
        return _run(options, cases, job, client, started, progress, on_case, cohort_notes)


def _run(options: BatchOptions, cases: list[Case], job: CaseJob, client, started: float,
         progress: Progress, on_case: Callable[[dict], None], cohort_notes: list[str]) -> dict:
    output = Path(options.output)
    (output / "cases").mkdir(parents=True, exist_ok=True)
    engine.write_text_atomic(output / MARKER_NAME, json.dumps(
        {"format": MARKER_FORMAT, "cohort": str(Path(options.cohort).absolute()), "model": job.model,
         "classify_model": job.classify_model, "model_hash": job.model_hash,
         "settings_hash": job.settings_hash, "engine": engine.engine_version}, indent=2) + "\n")

    records: dict[str, dict] = {}
    todo: list[Case] = []
    progress("check", 0.0, f"checking {len(cases)} cases against earlier runs")
    for case in cases:
        record = None if options.redo else read_case_record(output / "cases" / case.id)
        reference = case.reference if options.compare else None
        if is_done(record, case.image, reference, job.model_hash, job.settings_hash):
            records[case.id] = {**record, "status": "skipped"}
        else:
            todo.append(case)
    progress("check", 1.0, f"{len(cases) - len(todo)} already done, {len(todo)} to run")

    def finished(record: dict) -> None:
        records[record["id"]] = record
        progress("cases", len(records) / len(cases), f"{record['id']}: {record['status']}")
        on_case(record)

    interrupted = True
    try:
        if todo and client is not None:
            run_dask(client, todo, job, finished)
        elif todo:
            run_local(todo, job, options.workers, finished, MAX_ATTEMPTS)
        interrupted = False
    finally:
        ordered = [records.get(c.id) or {"id": c.id, "status": "pending", "image": c.image} for c in cases]
        summary = write_results(output, ordered, {
            "cohort": str(Path(options.cohort).absolute()), "model": job.model,
            "backend": options.cluster or f"local pool of {options.workers}", "interrupted": interrupted,
            "cohort_notes": cohort_notes,
            "wall_s": round(time.time() - started, 3), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return summary
