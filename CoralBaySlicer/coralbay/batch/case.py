"""One case on a worker: read the scan, segment, optionally classify and compare, write its folder.

The model is loaded once per worker process (`_BUNDLES`), not once per case. Everything a case
writes goes into a temporary folder that is swapped in as `DIR/cases/<id>/` only when complete,
with `case.json` (the record and the hashes of what made it) inside, so a case is either whole
or absent whenever the run is killed. A case's failure is returned as a record with one
sentence; it never stops the other cases.

A case is two steps: `prepare_case` (CPU: read the scan, hash it, crop and resample it onto the
model grid) and `process_case` (the network, the restore, the writing), with a `PreparedCase`
between them that holds the model-grid volume and the input's geometry, never the input's voxels.
So a cluster runs the first as a CPU task and the second as a GPU task, and the local pool's
workers prepare their next case on a thread while the network runs (local_pool.py). Both steps
call the engine's own `prepare_segmentation`/`segment_prepared`, the two halves of what
`coralbay segment` runs, so the labels are the same byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from coralbay.batch import engine
from coralbay.batch.cohort import Case
from coralbay.batch.ledger import CASE_RECORD, fingerprint
from coralbay.errors import CoralBayError

LABELS_NAME = "labels.nii.gz"
CLASSIFICATION_NAME = "classification.json"
REVIEW_DIR = "review"
# Fault injection for the tests: "<case id>:<marker file>" makes the worker that starts this
# case SIGKILL itself, once (the marker records that it did), as an OOM kill would.
SEGMENT_STAGES = ("preprocess_s", "inference_s", "restore_s")  # parts of segment_s (CPU, network, CPU)
KILL_ONCE_ENV = "CORALBAY_BATCH_KILL_ONCE"


@dataclass(frozen=True)
class CaseJob:
    """What every case of one run shares; small and picklable (it travels to every worker)."""

    output_dir: str
    model: str
    backbone: str | None
    trust_remote_code: bool
    device: str
    overlap: float | None
    window_batch: int | None
    compare: bool
    tolerance_mm: float
    classify_model: str | None
    model_hash: str
    settings_hash: str


@dataclass
class PreparedCase:
    """The CPU step's outcome: the scan prepared for the models (or the one-sentence reason it
    failed), its hashes, and how long reading and preparing took. Travels between workers."""

    scan: engine.PreparedScan | None = None     # for the segmentation model
    classify_input: engine.Prepared | None = None  # for --classify-model
    hashes: dict | None = None         # the ledger's fingerprints of the image and reference
    read_s: float = 0.0
    seconds: float = 0.0               # wall seconds of the whole step (reading included)
    cpu_seconds: float = 0.0
    error: str | None = None
    warning: str | None = None
    series: dict | None = None         # the DICOM series read from a series or study folder
    prepared_ahead: bool = False       # by the local pool's look-ahead, while the previous case ran


_BUNDLES: dict[tuple, Any] = {}  # this worker's loaded models, by (model, backbone)
_MANIFESTS: dict[str, Any] = {}  # this worker's model manifests (the CPU step needs no weights)


def _bundle(model: str, backbone: str | None, trust_remote_code: bool) -> tuple[Any, float | None]:
    """(bundle, seconds spent loading it, None when this worker had it already)."""
    key = (model, backbone, trust_remote_code)
    if key in _BUNDLES:
        return _BUNDLES[key], None
    start = time.perf_counter()
    _BUNDLES[key] = engine.load_bundle(model, backbone=backbone, trust_remote_code=trust_remote_code)
    return _BUNDLES[key], time.perf_counter() - start


def sentence(exc: BaseException) -> str:
    """One sentence for a case's failure, the engine's own where it has one."""
    if isinstance(exc, CoralBayError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "The worker ran out of memory on this case; give the workers more memory or a smaller --window-batch."
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"Unexpected error ({type(exc).__name__}: {detail[:300]})."


def _manifest(model: str, task: str, option: str) -> Any:
    """A bundle's manifest (cached), checked to be a `task` model."""
    if model not in _MANIFESTS:
        _MANIFESTS[model] = engine.read_manifest(model)
    manifest = _MANIFESTS[model]
    if manifest.task != task:
        raise CoralBayError(f"The model {manifest.name} given to {option} is a {manifest.task} model, "
                            f"not a {task} model.")
    return manifest


def prepare_case(case: Case, job: CaseJob) -> PreparedCase:
    """Read, hash and prepare one case's scan (the CPU step); failures come back as a sentence."""
    start, cpu = time.perf_counter(), time.process_time()
    prepared = PreparedCase()
    try:
        image = engine.read_volume(case.image)
        prepared.read_s = time.perf_counter() - start
        prepared.series = engine.series_read(image)
        prepared.warning = engine.ct_intensity_warning(image)
        prepared.scan = engine.prepare_segmentation(image, _manifest(job.model, "segmentation", "--model"),
                                                    overlap=job.overlap)
        if job.classify_model:
            prepared.classify_input = engine.prepare_classification(
                image, _manifest(job.classify_model, "classification", "--classify-model"), case.point_lps)
        del image
        prepared.hashes = {"model": job.model_hash, "settings": job.settings_hash,
                           "image": fingerprint(case.image),
                           "reference": fingerprint(case.reference) if job.compare and case.reference else None}
    except Exception as exc:  # noqa: BLE001 - a bad scan fails alone, with its sentence
        prepared.scan = prepared.classify_input = None
        prepared.error = sentence(exc)
    prepared.seconds = time.perf_counter() - start
    prepared.cpu_seconds = time.process_time() - cpu
    if prepared.error and not prepared.read_s:
        prepared.read_s = prepared.seconds
    return prepared


def _maybe_kill_self(case_id: str) -> None:
    spec = os.environ.get(KILL_ONCE_ENV, "")
    target, _, marker = spec.partition(":")
    if target == case_id and marker and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


def _volumes_ml(labels: sitk.Image, table) -> dict[str, float]:
    counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel())
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    return {lab.name: float(counts[lab.value]) * voxel_ml if lab.value < len(counts) else 0.0 for lab in table}


def _base_record(case: Case, job: CaseJob) -> dict:
    return {"id": case.id, "status": "failed", "error": None, "image": case.image,
            "reference": case.reference if job.compare else None,
            "worker": {"host": socket.gethostname(), "pid": os.getpid()}, "timings": {},
            "volumes_ml": {}, "metrics": {}, "classification": None, "warnings": []}


class _CaseClock:
    """A case's wall and CPU seconds, the CPU step's included; CPU time shows contention. (With the
    local pool's look-ahead the CPU step overlaps the previous case's network in the same process,
    so the two cases' CPU seconds share that stretch.)"""

    def __init__(self, prepared: PreparedCase) -> None:
        self.wall = time.perf_counter() - prepared.seconds
        self.cpu = time.process_time() - prepared.cpu_seconds

    def stop(self, timings: dict) -> None:
        timings["total_s"] = round(time.perf_counter() - self.wall, 3)
        timings["cpu_s"] = round(time.process_time() - self.cpu, 3)


def process_case(case: Case, job: CaseJob, prepared: PreparedCase) -> dict:
    """Segment (classify, compare) one prepared case and write its folder; returns its record."""
    record = _base_record(case, job)
    record["timings"]["read_s"] = round(prepared.read_s, 3)
    record.update(prepared.series or {})
    if prepared.error is not None:
        record["error"] = prepared.error
        record["timings"]["total_s"] = round(prepared.seconds, 3)
        return record
    if prepared.warning:
        record["warnings"].append(prepared.warning)
    clock = _CaseClock(prepared)
    try:
        _write_case(case, job, prepared, record, clock)
        record["status"] = "done"
    except Exception as exc:  # noqa: BLE001 - the case fails alone
        record["error"] = sentence(exc)
        record["volumes_ml"], record["metrics"], record["classification"] = {}, {}, None
        clock.stop(record["timings"])
    return record


def run_case(case: Case, job: CaseJob) -> dict:
    """Both steps of one case in this process, one after the other."""
    return process_case(case, job, prepare_case(case, job))


def _write_case(case: Case, job: CaseJob, prepared: PreparedCase, record: dict, clock: _CaseClock) -> None:
    bundle, load_s = _bundle(job.model, job.backbone, job.trust_remote_code)
    record["worker"]["model_cached"] = load_s is None
    record["worker"]["prepared_ahead"] = prepared.prepared_ahead
    timings = record["timings"]
    if load_s is not None:
        timings["model_load_s"] = round(load_s, 3)
    device = engine.select_device(job.device)
    _maybe_kill_self(case.id)
    start = time.perf_counter()
    result = engine.segment_prepared(prepared.scan, bundle, device, window_batch_size=job.window_batch)
    timings["segment_s"] = round(time.perf_counter() - start + prepared.scan.seconds, 3)
    timings.update({k: round(float(result.stats[k]), 3) for k in SEGMENT_STAGES if k in result.stats})
    record["volumes_ml"] = _volumes_ml(result.labels, result.label_table)
    case_dir = Path(job.output_dir) / "cases" / case.id
    record["hashes"] = prepared.hashes
    with engine.atomic_dir(case_dir) as tmp:
        start = time.perf_counter()
        engine.write_label_map(result.labels, result.label_table, tmp / LABELS_NAME)
        timings["write_s"] = round(time.perf_counter() - start, 3)
        if job.classify_model:
            start = time.perf_counter()
            record["classification"] = _classify(case, job, prepared, device, tmp / CLASSIFICATION_NAME)
            timings["classify_s"] = round(time.perf_counter() - start, 3)
        if job.compare and case.reference:
            start = time.perf_counter()
            record["metrics"] = _compare(case, job, tmp, case_dir)
            timings["compare_s"] = round(time.perf_counter() - start, 3)
        record["status"] = "done"
        clock.stop(timings)
        (tmp / CASE_RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def _classify(case: Case, job: CaseJob, prepared: PreparedCase, device, report_path: Path) -> dict:
    """The same report `coralbay classify` writes (`seconds`: the network and head only)."""
    bundle, _ = _bundle(job.classify_model, None, False)
    report = engine.classify_prepared(prepared.classify_input, bundle, device, point_lps=case.point_lps,
                                      window_batch_size=job.window_batch)
    report["input"] = case.image
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return {"prediction": report["prediction"], "confidence": report["confidence"],
            "probabilities": report["probabilities"]}


def _compare(case: Case, job: CaseJob, tmp: Path, case_dir: Path) -> dict[str, dict]:
    """The review `coralbay compare` writes, in review/; metrics by structure name."""
    metrics = engine.compare_label_maps(tmp / LABELS_NAME, case.reference, tmp / REVIEW_DIR,
                                        image_path=case.image, tolerance_mm=job.tolerance_mm)
    metrics["prediction"] = str(case_dir / LABELS_NAME)  # where it lies once the folder is in place
    (tmp / REVIEW_DIR / "metrics.json").write_text(engine.metrics_json_text(metrics), encoding="utf-8")
    return {s["name"]: {k: s[k] for k in ("dice", "hd95_mm", "assd_mm", "surface_dice",
                                          "volume_difference_percent")} for s in metrics["structures"]}


