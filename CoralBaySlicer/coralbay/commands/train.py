"""`coralbay train-seg` and `coralbay train-cls`: train task heads on the CoralBay encoder.

Thin: parse the options into a `training.config` dataclass, call `train_segmentation_bundle` /
`train_classification_bundle` (which write the bundle atomically at the very end), report. The
manifest's `reproduce` is the command line with every resolved default spelled out.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from coralbay.commands._common import (EPILOG, add_progress_option, float_list, make_reporter, one_or_three,
                                       overlap_value, positive_float, positive_int, probability)


# Options that do not change the trained weights; they stay out of the manifest's `reproduce`.
NOT_REPRODUCED = {"progress", "checkpoint_dir", "checkpoint_every", "keep_checkpoints", "resume", "device",
                  "threads", "help"}


window_size = one_or_three(int, lambda v: v >= 64 and v % 32 == 0, "the window must be one or three whole numbers",
                           "window sizes must be multiples of 32 and at least 64 (e.g. 64 or 96)")
spacing_mm = one_or_three(float, lambda v: 0.1 <= v <= 20, "the spacing must be one or three numbers (mm)",
                          "the spacing must be one or three numbers from 0.1 to 20 mm")


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


def reproduce_command(args: argparse.Namespace, resolved=None) -> str:
    """The full command line (every option that shapes the result, defaults included).

    `resolved` (a `training.config.ModelSettings`) replaces the model options left to their
    defaults by the values the run used, so the command does not depend on defaults.
    """
    values = dict(vars(args))
    if resolved is not None:
        values.update(feature_size=resolved.feature_size, spacing=list(resolved.spacing_mm),
                      window_hu=list(resolved.window_hu), window=list(resolved.window_size),
                      overlap=resolved.overlap, antialias="yes" if resolved.antialias else "no")
    words = ["coralbay", args.command]
    for action in args.parser._actions:
        if not action.option_strings or action.dest in NOT_REPRODUCED:
            continue
        value = values.get(action.dest)
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


def _common_config(args: argparse.Namespace) -> dict:
    """The options both commands share, as `training.config.BundleTraining` fields."""
    return dict(output=Path(args.output), phantoms=args.phantoms, val_phantoms=args.val_phantoms,
                val_fraction=args.val_fraction, test_phantoms=args.test_phantoms, name=args.name,
                title=args.title, description=args.description, intended_use=args.intended_use,
                backbone=args.backbone, trust_remote_code=args.trust_remote_code, init_from=args.init_from,
                feature_size=args.feature_size, spacing_mm=args.spacing, window_hu=args.window_hu,
                window_size=args.window, overlap=args.overlap,
                antialias=None if args.antialias is None else args.antialias == "yes",
                seed=args.seed, device=args.device, threads=args.threads,
                reproduce=lambda resolved: reproduce_command(args, resolved))


def run_seg(args: argparse.Namespace) -> int:
    from coralbay.training.api import SEG_STAGES, train_segmentation_bundle
    from coralbay.training.config import SegmentationTraining

    config = SegmentationTraining(
        **_common_config(args), data=args.data, val_data=args.val_data, labels=args.labels, merge=args.merge,
        encoder=args.encoder, feature_cache=args.feature_cache, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup, class_weights=args.class_weights,
        foreground_prob=args.foreground_prob, flip_prob=args.flip_prob, rotate_prob=args.rotate_prob,
        scale_prob=args.scale_prob, shift_prob=args.shift_prob, val_every=args.val_every,
        checkpoint_dir=Path(args.checkpoint_dir) if args.checkpoint_dir else None,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        resume=Path(args.resume) if args.resume else None)
    reporter = make_reporter(args, SEG_STAGES)
    result = train_segmentation_bundle(config, reporter)
    reporter.result(outputs={"bundle": str(result.bundle)}, metrics=result.metrics)
    if args.progress != "jsonl":
        summary = result.metrics.get("held_out") or result.metrics.get("validation")
        score = f"; mean Dice {summary['mean_dice']:.3f}" if summary and summary.get("mean_dice") is not None else ""
        print(f"Wrote the bundle {result.bundle}{score}")
    return 0


def run_cls(args: argparse.Namespace) -> int:
    from coralbay.training.api import CLS_STAGES, train_classification_bundle
    from coralbay.training.config import ClassificationTraining

    config = ClassificationTraining(
        **_common_config(args), csv=args.csv, val_csv=args.val_csv, lesion_points=args.lesion_points,
        classes=args.classes.split(",") if args.classes else None, pooling=args.pooling,
        weight_decay=args.weight_decay)
    reporter = make_reporter(args, CLS_STAGES)
    result = train_classification_bundle(config, reporter)
    reporter.result(outputs={"bundle": str(result.bundle)}, metrics=result.metrics)
    if args.progress != "jsonl":
        metrics = result.metrics
        summary = metrics.get("held_out") or metrics.get("validation") or metrics["training"]
        print(f"Wrote the bundle {result.bundle}; AUROC {summary.get('auroc')}, accuracy {summary.get('accuracy')}")
    return 0
