"""`coralbay train-seg` and `coralbay train-cls`: train task heads on the CoralBay encoder.

Both write a complete bundle folder atomically at the very end (an interrupted or failed run
leaves no bundle, only its checkpoints), with a README.md, validation metrics and, in
`reproduce`, the command line that recreates it.
"""

from __future__ import annotations

import argparse
import shlex

from coralbay.commands._common import (EPILOG, add_progress_option, float_list, make_reporter,
                                       overlap_value, positive_int)


SEG_STAGES = {"data": 0.08, "train": 0.8, "test": 0.1, "write": 0.02}
CLS_STAGES = {"data": 0.02, "features": 0.7, "fit": 0.03, "test": 0.23, "write": 0.02}

# Options that do not change the trained weights; they stay out of the manifest's `reproduce`.
PROBE_WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1, 1.0)
POINT_REGION_MARGIN = 8  # model-grid voxels per axis left for the input's voxel edges

NOT_REPRODUCED = {"progress", "checkpoint_dir", "checkpoint_every", "keep_checkpoints", "resume", "device",
                  "threads", "help"}

DEMO_USE = ("Demonstration only: this model was trained on synthetic CT phantoms made by `coralbay phantom` "
            "so that the project runs end to end without network access. It is not for any clinical or "
            "research conclusion; for real work use the CoralBay weights (see the project README).")
USER_USE = "Research use on scans like its training data; not validated for clinical use."


def window_size(text: str) -> list[int]:
    """One or three window sizes in voxels, each a multiple of 32 and at least 64."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("the window must be one or three whole numbers") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or any(v < 64 or v % 32 for v in values):
        raise argparse.ArgumentTypeError("window sizes must be multiples of 32 and at least 64 (e.g. 64 or 96)")
    return values


def spacing_mm(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("the spacing must be one or three numbers (mm)") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not all(0.1 <= v <= 20 for v in values):
        raise argparse.ArgumentTypeError("the spacing must be one or three numbers from 0.1 to 20 mm")
    return values


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number from 0 to 1") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be a number from 0 to 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a positive number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def weight_decay_choice(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number or auto") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    from coralbay.device import DEVICE_CHOICES

    out = p.add_argument_group("the bundle written")
    out.add_argument("--output", "-o", required=True, metavar="BUNDLE",
                     help="bundle folder to write (replaced as a whole only when training succeeds)")
    out.add_argument("--name", help="catalog name (default: the output folder's name)")
    out.add_argument("--title", help="human-readable title")
    out.add_argument("--description", help="what the model is (default: generated from the data)")
    out.add_argument("--intended-use", help="intended use statement (default: research use; "
                                            "a demonstration notice for phantom-trained models)")
    model = p.add_argument_group("model and preprocessing")
    model.add_argument("--backbone", metavar="WEIGHTS",
                       help="start the encoder from these weights: a .safetensors file, an eva/VoCo "
                            ".pt/.ckpt state dict, or a Hugging Face hub id org/name[@revision] (the real CoralBay weights)")
    model.add_argument("--trust-remote-code", action="store_true",
                       help="allow running code from the hub repository given in --backbone (off by default)")
    model.add_argument("--init-from", metavar="BUNDLE",
                       help="start from the weights (and preprocessing) of an existing bundle, by catalog name or folder")
    model.add_argument("--feature-size", type=positive_int, metavar="F",
                       help="encoder width: 48 = CoralBayU96B, 192 = U96H, 6 or 12 for tiny models "
                            "(default: that of --init-from/--backbone, else 48)")
    model.add_argument("--spacing", type=spacing_mm, metavar="MM", help="model grid spacing in mm, one or three "
                       "numbers (default: that of --init-from, else 1.5)")
    model.add_argument("--window-hu", type=float_list(2, "--window-hu"), metavar="LO,HI",
                       help="HU window scaled to [0, 1] (default: that of --init-from, else -175,250)")
    model.add_argument("--window", type=window_size, metavar="N",
                       help="sliding-window and crop size in voxels, multiples of 32, at least 64 "
                            "(default: that of --init-from, else 96)")
    model.add_argument("--overlap", type=overlap_value, metavar="F",
                       help="sliding-window overlap stored in the bundle (default: that of --init-from, else 0.5)")
    model.add_argument("--antialias", choices=("yes", "no"),
                       help="blur before downsampling onto the model grid, as inference does for the bundle "
                            "(default: that of --init-from, else yes)")
    run = p.add_argument_group("run")
    run.add_argument("--seed", type=int, default=0, help="seed for initialisation, crops and splits (default 0)")
    run.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="compute device (default auto)")
    run.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads for PyTorch")
    add_progress_option(p)


def register(subparsers: argparse._SubParsersAction) -> None:
    seg = subparsers.add_parser(
        "train-seg", help="train a segmentation head (decoder) and write a bundle",
        description="Train a Swin-UNETR decoder on the CoralBay encoder (frozen or fine-tuned) from a "
                    "folder of image/label pairs or from generated phantoms: random crops balanced by "
                    "label, flips, axial 90-degree rotations, small intensity changes, Dice + "
                    "cross-entropy, AdamW with a cosine schedule, validation Dice per structure, "
                    "checkpoints. Folders: imagesTr/ + labelsTr/, or CASE.nii.gz beside "
                    "CASE_labels.nii.gz; label maps must lie on their image's grid.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = seg.add_argument_group("data")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="FOLDER", help="training folder of image/label pairs")
    source.add_argument("--phantoms", metavar="SEEDS", help="train on generated phantoms, e.g. 0-39")
    val = data.add_mutually_exclusive_group()
    val.add_argument("--val-data", metavar="FOLDER", help="validation folder (default: a split of --data)")
    val.add_argument("--val-phantoms", metavar="SEEDS", help="validation phantoms, e.g. 5000-5002")
    val.add_argument("--val-fraction", type=probability, metavar="F",
                     help="fraction of --data kept for validation (default 0.2 with 5 or more cases)")
    data.add_argument("--test-phantoms", metavar="SEEDS",
                      help="after training, segment these held-out phantoms through the full inference "
                           "path and record their Dice in the manifest (with --phantoms)")
    data.add_argument("--labels", metavar="TABLE.json", help="label table (names, colours, codes); default: "
                      "the first label map's .labels.json sidecar, dataset.json, or generic names")
    data.add_argument("--merge", metavar="SRC=DST,...",
                      help="train label SRC as DST (a name or value; DST may be 'background'), e.g. "
                           "liver_lesion=liver; SRC is then not a structure of the model")
    _add_common(seg)
    train = seg.add_argument_group("training")
    train.add_argument("--encoder", choices=("auto", "finetune", "convs", "frozen"), default="auto",
                       help="finetune: train encoder and decoder; convs: freeze the Swin transformer, train "
                            "the encoder's convolutional blocks and the decoder; frozen: train the decoder "
                            "only. auto: frozen with --backbone, else finetune")
    train.add_argument("--feature-cache", type=int, default=0, metavar="K",
                       help="with convs/frozen: compute the frozen part's outputs once for K augmented crops "
                            "per case and train on that pool (much faster on a CPU; default 0: fresh crops "
                            "every step)")
    train.add_argument("--steps", type=positive_int, default=1000, help="optimizer steps (default 1000)")
    train.add_argument("--batch-size", type=positive_int, default=2, help="crops per step (default 2)")
    train.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate (default 1e-3)")
    train.add_argument("--weight-decay", type=float, default=1e-5, help="AdamW weight decay (default 1e-5)")
    train.add_argument("--warmup", type=int, default=20, metavar="STEPS", help="linear warm-up steps (default 20)")
    train.add_argument("--class-weights", choices=("none", "inverse-sqrt"), default="none",
                       help="weight each class in the loss by 1/sqrt of its voxel share, which finds small "
                            "structures sooner when training from scratch (default none)")
    train.add_argument("--foreground-prob", type=probability, default=0.9,
                       help="share of crops centred on a structure, each structure equally likely (default 0.9)")
    train.add_argument("--flip-prob", type=probability, default=0.1, help="flip probability per axis (default 0.1)")
    train.add_argument("--rotate-prob", type=probability, default=0.1,
                       help="probability of an axial 90/180/270-degree turn (default 0.1)")
    train.add_argument("--scale-prob", type=probability, default=0.1,
                       help="probability of scaling intensities by up to 10%% (default 0.1)")
    train.add_argument("--shift-prob", type=probability, default=0.5,
                       help="probability of shifting intensities by up to 0.1 of the HU window (default 0.5)")
    train.add_argument("--val-every", type=positive_int, default=100, metavar="STEPS",
                       help="validate every N steps; the best validated weights are kept (default 100)")
    train.add_argument("--checkpoint-dir", metavar="DIR",
                       help="where checkpoints go (default: BUNDLE.checkpoints, removed after success)")
    train.add_argument("--checkpoint-every", type=positive_int, default=50, metavar="STEPS")
    train.add_argument("--keep-checkpoints", action="store_true", help="keep the checkpoints after success")
    train.add_argument("--resume", metavar="CHECKPOINT", help="continue a run from its last.pt checkpoint "
                       "(same data and settings; --steps may be raised)")
    seg.set_defaults(run=run_seg, parser=seg)

    cls = subparsers.add_parser(
        "train-cls", help="train a linear classification probe and write a bundle",
        description="Fit a linear probe on pooled CoralBay encoder features (the vectors 'coralbay "
                    "classify' computes) for scan-level classes, or point-level classes with x,y,z "
                    "columns (mm, LPS). CSV columns: image,label[,x,y,z]; relative image paths are "
                    "relative to the CSV. Phantom mode labels each phantom by liver lesion presence.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = cls.add_argument_group("data")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", metavar="TABLE.csv", help="training examples: image,label[,x,y,z]")
    source.add_argument("--phantoms", metavar="SEEDS", help="phantoms labelled liver lesion / no liver lesion")
    val = data.add_mutually_exclusive_group()
    val.add_argument("--val-csv", metavar="TABLE.csv", help="validation examples")
    val.add_argument("--val-phantoms", metavar="SEEDS", help="validation phantoms")
    val.add_argument("--val-fraction", type=probability, metavar="F", help="fraction of --csv kept for validation")
    data.add_argument("--test-phantoms", metavar="SEEDS", help="after fitting, classify these held-out phantoms "
                      "through the full inference path and record AUROC in the manifest (with --phantoms)")
    data.add_argument("--lesion-points", action="store_true",
                      help="phantom mode per point: the region around each phantom's first liver lesion "
                           "(liver lesion) and the same region of the phantom generated without lesions "
                           "(no liver lesion), instead of whole scans")
    data.add_argument("--classes", metavar="A,B,...", help="class names in output order (default: sorted)")
    _add_common(cls)
    fit = cls.add_argument_group("probe")
    fit.add_argument("--pooling", choices=("multiscale", "head"), default="multiscale",
                     help="pool five feature maps (24F values, default) or the last one (16F)")
    fit.add_argument("--weight-decay", type=weight_decay_choice, default="auto", metavar="L2",
                     help="L2 penalty of the probe, or auto (default): the best of 0.001, 0.01, 0.1 and 1 "
                          "by validation AUROC (0.001 without validation examples)")
    cls.set_defaults(run=run_cls, parser=cls)


def reproduce_command(args: argparse.Namespace) -> str:
    """The full command line (every option that shapes the result, defaults included)."""
    words = ["coralbay", args.command]
    for action in args.parser._actions:
        if not action.option_strings or action.dest in NOT_REPRODUCED:
            continue
        value = getattr(args, action.dest, None)
        flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        if value is None or value is False:
            continue
        if value is True:
            words.append(flag)
            continue
        if isinstance(value, (list, tuple)):
            text = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        else:
            text = f"{value:g}" if isinstance(value, float) else str(value)
        words += [f"{flag}={text}"] if text.startswith("-") else [flag, text]  # argparse reads -1000 as an option
    return shlex.join(words)


def _prepare_run(args: argparse.Namespace, stages: dict):
    """Shared start of both commands: output check, reporter, device, starting weights, fields."""
    import torch

    from coralbay.device import select_device
    from coralbay.training.output import bundle_name, check_output_folder
    from coralbay.training.start import starting_point

    output = check_output_folder(args.output)
    if args.test_phantoms and not args.phantoms:
        from coralbay.errors import UsageError
        raise UsageError("--test-phantoms measures phantom structures and needs --phantoms training.")
    reporter = make_reporter(args, stages)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    start = starting_point(args.init_from, args.backbone, args.trust_remote_code, log=reporter.log)
    defaults = start.preprocessing()
    settings = {"name": bundle_name(args.name or output.name),
                "feature_size": start.feature_size(args.feature_size),
                "spacing_mm": args.spacing or defaults["spacing_mm"],
                "window_hu": args.window_hu or defaults["window_hu"],
                "window_size": args.window or defaults["window_size"],
                "overlap": args.overlap if args.overlap is not None else defaults["overlap"],
                "antialias": (args.antialias == "yes") if args.antialias else defaults["antialias"]}
    if settings["window_hu"][1] <= settings["window_hu"][0]:
        from coralbay.errors import UsageError
        raise UsageError("--window-hu needs LO below HI.")
    # The resolved values go into the `reproduce` command, so it does not depend on defaults.
    args.feature_size, args.spacing, args.window_hu = (settings["feature_size"], list(settings["spacing_mm"]),
                                                       list(settings["window_hu"]))
    args.window, args.overlap = list(settings["window_size"]), settings["overlap"]
    args.antialias = "yes" if settings["antialias"] else "no"
    return output, reporter, device, start, settings


def point_region_mm(settings: dict) -> list[float]:
    """The region a point classifier sees: a little less than one window, because the input voxels
    whose centres fall in the region reach up to half a voxel beyond it; a region of exactly one
    window would spill into a second window per axis (8 windows instead of 1)."""
    return [(w - POINT_REGION_MARGIN) * s for w, s in zip(settings["window_size"], settings["spacing_mm"])]


def _preprocessing(settings: dict) -> dict:
    from coralbay.bundle.manifest import DEFAULT_PREPROCESSING

    return {**DEFAULT_PREPROCESSING, "spacing_mm": list(settings["spacing_mm"]),
            "intensity_window_hu": list(settings["window_hu"]), "antialias": bool(settings["antialias"])}


def _texts(args: argparse.Namespace, what: str) -> tuple[str, str]:
    """Description and intended use: the user's, else generated (phantom runs carry the demo notice)."""
    from coralbay.bundle.factory import DEMO_NOTICE

    if args.phantoms:
        description = args.description or f"{what} (seeds {args.phantoms}). {DEMO_NOTICE}"
        return description, args.intended_use or DEMO_USE
    return args.description or f"{what}.", args.intended_use or USER_USE


def run_seg(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    import torch

    from coralbay.bundle.factory import manifest_fields
    from coralbay.io.labels import load_label_table
    from coralbay.model.build import ArchitectureSpec, build_network
    from coralbay.training.augment import AugmentSettings
    from coralbay.training.data import load_folder_cases, parse_seeds, phantom_cases, split_validation
    from coralbay.training.evaluate import in_memory_bundle, segmentation_on_phantoms
    from coralbay.training.output import write_trained_bundle
    from coralbay.training.segmentation import (SegmentationSettings, load_checkpoint_state,
                                                train_segmentation)

    output, reporter, device, start, settings = _prepare_run(args, SEG_STAGES)
    preprocessing = _preprocessing(settings)
    data_progress = reporter.stage_callback("data")
    source_table = load_label_table(args.labels) if args.labels else None
    if args.data:
        cases, plan = load_folder_cases(args.data, preprocessing, source_table, data_progress, args.merge)
    else:
        cases, plan = phantom_cases(parse_seeds(args.phantoms), preprocessing, data_progress, args.merge)
    table = plan.table
    if args.val_data:
        val_cases, _ = load_folder_cases(args.val_data, preprocessing, source_table, merge=args.merge)
    elif args.val_phantoms:
        val_cases, _ = phantom_cases(parse_seeds(args.val_phantoms), preprocessing, merge=args.merge)
    else:
        fraction = args.val_fraction if args.val_fraction is not None else (0.2 if len(cases) >= 5 else 0.0)
        cases, val_cases = split_validation(cases, fraction, args.seed)
    reporter.log(f"{len(cases)} training and {len(val_cases)} validation cases; {len(table)} structures: "
                 f"{', '.join(lab.name for lab in table)}.")

    source = f"{len(cases)} synthetic phantoms" if args.phantoms else f"{len(cases)} cases of {Path(args.data).name}"
    description, intended_use = _texts(
        args, f"Segmentation of {len(table)} structures by a CoralBay encoder (feature size "
              f"{settings['feature_size']}) with a Swin-UNETR decoder, trained with coralbay train-seg on {source}")
    fields = manifest_fields(settings["name"], "segmentation", feature_size=settings["feature_size"], labels=table,
                             spacing_mm=settings["spacing_mm"], window_hu=settings["window_hu"],
                             window_size=settings["window_size"], overlap=settings["overlap"],
                             title=args.title, description=description, reproduce=reproduce_command(args))
    fields["intended_use"] = intended_use
    fields["preprocessing"]["antialias"] = bool(settings["antialias"])  # what training saw, stated
    spec = ArchitectureSpec.from_manifest("segmentation", fields["architecture"], len(table) + 1)
    torch.manual_seed(args.seed)
    network = build_network(spec)
    for note in start.apply(network):
        reporter.log(note)

    mode = args.encoder if args.encoder != "auto" else ("frozen" if args.backbone else "finetune")
    augment = AugmentSettings(window=tuple(settings["window_size"]), foreground_prob=args.foreground_prob,
                              flip_prob=args.flip_prob, rotate_prob=args.rotate_prob,
                              scale_prob=args.scale_prob, shift_prob=args.shift_prob)
    train_settings = SegmentationSettings(
        augment=augment, steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=min(args.warmup, args.steps), encoder_mode=mode, feature_cache=max(0, args.feature_cache),
        class_weights=args.class_weights,
        val_every=args.val_every, val_overlap=settings["overlap"], checkpoint_every=args.checkpoint_every,
        seed=args.seed)
    checkpoints = Path(args.checkpoint_dir) if args.checkpoint_dir else output.with_name(output.name + ".checkpoints")
    resume = load_checkpoint_state(args.resume) if args.resume else None
    what = {"finetune": "encoder and decoder", "convs": "the encoder's convolutional blocks and the decoder "
            "(Swin transformer frozen)", "frozen": "the decoder (encoder frozen)"}[mode]
    reporter.log(f"Training {what} for "
                 f"{args.steps} steps of {args.batch_size} crops of {settings['window_size']} voxels; "
                 f"checkpoints in {checkpoints}.")
    result = train_segmentation(network, cases, val_cases, table, train_settings, device,
                                checkpoint_dir=checkpoints, resume=resume,
                                data_key={"source": args.data or args.phantoms, "merge": args.merge,
                                          "preprocessing": preprocessing},
                                progress=reporter.stage_callback("train"), log=reporter.log)
    losses = [h["loss"] for h in result.history]
    metrics: dict = {"training": {
        "steps": result.steps_done, "chosen_step": result.chosen_step, "train_cases": len(cases),
        "encoder": mode,
        "loss_first_20_steps": round(sum(losses[:20]) / max(1, len(losses[:20])), 4),
        "loss_last_20_steps": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4)}}
    if result.validation:
        metrics["validation"] = {**result.validation, "evaluated_on": "the model grid, by the training loop"}
    if args.test_phantoms:
        metrics["held_out"] = segmentation_on_phantoms(in_memory_bundle(fields, network), parse_seeds(args.test_phantoms),
                                                       device, reporter.stage_callback("test"))
        reporter.log(f"Held-out phantoms: mean Dice {metrics['held_out']['mean_dice']:.3f} "
                     f"({', '.join(f'{k} {v:.2f}' for k, v in metrics['held_out']['dice'].items() if v is not None)}).")
    fields["metrics"] = metrics
    reporter.progress("write", 0.0, "writing the bundle")
    write_trained_bundle(output, fields, network)
    if not args.keep_checkpoints and not args.checkpoint_dir:
        shutil.rmtree(checkpoints, ignore_errors=True)
    reporter.progress("write", 1.0, "done")
    reporter.result(outputs={"bundle": str(output)}, metrics=metrics)
    if args.progress != "jsonl":
        summary = metrics.get("held_out") or metrics.get("validation")
        score = f"; mean Dice {summary['mean_dice']:.3f}" if summary and summary.get("mean_dice") is not None else ""
        print(f"Wrote the bundle {output}{score}")
    return 0


def run_cls(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import torch

    from coralbay.bundle.factory import manifest_fields
    from coralbay.bundle.manifest import Manifest
    from coralbay.errors import InputError, UsageError
    from coralbay.inference.fast_swin import enable_fast_swin
    from coralbay.model.build import ArchitectureSpec, build_network
    from coralbay.training.classification import embed_items, evaluate_probe, fit_linear_probe
    from coralbay.training.data import (LESION_CLASSES, parse_seeds, phantom_classification_items,
                                        read_classification_csv, split_validation)
    from coralbay.training.evaluate import classification_on_phantoms, in_memory_bundle
    from coralbay.training.output import write_trained_bundle

    output, reporter, device, start, settings = _prepare_run(args, CLS_STAGES)
    if args.lesion_points and not args.phantoms:
        raise UsageError("--lesion-points applies to --phantoms.")
    if args.csv:
        items = read_classification_csv(args.csv)
        found = sorted({item.label for item in items})
        classes = [c.strip() for c in args.classes.split(",")] if args.classes else found
        missing = [c for c in found if c not in classes]
        if missing:
            raise InputError(f"The CSV uses class(es) {', '.join(missing)} that --classes does not list.")
    else:
        if args.classes:
            raise UsageError("--classes applies to --csv; phantom mode has the classes "
                             f"{', '.join(LESION_CLASSES)}.")
        items, classes = phantom_classification_items(parse_seeds(args.phantoms), args.lesion_points), list(LESION_CLASSES)
    if len(classes) < 2:
        raise InputError("A classifier needs at least two classes.")
    if args.val_csv:
        val_items = read_classification_csv(args.val_csv)
    elif args.val_phantoms:
        val_items = phantom_classification_items(parse_seeds(args.val_phantoms), args.lesion_points)
    else:
        items, val_items = split_validation(items, args.val_fraction or 0.0, args.seed)
    unknown = sorted({i.label for i in val_items if i.label is not None and i.label not in classes})
    if unknown:
        raise InputError(f"The validation examples use class(es) {', '.join(unknown)} not in training.")
    if not (args.init_from or args.backbone):
        reporter.log("No --init-from or --backbone: the probe is fitted on features of a randomly "
                     "initialised encoder, which carry little information.", level="warning")

    if args.lesion_points:
        region = " x ".join(f"{r:g}" for r in point_region_mm(settings))
        source = (f"{len(items)} synthetic phantoms, each the {region} mm region around its first liver "
                  "lesion and the same region of the phantom generated without lesions")
    elif args.phantoms:
        source = f"{len(items)} synthetic phantoms (whole scans)"
    else:
        source = f"{len(items)} examples of {Path(args.csv).name}"
    description, intended_use = _texts(
        args, f"Linear probe on pooled CoralBay encoder features (feature size {settings['feature_size']}) "
              f"for {', '.join(classes)}, trained with coralbay train-cls on {source}")
    fields = manifest_fields(settings["name"], "classification", feature_size=settings["feature_size"],
                             classes=classes, spacing_mm=settings["spacing_mm"], window_hu=settings["window_hu"],
                             window_size=settings["window_size"], overlap=settings["overlap"], pooling=args.pooling,
                             title=args.title, description=description, reproduce=reproduce_command(args))
    fields["intended_use"] = intended_use
    fields["preprocessing"]["antialias"] = bool(settings["antialias"])  # what training saw, stated
    fields["inference"]["point_region_mm"] = point_region_mm(settings)
    spec = ArchitectureSpec.from_manifest("classification", fields["architecture"], len(classes))
    torch.manual_seed(args.seed)
    network = build_network(spec)
    for note in start.apply(network):
        reporter.log(note)
    network.to(device).eval()
    enable_fast_swin(network)  # as classify_image runs it
    manifest = Manifest(Path("."), {**fields, "weights": []})

    train = embed_items(items, manifest, network.embed, device, reporter.stage_callback("features"))
    missing = sorted({label for label in train.labels if label not in classes})
    if missing:
        raise InputError(f"Training examples use class(es) {', '.join(missing)} that --classes does not list.")
    reporter.progress("fit", 0.0, "fitting the linear probe")
    targets = np.array([classes.index(label) for label in train.labels])
    val = embed_items(val_items, manifest, network.embed, device) if val_items else None
    candidates = [args.weight_decay] if args.weight_decay != "auto" else (PROBE_WEIGHT_DECAYS if val else [1e-3])
    fits = []
    for decay in candidates:
        head = fit_linear_probe(train.features, targets, len(classes), weight_decay=decay)
        score = evaluate_probe(head, val, classes) if val else None
        fits.append((decay, head, score))
    # The best validation AUROC (then accuracy); on ties the stronger penalty.
    decay, head, _ = max(fits, key=lambda f: ((f[2]["auroc"] or 0.0, f[2]["accuracy"]) if f[2] else (0, 0), f[0]))
    network.head.load_state_dict(head.state_dict())
    network.head.to(device)
    metrics: dict = {"training": {**evaluate_probe(head, train, classes), "weight_decay": decay}}
    if val:
        metrics["validation"] = {**evaluate_probe(head, val, classes),
                                 "auroc_by_weight_decay": {f"{d:g}": score["auroc"] for d, _, score in fits}}
    reporter.progress("fit", 1.0, "")
    if args.test_phantoms:
        metrics["held_out"] = classification_on_phantoms(in_memory_bundle(fields, network), parse_seeds(args.test_phantoms),
                                                         device, args.lesion_points, reporter.stage_callback("test"))
        reporter.log(f"Held-out phantoms: AUROC {metrics['held_out']['auroc']}, accuracy {metrics['held_out']['accuracy']}.")
    fields["metrics"] = metrics
    reporter.progress("write", 0.0, "writing the bundle")
    write_trained_bundle(output, fields, network)
    reporter.progress("write", 1.0, "done")
    reporter.result(outputs={"bundle": str(output)}, metrics=metrics)
    if args.progress != "jsonl":
        summary = metrics.get("held_out") or metrics.get("validation") or metrics["training"]
        print(f"Wrote the bundle {output}; AUROC {summary.get('auroc')}, accuracy {summary.get('accuracy')}")
    return 0
