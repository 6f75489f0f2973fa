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
    add_progress_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from coralbay.atomic import write_text_atomic
    from coralbay.device import describe, select_device
    from coralbay.errors import InputError
    from coralbay.inference.classify import classify_image
    from coralbay.io.volumes import series_read

    output = Path(args.output)
    if output.suffix.lower() != ".json":
        raise InputError(f"The report {output} must end in .json.")
    if not output.parent.is_dir():
        raise InputError(f"The output folder {output.parent} does not exist.")
    reporter = make_reporter(args, STAGES)
    device = select_device(args.device)
    reporter.progress("load", 0.0, "reading input")
    image = read_input(args.input, reporter, args.series)
    bundle = load_for_task(args, Task.CLASSIFICATION, reporter)
    reporter.progress("load", 1.0, f"model {bundle.manifest.name} on {describe(device)}")
    report = classify_image(image, bundle, device, point_lps=args.point,
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
