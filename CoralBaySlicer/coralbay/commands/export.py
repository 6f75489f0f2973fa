"""`coralbay export LABELS --format F --output PATH`: a label map to the formats other tools read."""

from __future__ import annotations

import argparse

from coralbay.commands._common import add_progress_option, add_series_option, make_reporter
from coralbay.export import FORMATS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export a label map as NIfTI, NRRD, Slicer .seg.nrrd, DICOM SEG or STL/OBJ meshes",
        description="Export a label map (or .seg.nrrd / DICOM SEG) with its names, colours and terminology. "
                    "nifti/nrrd also write a <name>.labels.json sidecar; seg.nrrd keeps segment names, "
                    "colours and terminology; dicom-seg references the source series (--dicom-series); "
                    "stl/obj write a folder with one mesh per structure in LPS millimetres.")
    p.add_argument("labels", metavar="LABELS", help="label map (NIfTI/NRRD/MHA), .seg.nrrd or DICOM SEG .dcm")
    p.add_argument("--format", "-f", required=True, choices=FORMATS, help="output format")
    p.add_argument("--output", "-o", required=True, metavar="PATH",
                   help="output file (a folder for stl/obj)")
    p.add_argument("--dicom-series", metavar="DIR",
                   help="source DICOM series or study folder (required for dicom-seg)")
    add_series_option(p, help="which series of the --dicom-series study folder: its SeriesNumber or "
                              "SeriesInstanceUID (default: the only regular CT volume, named on stderr)")
    p.add_argument("--labels", dest="label_table", metavar="TABLE",
                   help="label table (JSON) naming the labels; overrides the input's own sidecar")
    p.add_argument("--algorithm-type", choices=("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"), default="AUTOMATIC",
                   help="DICOM SEG segment algorithm type (default AUTOMATIC: a model's output)")
    add_progress_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from coralbay.export import export_labels

    reporter = make_reporter(args, stages={"export": 1.0})
    reporter.progress("export", 0.0, f"exporting {args.format}")
    if args.series is not None and args.dicom_series is None:
        from coralbay.errors import UsageError

        raise UsageError("--series chooses a series of the --dicom-series folder; give --dicom-series DIR too.")
    path = export_labels(args.labels, args.format, args.output, dicom_series=args.dicom_series,
                         series=args.series,
                         label_table=args.label_table,
                         warn=lambda message: reporter.log(message, level="warning"),
                         algorithm_type=args.algorithm_type)
    reporter.progress("export", 1.0, "done")
    reporter.result(outputs={"export": str(path)}, format=args.format)
    if args.progress != "jsonl":
        print(path)
    return 0
