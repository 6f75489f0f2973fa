"""`coralbay classify`: class probabilities for a scan, or for the region around a point."""

from __future__ import annotations

import argparse
import json

from coralbay.commands._common import (EPILOG, add_model_options, add_progress_option, add_series_option,
                                       float_list, load_for_task, make_reporter, read_input)
from coralbay.vocabulary import Task


STAGES = {"load": 0.1, "preprocess": 0.1, "inference": 0.75, "write": 0.05}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "classify", help="classify a CT scan (or the region around a point)",
        description="Classify a CT volume with a classification bundle: encoder features are "
                    "pooled over sliding windows into one scan vector, or taken around --point.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="INPUT", help="CT volume file, DICOM series folder or DICOM study folder")
    add_series_option(p)
    p.add_argument("--output", "-o", required=True, metavar="REPORT.json", help="JSON report to write")
    add_model_options(p)
    p.add_argument("--point", type=float_list(3, "--point"), metavar="X,Y,Z",
                   help="classify the region around this point (mm, LPS), e.g. a nodule centre "
                        "(write --point=-10,... when the first number is negative)")
    p.add_argument("--allow-long-run", action="store_true",
                   help="run even when the estimate (windows x the pace of the run's own first windows on this "
                        "device) is over a minute; without it such a run stops after those windows, with the estimate")
    p.add_argument("--estimate", action="store_true",
                   help="only print the estimate (windows, seconds on this device; the run's first windows are "
                        "timed, then it stops) as the result; write nothing")
    add_progress_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from coralbay.atomic import write_text_atomic
    from coralbay.device import describe, select_device
    from coralbay.errors import UsageError
    from coralbay.inference.classify import classify_image
    from coralbay.io.volumes import series_read

    output = Path(args.output)
    if output.suffix.lower() != ".json":
        raise UsageError(f"The report {output} must end in .json.")
    if not output.parent.is_dir():
        raise UsageError(f"The output folder {output.parent} does not exist.")
    reporter = make_reporter(args, STAGES)
    device = select_device(args.device)
    reporter.progress("load", 0.0, "reading input")
    image = read_input(args.input, reporter, args.series)
    bundle = load_for_task(args, Task.CLASSIFICATION, reporter)
    reporter.progress("load", 1.0, f"model {bundle.manifest.name} on {describe(device)}")
    if args.estimate:  # what the Slicer panel asks before it starts a run
        from coralbay.inference.classify import estimate_classification, prepare_classification

        estimate = estimate_classification(prepare_classification(image, bundle.manifest, args.point), bundle, device,
                                           window_batch_size=args.window_batch)
        reporter.result(outputs={}, estimate=estimate.to_dict())
        if args.progress != "jsonl":
            print(f"{estimate.describe()}" + (" (longer than a minute: needs --allow-long-run)"
                                              if estimate.to_dict()["long"] else ""))
        return 0
    report = classify_image(image, bundle, device, point_lps=args.point, allow_long_run=args.allow_long_run,
                            window_batch_size=args.window_batch, progress=reporter.progress)
    report["input"] = str(args.input)
    report.update(series_read(image))  # which series of a DICOM folder was classified
    write_text_atomic(output, json.dumps(report, indent=2) + "\n")
    reporter.progress("write", 1.0, "done")
    reporter.result(outputs={"report": str(output)}, **report)
    if args.progress != "jsonl":
        probs = ", ".join(f"{k} {v:.3f}" for k, v in report["probabilities"].items())
        print(f"{report['prediction']} ({probs}); wrote {output}")
    return 0
