"""`coralbay compare PRED REF --output DIR`: review a prediction against ground truth."""

from __future__ import annotations

import argparse
import math

from coralbay.commands._common import add_progress_option, add_series_option, make_reporter


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of millimetres") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("the tolerance must be a finite number of mm >= 0")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare", help="compare a prediction with ground truth: metrics, difference maps, report",
        description="Compare a predicted label map with a reference (ground truth). The reference is "
                    "brought onto the prediction's grid through physical space (nearest neighbour). "
                    "Writes DIR/metrics.json, metrics.csv, difference.nii.gz (+ .labels.json), "
                    "surface_distance.nii.gz (signed, mm) and overview.png, all at once.",
        epilog="Labels are paired by the --labels mapping if given, else by name when both sides have "
               "label tables, else by value. Distances are in mm with the true voxel spacing; "
               "worst_error_lps in metrics.json is in the LPS convention of ITK/DICOM.")
    p.add_argument("prediction", metavar="PRED", help="predicted label map (NIfTI/NRRD/MHA, .seg.nrrd or DICOM SEG .dcm)")
    p.add_argument("reference", metavar="REF", help="reference label map (same kinds as PRED)")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="folder for the review (written as a whole)")
    p.add_argument("--image", metavar="CT", help="the CT (file or DICOM folder) to show under the contours in overview.png")
    p.add_argument("--labels", metavar="MAPPING", help="label table or mapping file (JSON) for pairing labels")
    p.add_argument("--tolerance", type=_tolerance, default=None, metavar="MM",
                   help="surface Dice tolerance in mm (default 3)")
    p.add_argument("--dicom-series", metavar="DIR",
                   help="source DICOM series of a DICOM SEG input, when its own frames do not define a 3D grid")
    p.add_argument("--partial-reference", action="store_true",
                   help="compare even when the reference covers less than half of the prediction's field of "
                        "view (prediction voxels outside it count as compared with background)")
    add_series_option(p, help="which series of a DICOM study folder given as --image or --dicom-series: its "
                              "SeriesNumber or SeriesInstanceUID (default: the only regular CT volume)")
    add_progress_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from coralbay.review import DEFAULT_TOLERANCE_MM, compare_label_maps
    from coralbay.review.compare import STAGES

    reporter = make_reporter(args, stages=STAGES)
    metrics = compare_label_maps(args.prediction, args.reference, args.output, image_path=args.image,
                                 mapping_path=args.labels,
                                 tolerance_mm=DEFAULT_TOLERANCE_MM if args.tolerance is None else args.tolerance,
                                 dicom_series=args.dicom_series, series=args.series, progress=reporter.progress,
                                 partial_reference=args.partial_reference)
    for message in metrics["warnings"]:
        reporter.log(message, level="warning")
    reporter.result(outputs={"review": str(args.output)}, structures=len(metrics["structures"]),
                    worst_error_lps=metrics["worst_error_lps"])
    if args.progress != "jsonl":
        print(_table(metrics))
    return 0


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(metrics: dict) -> str:
    lines = [f"{'structure':<28} {'Dice':>6} {'HD95 mm':>8} {'ASSD mm':>8} {'NSD':>6} {'vol diff %':>10}"]
    for s in metrics["structures"]:
        lines.append(f"{s['name'][:28]:<28} {_fmt(s['dice']):>6} {_fmt(s['hd95_mm'], 2):>8} "
                     f"{_fmt(s['assd_mm'], 2):>8} {_fmt(s['surface_dice']):>6} {_fmt(s['volume_difference_percent'], 1):>10}")
    for role in ("prediction", "reference"):
        unmatched = metrics[f"unmatched_{role}"]
        if unmatched:
            lines.append(f"unmatched {role}: " + ", ".join(u["name"] for u in unmatched))
    return "\n".join(lines)
