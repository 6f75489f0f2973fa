"""`coralbay eval-interactive`: simulated clicks on reference label maps, for our session and the
classical baselines (Slicer's Grow from seeds, the random walker), each on its own errors."""

from __future__ import annotations

import argparse

from coralbay.commands._common import EPILOG, add_model_options, positive_float, positive_int


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
    p.add_argument("--box", action=argparse.BooleanOptionalAction, default=None,
                   help="give the protocol's box first (default, except with --teach-between-scans); --no-box: "
                        "the first click only, on the errors of the proposal if there is one")
    p.add_argument("--sequence", action="store_true",
                   help="keep what was accepted on earlier scans (the first answer on later scans is a proposal)")
    p.add_argument("--teach-between-scans", action="store_true",
                   help="the Teach-model loop (implies --sequence and --no-box): after each scan but the last, "
                        "teach a model from the structures accepted so far (the simulated user's final answers; "
                        "the first teach from --model, each later one --from the model taught before) and start "
                        "the next scan's structures from the newest taught model's proposal")
    p.add_argument("--teach-steps", type=positive_int, metavar="N",
                   help="with --teach-between-scans: most training steps of each teach (default: teach's own)")
    p.add_argument("--teach-minutes", type=positive_float, metavar="MIN",
                   help="with --teach-between-scans: time budget of each teach")
    p.add_argument("--teach-dir", metavar="DIR",
                   help="with --teach-between-scans: a new or empty folder to keep the accepted examples and the "
                        "taught models in (default: a temporary folder, removed at the end)")
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
    from pathlib import Path

    import numpy as np

    from coralbay.atomic import write_text_atomic
    from coralbay.bundle.loader import load_bundle
    from coralbay.device import select_device
    from coralbay.errors import UsageError
    from coralbay.interactive import baselines as B
    from coralbay.interactive.evaluate import mean_by_structure, method_summary, scan_summary
    from coralbay.interactive.simulate import PROTOCOLS
    from coralbay.io.labels import load_label_table

    if len(args.pairs) % 2:
        raise UsageError("Give the scans as CT LABELS pairs (an even number of paths).")
    _check_teach_options(args)
    use_box = (not args.teach_between_scans) if args.box is None else args.box
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
    teacher, work = None, None
    if args.teach_between_scans:
        import tempfile

        from coralbay.interactive.teach_between import TeachBetweenScans
        work = Path(args.teach_dir) if args.teach_dir else Path(tempfile.mkdtemp(prefix="coralbay-teach-between-"))
        teacher = TeachBetweenScans(args.model, work, args.teach_steps, args.teach_minutes, args.device)
    try:
        records, feature_seconds, per_scan, teaches = _evaluate_scans(args, bundle, proposals, teacher, use_box,
                                                                     names, given_table, baselines, protocol)
    finally:
        if teacher is not None and not args.teach_dir:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    by_scan = scan_summary(records, args.clicks)
    for entry in by_scan:
        entry.update(per_scan.get(entry["scan"], {}))
    report = {"model": None if bundle is None else bundle.manifest.name, "clicks": args.clicks, "box": use_box,
              "propose_with": args.propose_with,
              "sequence": args.sequence or args.teach_between_scans,
              "protocol": {"name": protocol.name, "description": protocol.description},
              "methods": (["ours"] if bundle is not None else []) + list(baselines),
              "nsd_tolerance_mm": 2.0, "monotonicity_drop": 0.02, "summary": method_summary(records),
              "mean_by_structure": mean_by_structure(records), "by_scan": by_scan,
              "feature_seconds": feature_seconds, "structures": records}
    if teacher is not None:
        report["teach_between_scans"] = {
            "examples": "the structures the session accepted (the simulated user's final answers, not the references)",
            "steps": args.teach_steps, "minutes": args.teach_minutes, "teach_dir": args.teach_dir, "teaches": teaches}
    write_text_atomic(out, json.dumps(report, indent=1, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)) + "\n")
    print(f"Wrote {out}")
    return 0


def _check_teach_options(args: argparse.Namespace) -> None:
    """Refuse what --teach-between-scans cannot measure, before any work (one sentence each)."""
    from pathlib import Path

    from coralbay.errors import InputError, UsageError

    if not args.teach_between_scans:
        given = [o for o, v in (("--teach-steps", args.teach_steps), ("--teach-minutes", args.teach_minutes),
                                ("--teach-dir", args.teach_dir)) if v is not None]
        if given:
            raise UsageError(f"{given[0]} needs --teach-between-scans.")
        return
    if args.box:
        raise UsageError("--teach-between-scans measures the taught model's proposal, which a box would replace "
                         "(a box restarts the answer from the scan): leave out --box (--no-box is implied).")
    if args.propose_with:
        raise UsageError("--teach-between-scans proposes with the models it teaches: leave out --propose-with.")
    if args.no_ours:
        raise UsageError("--teach-between-scans needs our session (not --no-ours).")
    if args.backbone:
        raise UsageError("--teach-between-scans teaches on the encoder of --model itself: leave out --backbone.")
    if len(args.pairs) < 4:
        raise UsageError("--teach-between-scans needs at least two CT LABELS pairs: it teaches between scans.")
    if args.teach_dir:
        folder = Path(args.teach_dir)
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise InputError(f"The --teach-dir {folder} is not a new or empty folder; give another one (examples "
                             "of another run would be taught too).")


def _evaluate_scans(args: argparse.Namespace, bundle, proposals, teacher, use_box: bool, names, given_table,
                    baselines, protocol) -> tuple[list[dict], list[float], dict[str, dict], list[dict]]:
    """Every scan in order: (records, feature seconds, per-scan teach record, teaches)."""
    import sys

    import SimpleITK as sitk

    from coralbay.device import select_device
    from coralbay.errors import InputError
    from coralbay.grid.resample import same_grid
    from coralbay.interactive.evaluate import evaluate_case
    from coralbay.interactive.session import Session
    from coralbay.io.label_maps import read_labels
    from coralbay.io.labels import LabelTable, folder_label_table
    from coralbay.io.volumes import read_volume

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    records, feature_seconds, per_scan, teaches = [], [], {}, []
    device = str(select_device(args.device))
    session = None
    pairs = list(zip(args.pairs[::2], args.pairs[1::2]))
    for index, (ct_path, label_path) in enumerate(pairs):
        if bundle is not None and (session is None or not (args.sequence or teacher)):
            session = Session(bundle, cache_dir=args.cache, device=device,
                              examples_dir=teacher.examples if teacher else None)
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
        if teacher is not None:
            proposals = teacher.proposals(device)
            per_scan[str(ct_path)] = teacher.scan_record()
        found, seconds = evaluate_case(session, image, reference, table, names, args.clicks, use_box,
                                       baselines, protocol, str(ct_path), log, proposals)
        records += found
        if seconds is not None:
            feature_seconds.append(round(seconds, 2))
        if teacher is not None and index + 1 < len(pairs):   # the last scan's teach would propose nothing
            teaches.append(teacher.teach(after_scan=index + 1))
            done = teaches[-1]
            log(f"Taught {done['taught']} on {done.get('taught_on_scans', 0)} scan(s) in {done.get('seconds')} s "
                f"({done.get('steps')} steps, stopped: {done.get('stopped')})" if done["taught"] else
                f"No teach after scan {index + 1}: {done['reason']}.")
    return records, feature_seconds, per_scan, teaches


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
