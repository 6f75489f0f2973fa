"""`coralbay eval-interactive`: simulated clicks on reference label maps, for our session and the
classical baselines (Slicer's Grow from seeds, the random walker), each on its own errors."""

from __future__ import annotations

import argparse

from coralbay.commands._common import EPILOG, add_model_options, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:

    p = subparsers.add_parser(
        "eval-interactive", help="simulate a user clicking on each reference structure",
        description="For each CT and reference label map, simulate a user segmenting each structure and "
                    "report a per-click trace (prompt, Dice, NSD at 2 mm, seconds), DSC_AUC, final DSC / NSD and "
                    "how often a click made Dice fall, for CoralBay's interactive session and each classical "
                    "baseline, every method clicking on its own errors. Default protocol: the official CVPR 2025 "
                    "interactive 3D challenge's (its box, then each click at the deepest voxel of the largest "
                    "26-connected error component, positive on a missed voxel, negative on an extra one). "
                    "Slicer's Grow from seeds needs slicer-core: run benchmarks/interactive/eval_with_slicer.py "
                    "with the same arguments.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pairs", nargs="+", metavar="CT LABELS", help="CT volume and its reference label map, repeated")
    add_model_options(p)
    p.add_argument("--labels-table", metavar="FILE",
                   help="label table for every label map (JSON as the engine writes it, or {\"1\": \"spleen\", ...}); "
                        "default: each label map's <name>.labels.json, else a labels.json in its folder "
                        "(TotalSegmentator style), else generic names")
    p.add_argument("--structures", metavar="NAMES", help="comma-separated structure names (default: all)")
    p.add_argument("--clicks", type=positive_int, default=5, help="clicks per structure (default 5, as the challenge)")
    p.add_argument("--protocol", choices=("official", "ours"), default="official",
                   help="official: the CVPR 2025 challenge's box, clicks and metrics (default); ours: this project's "
                        "earlier protocol (tight box, missed and extra voxels searched separately, depth in mm)")
    p.add_argument("--box", action=argparse.BooleanOptionalAction, default=True,
                   help="give the protocol's box first (default); --no-box: the first click only")
    p.add_argument("--sequence", action="store_true",
                   help="keep what was accepted on earlier scans (the first answer on later scans is a proposal)")
    p.add_argument("--propose-with", metavar="MODEL",
                   help="a segmentation model (e.g. one taught with `coralbay teach`) whose mask each structure "
                        "it knows starts from, as `interact --propose-with`; without a box the simulated user "
                        "clicks on that proposal's errors")
    p.add_argument("--baselines", metavar="NAMES",
                   help="comma-separated classical baselines: grow-from-seeds (Slicer's Grow from seeds, needs "
                        "slicer-core), random-walker (scikit-image); default: both where available")
    p.add_argument("--no-baseline", action="store_true", help="our session only")
    p.add_argument("--no-ours", action="store_true", help="the baselines only (no model is loaded)")
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
    from coralbay.interactive import baselines as B
    from coralbay.interactive.evaluate import evaluate_case, mean_by_structure, method_summary, scan_summary
    from coralbay.interactive.simulate import PROTOCOLS
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
    baselines = _baselines(args, B)
    if args.no_ours and not baselines:
        raise UsageError("--no-ours with --no-baseline leaves no method to evaluate.")
    protocol = PROTOCOLS[args.protocol]
    bundle = None if args.no_ours else load_bundle(args.model, backbone=args.backbone,
                                                    trust_remote_code=args.trust_remote_code)
    proposals = None
    if args.propose_with:
        if bundle is None:
            raise UsageError("--propose-with needs our session (not --no-ours).")
        from coralbay.interactive.proposals import ModelProposals
        proposals = ModelProposals(load_bundle(args.propose_with), str(select_device(args.device)))
    records, feature_seconds = [], []
    session = None
    for ct_path, label_path in zip(args.pairs[::2], args.pairs[1::2]):
        if bundle is not None and (session is None or not args.sequence):
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
                                       baselines, protocol, str(ct_path),
                                       lambda m: print(m, file=sys.stderr, flush=True), proposals)
        records += found
        if seconds is not None:
            feature_seconds.append(round(seconds, 2))
    report = {"model": None if bundle is None else bundle.manifest.name, "clicks": args.clicks, "box": args.box,
              "propose_with": args.propose_with,
              "sequence": args.sequence, "protocol": {"name": protocol.name, "description": protocol.description},
              "methods": (["ours"] if bundle is not None else []) + list(baselines),
              "nsd_tolerance_mm": 2.0, "monotonicity_drop": 0.02, "summary": method_summary(records),
              "mean_by_structure": mean_by_structure(records), "by_scan": scan_summary(records, args.clicks),
              "feature_seconds": feature_seconds, "structures": records}
    write_text_atomic(out, json.dumps(report, indent=1, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)) + "\n")
    print(f"Wrote {out}")
    return 0


def _baselines(args: argparse.Namespace, B) -> list[str]:
    """The baselines asked for; by default every one available, with a note on stderr for the rest."""
    import sys

    if args.no_baseline:
        return []
    if args.baselines:
        names = [n.strip() for n in args.baselines.split(",") if n.strip()]
        for name in names:
            B.baseline(name)   # a UsageError that says how to get it when it is not available
        return names
    for name in B.DEFAULT_BASELINES:
        if not B.available(name):
            print(f"Skipping the {name} baseline. {B.how_to_get(name)}", file=sys.stderr)
    return [name for name in B.DEFAULT_BASELINES if B.available(name)]
