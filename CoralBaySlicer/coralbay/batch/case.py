"""One case on a worker: read the scan, segment, optionally classify and compare, write its folder.

The model is loaded once per worker process (`_BUNDLES`), not once per case. Everything a case
writes goes into a temporary folder that is swapped in as `DIR/cases/<id>/` only when complete,
with `case.json` (the record and the hashes of what made it) inside, so a case is either whole
or absent whenever the run is killed. A case's failure is returned as a record with one
sentence; it never stops the other cases.

Reading is its own function (`read_case_image`) so that a cluster can run it as a CPU task apart
from the network's GPU task.
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
class ImageRead:
    """The outcome of reading one scan: the image, or the one-sentence reason it failed."""

    image: sitk.Image | None
    seconds: float
    cpu_seconds: float = 0.0
    error: str | None = None
    warning: str | None = None


_BUNDLES: dict[tuple, Any] = {}  # this worker's loaded models, by (model, backbone)


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


def read_case_image(case: Case) -> ImageRead:
    """Read a case's scan (the CPU/I-O part); failures come back as a sentence, not an exception."""
    start, cpu = time.perf_counter(), time.process_time()
    try:
        image = engine.read_volume(case.image)
        return ImageRead(image, time.perf_counter() - start, time.process_time() - cpu,
                         warning=engine.ct_intensity_warning(image))
    except Exception as exc:  # noqa: BLE001 - a bad scan fails alone, with its sentence
        return ImageRead(None, time.perf_counter() - start, time.process_time() - cpu, error=sentence(exc))


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
    """A case's wall and CPU seconds (this process), reading included; CPU time shows contention."""

    def __init__(self, read: ImageRead) -> None:
        self.wall = time.perf_counter() - read.seconds
        self.cpu = time.process_time() - read.cpu_seconds

    def stop(self, timings: dict) -> None:
        timings["total_s"] = round(time.perf_counter() - self.wall, 3)
        timings["cpu_s"] = round(time.process_time() - self.cpu, 3)


def process_case(case: Case, job: CaseJob, read: ImageRead) -> dict:
    """Segment (classify, compare) one read scan and write its folder; returns the case's record."""
    record = _base_record(case, job)
    record["timings"]["read_s"] = round(read.seconds, 3)
    if read.error is not None:
        record["error"] = read.error
        record["timings"]["total_s"] = round(read.seconds, 3)
        return record
    if read.warning:
        record["warnings"].append(read.warning)
    clock = _CaseClock(read)
    try:
        _write_case(case, job, read.image, record, clock)
        record["status"] = "done"
    except Exception as exc:  # noqa: BLE001 - the case fails alone
        record["error"] = sentence(exc)
        record["volumes_ml"], record["metrics"], record["classification"] = {}, {}, None
        clock.stop(record["timings"])
    return record


def run_case(case: Case, job: CaseJob) -> dict:
    """Read and process one case in this process (the local pool's unit of work)."""
    return process_case(case, job, read_case_image(case))


def _write_case(case: Case, job: CaseJob, image: sitk.Image, record: dict, clock: _CaseClock) -> None:
    bundle, load_s = _bundle(job.model, job.backbone, job.trust_remote_code)
    record["worker"]["model_cached"] = load_s is None
    timings = record["timings"]
    if load_s is not None:
        timings["model_load_s"] = round(load_s, 3)
    if bundle.manifest.task != "segmentation":
        raise CoralBayError(f"The model {bundle.manifest.name} is a {bundle.manifest.task} model; "
                            "batch needs a segmentation model.")
    device = engine.select_device(job.device)
    _maybe_kill_self(case.id)
    start = time.perf_counter()
    result = engine.segment_image(image, bundle, device, overlap=job.overlap, window_batch_size=job.window_batch)
    timings["segment_s"] = round(time.perf_counter() - start, 3)
    timings.update({k: round(float(result.stats[k]), 3) for k in SEGMENT_STAGES if k in result.stats})
    record["volumes_ml"] = _volumes_ml(result.labels, result.label_table)
    case_dir = Path(job.output_dir) / "cases" / case.id
    record["hashes"] = {"model": job.model_hash, "settings": job.settings_hash,
                        "image": fingerprint(case.image),
                        "reference": fingerprint(case.reference) if job.compare and case.reference else None}
    with engine.atomic_dir(case_dir) as tmp:
        start = time.perf_counter()
        engine.write_label_map(result.labels, result.label_table, tmp / LABELS_NAME)
        timings["write_s"] = round(time.perf_counter() - start, 3)
        if job.classify_model:
            start = time.perf_counter()
            record["classification"] = _classify(case, job, image, device, tmp / CLASSIFICATION_NAME)
            timings["classify_s"] = round(time.perf_counter() - start, 3)
        if job.compare and case.reference:
            start = time.perf_counter()
            record["metrics"] = _compare(case, job, tmp, case_dir)
            timings["compare_s"] = round(time.perf_counter() - start, 3)
        record["status"] = "done"
        clock.stop(timings)
        (tmp / CASE_RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def _classify(case: Case, job: CaseJob, image: sitk.Image, device, report_path: Path) -> dict:
    """The same report `coralbay classify` writes."""
    bundle, _ = _bundle(job.classify_model, None, False)
    if bundle.manifest.task != "classification":
        raise CoralBayError(f"The model {bundle.manifest.name} given to --classify-model is a "
                            f"{bundle.manifest.task} model, not a classification model.")
    report = engine.classify_image(image, bundle, device, point_lps=case.point_lps,
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


