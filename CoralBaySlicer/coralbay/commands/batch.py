"""`coralbay batch COHORT --model M --output DIR`: a whole cohort, resumable, locally or on Dask."""

from __future__ import annotations

import argparse

from coralbay.commands._common import add_progress_option, make_reporter, overlap_value, positive_int

STAGES = {"check": 0.02, "cases": 0.98}


def register(subparsers: argparse._SubParsersAction) -> None:
    from coralbay.device import DEVICE_CHOICES

    p = subparsers.add_parser(
        "batch", help="segment (classify, compare) a whole cohort, resumably, locally or on a Dask cluster",
        description="Run a cohort: a CSV with columns id,image and optionally reference (ground truth "
                    "for --compare) and point (x,y,z mm LPS for --classify-model), paths relative to the "
                    "CSV; or a folder whose entries are scans (volume files or DICOM series folders). "
                    "Each case's outputs go to DIR/cases/<id>/ (labels.nii.gz + labels.labels.json, "
                    "classification.json, review/ as 'coralbay compare' writes it), each folder written "
                    "whole; DIR/results.csv (+ .parquet), summary.json and metrics.png describe the cohort. "
                    "Rerunning skips the cases whose inputs, model and settings are unchanged.",
        epilog="Exit codes: 0 every case done, 1 some case failed or another failure (one sentence on "
               "stderr), 2 usage error, 130 interrupted (rerun the same command to continue). "
               "See docs/batch.md for clusters, TLS and Slurm.")
    p.add_argument("cohort", metavar="COHORT", help="cohort CSV file or folder of scans")
    p.add_argument("--model", "-m", required=True, metavar="M",
                   help="segmentation model: catalog name (see 'coralbay models') or bundle folder")
    p.add_argument("--output", "-o", required=True, metavar="DIR",
                   help="batch folder (new, empty, or an earlier batch to continue)")
    p.add_argument("--compare", action="store_true",
                   help="compare each case with its reference column (metrics, difference maps)")
    p.add_argument("--classify-model", metavar="C", help="also classify each scan with this classification model")
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="worker processes of the local pool (default 1; each holds one copy of the model)")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="run on Dask instead: local:N starts N workers on 127.0.0.1 only; tcp://HOST:PORT "
                        "or tls://HOST:PORT joins an existing scheduler")
    p.add_argument("--tls-ca-file", metavar="PEM", help="CA certificate of a tls:// scheduler")
    p.add_argument("--tls-cert", metavar="PEM", help="this client's certificate for a tls:// scheduler")
    p.add_argument("--tls-key", metavar="PEM", help="this client's private key for a tls:// scheduler")
    p.add_argument("--backbone", metavar="WEIGHTS", help="replace the model's encoder weights (see 'segment')")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow running code from the hub repository given in --backbone (off by default)")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="compute device on the workers")
    p.add_argument("--overlap", type=overlap_value, metavar="F", help="sliding-window overlap (default from the bundle)")
    p.add_argument("--window-batch", type=positive_int, metavar="N", help="windows evaluated at once")
    p.add_argument("--redo", action="store_true", help="run every case again, even those already done")
    add_progress_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from coralbay.batch.runner import BatchOptions, run_batch
    from coralbay.errors import CoralBayError, UsageError

    if args.cluster and args.workers != 1:
        raise UsageError("Give either --workers (local pool) or --cluster (Dask), not both.")
    reporter = make_reporter(args, STAGES)
    options = BatchOptions(cohort=args.cohort, model=args.model, output=args.output, compare=args.compare,
                           classify_model=args.classify_model, workers=args.workers, cluster=args.cluster,
                           backbone=args.backbone, trust_remote_code=args.trust_remote_code, device=args.device,
                           overlap=args.overlap, window_batch=args.window_batch, redo=args.redo,
                           tls_ca=args.tls_ca_file, tls_cert=args.tls_cert, tls_key=args.tls_key)

    def on_case(record: dict) -> None:
        if record["status"] == "failed":
            reporter.log(f"case {record['id']} failed: {record.get('error')}", level="warning")
        for warning in record.get("warnings") or []:  # also in results.csv and summary.json
            reporter.log(f"case {record['id']}: {warning}", level="warning")

    summary = run_batch(options, progress=reporter.progress, on_case=on_case)
    counts = summary["counts"]
    reporter.result(outputs={"results": f"{args.output}/results.csv", "summary": f"{args.output}/summary.json"},
                    counts=counts, failed=summary["failed"])
    if args.progress != "jsonl":
        print(f"{counts['done']} done, {counts['skipped']} skipped (done earlier), {counts['failed']} failed; "
              f"wrote {args.output}/results.csv")
    if counts["failed"]:
        raise CoralBayError(f"{counts['failed']} of {summary['cases']} cases failed (their rows in "
                            f"{args.output}/results.csv say why); the other cases are done.")
    return 0
