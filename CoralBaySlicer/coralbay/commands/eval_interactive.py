"""`coralbay eval-interactive`: simulated clicks on reference label maps, against a random walker."""

from __future__ import annotations

import argparse

from coralbay.commands._common import EPILOG, add_model_options, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:

    p = subparsers.add_parser(
        "eval-interactive", help="simulate a user clicking on each reference structure",
        description="For each CT and reference label map, simulate a user segmenting each structure "
                    "(CVPR 2025 interactive challenge protocol: optional box, then clicks at the deepest "
                    "point of the largest error) and report Dice and NSD (2 mm) after 1, 3, 5 and 10 "
                    "clicks, for CoralBay's interactive session and for scikit-image's random walker on "
                    "the same clicks.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pairs", nargs="+", metavar="CT LABELS", help="CT volume and its reference label map, repeated")
    add_model_options(p)
    p.add_argument("--labels-table", metavar="FILE",
                   help="label table for every label map (JSON as the engine writes it, or {\"1\": \"spleen\", ...}); "
                        "default: each label map's <name>.labels.json, else a labels.json in its folder "
                        "(TotalSegmentator style), else generic names")
    p.add_argument("--structures", metavar="NAMES", help="comma-separated structure names (default: all)")
    p.add_argument("--clicks", type=positive_int, default=10, help="clicks per structure (default 10)")
    p.add_argument("--box", action="store_true", help="give the reference's bounding box first")
    p.add_argument("--sequence", action="store_true",
                   help="keep what was accepted on earlier scans (the first answer on later scans is a proposal)")
    p.add_argument("--no-baseline", action="store_true", help="skip the random-walker baseline")
    p.add_argument("--cache", metavar="DIR", help="feature cache folder")
    p.add_argument("--json", required=True, metavar="OUT", help="report to write")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    import numpy as np
    import SimpleITK as sitk

    from coralbay.atomic import write_text_atomic
    from coralbay.bundle.loader import load_bundle
    from coralbay.device import select_device
    from coralbay.errors import InputError, UsageError
    from coralbay.interactive.evaluate import evaluate_case, mean_curves, scan_summary
    from coralbay.interactive.session import Session
    from coralbay.io.label_maps import read_labels
    from coralbay.io.labels import LabelTable, folder_label_table, load_label_table
    from coralbay.grid.resample import same_grid
    from coralbay.io.volumes import read_volume

    if len(args.pairs) % 2:
        raise UsageError("Give the scans as CT LABELS pairs (an even number of paths).")
    out = Path(args.json)
    if out.parent and not out.parent.is_dir():
        raise UsageError(f"The folder of {out} does not exist.")
    names = [n.strip() for n in args.structures.split(",")] if args.structures else None
    given_table = load_label_table(args.labels_table) if args.labels_table else None
    bundle = load_bundle(args.model, backbone=args.backbone, trust_remote_code=args.trust_remote_code)
    window = tuple(bundle.manifest.preprocessing["intensity_window_hu"])
    records, feature_seconds = [], []
    session = None
    for ct_path, label_path in zip(args.pairs[::2], args.pairs[1::2]):
        if session is None or not args.sequence:
            session = Session(bundle, cache_dir=args.cache, device=str(select_device(args.device)))
        image = read_volume(ct_path)
        labels = read_labels(label_path)
        reference_image = labels.image
        if not same_grid(reference_image, image):  # e.g. stored in another orientation: go through physical space
            reference_image = sitk.Resample(reference_image, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
            print(f"The label map {label_path} lies on another grid than {ct_path}; resampled it (nearest).",
                  file=sys.stderr)
        table = given_table or labels.table or folder_label_table(label_path) or LabelTable.generic(labels.values)
        if not any(label.value in labels.values for label in table):
            raise InputError(f"The label table of {label_path} names none of its label values "
                             f"({', '.join(map(str, sorted(labels.values)[:8]))}).")
        reference = sitk.GetArrayFromImage(reference_image)
        if not reference.any():
            raise InputError(f"The label map {label_path} holds no structure inside {ct_path}.")
        found, seconds = evaluate_case(session, image, reference, table, names, args.clicks, args.box,
                                       not args.no_baseline, window, str(ct_path),
                                       lambda m: print(m, file=sys.stderr, flush=True))
        records += found
        feature_seconds.append(round(seconds, 2))
    report = {"model": bundle.manifest.name, "clicks": args.clicks, "box": args.box, "sequence": args.sequence,
              "protocol": "CVPR 2025 interactive 3D: clicks at the deepest point of the largest error component",
              "nsd_tolerance_mm": 2.0, "structures": records, "feature_seconds": feature_seconds,
              "mean_by_structure": mean_curves(records), "by_scan": scan_summary(records, args.clicks)}
    write_text_atomic(out, json.dumps(report, indent=1, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)) + "\n")
    print(f"Wrote {out}")
    return 0
