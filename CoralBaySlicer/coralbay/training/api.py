"""The training API: `train_segmentation_bundle(config)` and `train_classification_bundle(config)`
read data, train a head on the CoralBay encoder and write a complete bundle (manifest with its
metrics, README, weights) atomically at the very end; an interrupted or failed run leaves no
bundle, only its checkpoints. `coralbay train-seg` / `train-cls` are thin wrappers around them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from coralbay.bundle.factory import DEMO_NOTICE, manifest_fields
from coralbay.bundle.manifest import DEFAULT_PREPROCESSING, Manifest
from coralbay.device import select_device
from coralbay.errors import InputError, UsageError
from coralbay.inference.fast_swin import enable_fast_swin
from coralbay.io.labels import load_label_table
from coralbay.model.build import ArchitectureSpec, build_network
from coralbay.progress import Reporter
from coralbay.training.augment import AugmentSettings
from coralbay.training.classification import embed_items, evaluate_probe, fit_linear_probe
from coralbay.training.config import (BundleTraining, ClassificationTraining, ModelSettings, SegmentationTraining,
                                      TrainingResult)
from coralbay.training.data import (LESION_CLASSES, load_example_cases, load_folder_cases, parse_seeds, phantom_cases,
                                    phantom_classification_items, read_classification_csv, split_validation)
from coralbay.training.evaluate import classification_on_phantoms, in_memory_bundle, segmentation_on_phantoms
from coralbay.training.output import bundle_name, check_output_folder, write_trained_bundle
from coralbay.training.segmentation import SegmentationSettings, load_checkpoint_state, train_segmentation
from coralbay.training.start import StartingPoint, starting_point

SEG_STAGES = {"data": 0.08, "train": 0.8, "test": 0.1, "write": 0.02}
CLS_STAGES = {"data": 0.02, "features": 0.7, "fit": 0.03, "test": 0.23, "write": 0.02}
PROBE_WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1, 1.0)
POINT_REGION_MARGIN = 8  # model-grid voxels per axis left for the input's voxel edges

DEMO_USE = ("Demonstration only: this model was trained on synthetic CT phantoms made by `coralbay phantom` "
            "so that the project runs end to end without network access. It is not for any clinical or "
            "research conclusion; for real work use the CoralBay weights (see the project README).")
USER_USE = "Research use on scans like its training data; not validated for clinical use."


@dataclass
class _Run:
    """What both trainings resolve before they differ."""

    output: Path
    reporter: Reporter
    device: torch.device
    start: StartingPoint
    settings: ModelSettings


def _start_run(config: BundleTraining, reporter: Reporter | None, stages: dict) -> _Run:
    """Output check, device, starting weights and the resolved model settings."""
    output = check_output_folder(config.output)
    if config.test_phantoms and not config.phantoms:
        raise UsageError("--test-phantoms measures phantom structures and needs --phantoms training.")
    reporter = reporter or Reporter("quiet", stages=stages)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = select_device(config.device)
    start = starting_point(config.init_from, config.backbone, config.trust_remote_code, log=reporter.log,
                           parts=config.init_parts)
    defaults = start.preprocessing()
    settings = ModelSettings(
        name=bundle_name(config.name or output.name),
        feature_size=start.feature_size(config.feature_size),
        spacing_mm=tuple(config.spacing_mm or defaults["spacing_mm"]),  # type: ignore[arg-type]
        window_hu=tuple(config.window_hu or defaults["window_hu"]),  # type: ignore[arg-type]
        window_size=tuple(config.window_size or defaults["window_size"]),  # type: ignore[arg-type]
        overlap=config.overlap if config.overlap is not None else defaults["overlap"],
        antialias=config.antialias if config.antialias is not None else defaults["antialias"])
    if settings.window_hu[1] <= settings.window_hu[0]:
        raise UsageError("--window-hu needs LO below HI.")
    return _Run(output, reporter, device, start, settings)


def point_region_mm(settings: ModelSettings) -> list[float]:
    """The region a point classifier sees: a little less than one window, because the input voxels
    whose centres fall in the region reach up to half a voxel beyond it; a region of exactly one
    window would spill into a second window per axis (8 windows instead of 1)."""
    return [(w - POINT_REGION_MARGIN) * s for w, s in zip(settings.window_size, settings.spacing_mm)]


def _preprocessing(settings: ModelSettings) -> dict:
    return {**DEFAULT_PREPROCESSING, "spacing_mm": list(settings.spacing_mm),
            "intensity_window_hu": list(settings.window_hu), "antialias": bool(settings.antialias)}


def _texts(config: BundleTraining, what: str) -> tuple[str, str]:
    """Description and intended use: the user's, else generated (phantom runs carry the demo notice)."""
    if config.phantoms:
        description = config.description or f"{what} (seeds {config.phantoms}). {DEMO_NOTICE}"
        return description, config.intended_use or DEMO_USE
    return config.description or f"{what}.", config.intended_use or USER_USE


def _fields(config: BundleTraining, run: _Run, task: str, what: str, **head) -> dict:
    """The manifest fields of the bundle to write (metrics are added at the end)."""
    s = run.settings
    description, intended_use = _texts(config, what)
    fields = manifest_fields(s.name, task, feature_size=s.feature_size, spacing_mm=s.spacing_mm,
                             window_hu=s.window_hu, window_size=s.window_size, overlap=s.overlap,
                             title=config.title, description=description,
                             reproduce=config.reproduce(s) if config.reproduce else None, **head)
    fields["intended_use"] = intended_use
    fields["preprocessing"]["antialias"] = bool(s.antialias)  # what training saw, stated
    return fields


def _network(fields: dict, task: str, outputs: int, run: _Run, seed: int) -> torch.nn.Module:
    spec = ArchitectureSpec.from_manifest(task, fields["architecture"], outputs)
    torch.manual_seed(seed)
    network = build_network(spec)
    for note in run.start.apply(network):
        run.reporter.log(note)
    return network


def _finish(run: _Run, fields: dict, network: torch.nn.Module, metrics: dict) -> TrainingResult:
    fields["metrics"] = metrics
    run.reporter.progress("write", 0.0, "writing the bundle")
    write_trained_bundle(run.output, fields, network)
    run.reporter.progress("write", 1.0, "done")
    return TrainingResult(run.output, metrics)


def train_segmentation_bundle(config: SegmentationTraining, reporter: Reporter | None = None) -> TrainingResult:
    """Train a Swin-UNETR decoder (encoder frozen, partly or fully trained) and write its bundle."""
    run = _start_run(config, reporter, SEG_STAGES)
    reporter, settings = run.reporter, run.settings
    preprocessing = _preprocessing(settings)
    source_table = load_label_table(config.labels) if config.labels else None
    if config.examples:
        known = source_table or (run.start.init.manifest.labels if run.start.init else None)
        cases, plan = load_example_cases(config.examples, preprocessing, known, reporter.stage_callback("data"))
    elif config.data:
        cases, plan = load_folder_cases(config.data, preprocessing, source_table, reporter.stage_callback("data"),
                                        config.merge)
    else:
        cases, plan = phantom_cases(parse_seeds(config.phantoms), preprocessing, reporter.stage_callback("data"),
                                    config.merge)
    table = plan.table
    if config.val_data:
        val_cases, _ = load_folder_cases(config.val_data, preprocessing, source_table, merge=config.merge)
    elif config.val_phantoms:
        val_cases, _ = phantom_cases(parse_seeds(config.val_phantoms), preprocessing, merge=config.merge)
    else:
        fraction = config.val_fraction if config.val_fraction is not None else (0.2 if len(cases) >= 5 else 0.0)
        cases, val_cases = split_validation(cases, fraction, config.seed)
    reporter.log(f"{len(cases)} training and {len(val_cases)} validation cases; {len(table)} structures: "
                 f"{', '.join(lab.name for lab in table)}.")
    warnings = scarce_structures(cases, table, settings.spacing_mm)
    for warning in warnings:
        reporter.log(warning, level="warning")

    source = (f"{len(cases)} synthetic phantoms" if config.phantoms
              else f"the structures a user accepted on {len(cases)} scans" if config.examples
              else f"{len(cases)} cases of {Path(config.data).name}")
    fields = _fields(config, run, "segmentation",
                     f"Segmentation of {len(table)} structures by a CoralBay encoder (feature size "
                     f"{settings.feature_size}) with a Swin-UNETR decoder, trained with coralbay train-seg on {source}",
                     labels=table)
    network = _network(fields, "segmentation", len(table) + 1, run, config.seed)

    mode = config.encoder if config.encoder != "auto" else ("frozen" if config.backbone else "finetune")
    augment = AugmentSettings(window=settings.window_size, foreground_prob=config.foreground_prob,
                              flip_prob=config.flip_prob, rotate_prob=config.rotate_prob,
                              scale_prob=config.scale_prob, shift_prob=config.shift_prob)
    train_settings = SegmentationSettings(
        augment=augment, steps=config.steps, batch_size=config.batch_size, lr=config.lr,
        weight_decay=config.weight_decay, warmup_steps=min(config.warmup, config.steps), encoder_mode=mode,
        feature_cache=max(0, config.feature_cache), class_weights=config.class_weights,
        val_every=config.val_every, val_overlap=settings.overlap, checkpoint_every=config.checkpoint_every,
        seed=config.seed, balanced_pool=config.balanced_pool, holdout_crops=config.holdout_crops,
        check_every=config.check_every, patience=config.patience,
        time_budget_s=config.minutes * 60 if config.minutes else None,
        frozen_modules=tuple(config.frozen_modules), probe_init=config.probe_init)
    checkpoints = (Path(config.checkpoint_dir) if config.checkpoint_dir
                   else run.output.with_name(run.output.name + ".checkpoints"))
    resume = load_checkpoint_state(config.resume) if config.resume else None
    what = {"finetune": "encoder and decoder", "convs": "the encoder's convolutional blocks and the decoder "
            "(Swin transformer frozen)", "frozen": "the decoder (encoder frozen)"}[mode]
    reporter.log(f"Training {what} for {config.steps} steps of {config.batch_size} crops of "
                 f"{list(settings.window_size)} voxels; checkpoints in {checkpoints}.")
    result = train_segmentation(network, cases, val_cases, table, train_settings, run.device,
                                checkpoint_dir=checkpoints, resume=resume,
                                data_key={"source": config.examples or config.data or config.phantoms,
                                          "merge": config.merge,
                                          "preprocessing": preprocessing},
                                progress=reporter.stage_callback("train"), log=reporter.log,
                                crop_store=config.crop_store)
    losses, reported = [h["loss"] for h in result.history], len(warnings)
    first, last = (round(sum(part) / max(1, len(part)), 4) for part in (losses[:20], losses[-20:]))
    if len(losses) >= 40 and last > LOSS_FALL_RATIO * first:
        warnings.append(f"The training loss hardly fell ({first:.3f} over the first 20 steps, {last:.3f} over the "
                        "last 20): the model is unlikely to be useful; check the examples.")
    for name, dice in (result.holdout or {}).items():
        if dice < USEFUL_DICE:
            warnings.append(f"{name} reached Dice {dice:.2f} on held-out crops of the examples: the model is "
                            f"unlikely to find it; accept {name} on more scans.")
    for warning in warnings[reported:]:
        reporter.log(warning, level="warning")
    metrics: dict = {"training": {
        "steps": result.steps_done, "chosen_step": result.chosen_step, "train_cases": len(cases),
        "encoder": mode, "stopped": result.stopped, "seconds": round(result.seconds, 1),
        "loss_first_20_steps": first, "loss_last_20_steps": last}}
    if result.holdout is not None:
        metrics["training"]["holdout_dice"] = result.holdout
    if config.examples:  # which examples the model saw (an incremental teach adds to them)
        names = [lab.name for lab in table]
        metrics["training"]["examples"] = [
            {"scan_id": c.name, "structures": [names[int(v) - 1] for v in np.unique(c.target) if v]}
            for c in cases + val_cases]
    if warnings:
        metrics["training"]["warnings"] = warnings
    if result.validation:
        metrics["validation"] = {**result.validation, "evaluated_on": "the model grid, by the training loop"}
    if config.test_phantoms:
        metrics["held_out"] = segmentation_on_phantoms(in_memory_bundle(fields, network),
                                                       parse_seeds(config.test_phantoms), run.device,
                                                       reporter.stage_callback("test"))
        reporter.log(f"Held-out phantoms: mean Dice {metrics['held_out']['mean_dice']:.3f} "
                     f"({', '.join(f'{k} {v:.2f}' for k, v in metrics['held_out']['dice'].items() if v is not None)}).")
    done = _finish(run, fields, network, metrics)
    if not config.keep_checkpoints and not config.checkpoint_dir:
        shutil.rmtree(checkpoints, ignore_errors=True)
    return done


MIN_STRUCTURE_VOXELS = 100   # model-grid voxels of a structure over all examples, below which few crops differ
LOSS_FALL_RATIO = 0.9        # the last 20 steps' loss above this share of the first 20's: "not learning"
USEFUL_DICE = 0.5            # held-out Dice below which a taught structure is flagged


def scarce_structures(cases: list, table, spacing_mm) -> list[str]:
    """Warnings for structures with too few voxels on the model grid to learn from."""
    counts = np.zeros(len(table) + 1, dtype=np.int64)
    for case in cases:
        counts += np.bincount(case.target.ravel(), minlength=len(table) + 1)[: len(table) + 1]
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    return [f"{lab.name} covers only {int(n)} voxels of the model grid ({n * voxel_ml:.1f} ml) in the examples: "
            f"the model is unlikely to learn it; accept it on more scans."
            for lab, n in zip(table, counts[1:]) if n < MIN_STRUCTURE_VOXELS]


def _classification_examples(config: ClassificationTraining) -> tuple[list, list, list[str]]:
    """Training and validation examples and the class names, checked against each other."""
    if config.lesion_points and not config.phantoms:
        raise UsageError("--lesion-points applies to --phantoms.")
    if config.csv:
        items = read_classification_csv(config.csv)
        found = sorted({item.label for item in items})
        classes = [c.strip() for c in config.classes] if config.classes else found
        missing = [c for c in found if c not in classes]
        if missing:
            raise InputError(f"The CSV uses class(es) {', '.join(missing)} that --classes does not list.")
    else:
        if config.classes:
            raise UsageError("--classes applies to --csv; phantom mode has the classes "
                             f"{', '.join(LESION_CLASSES)}.")
        items, classes = (phantom_classification_items(parse_seeds(config.phantoms), config.lesion_points),
                          list(LESION_CLASSES))
    if len(classes) < 2:
        raise InputError("A classifier needs at least two classes.")
    if config.val_csv:
        val_items = read_classification_csv(config.val_csv)
    elif config.val_phantoms:
        val_items = phantom_classification_items(parse_seeds(config.val_phantoms), config.lesion_points)
    else:
        items, val_items = split_validation(items, config.val_fraction or 0.0, config.seed)
    unknown = sorted({i.label for i in val_items if i.label is not None and i.label not in classes})
    if unknown:
        raise InputError(f"The validation examples use class(es) {', '.join(unknown)} not in training.")
    return items, val_items, classes


def train_classification_bundle(config: ClassificationTraining, reporter: Reporter | None = None) -> TrainingResult:
    """Fit a linear probe on pooled encoder features (scan- or point-level) and write its bundle."""
    run = _start_run(config, reporter, CLS_STAGES)
    reporter, settings, device = run.reporter, run.settings, run.device
    items, val_items, classes = _classification_examples(config)
    if not (config.init_from or config.backbone):
        reporter.log("No --init-from or --backbone: the probe is fitted on features of a randomly "
                     "initialised encoder, which carry little information.", level="warning")
    if config.lesion_points:
        region = " x ".join(f"{r:g}" for r in point_region_mm(settings))
        source = (f"{len(items)} synthetic phantoms, each the {region} mm region around its first liver "
                  "lesion and the same region of the phantom generated without lesions")
    elif config.phantoms:
        source = f"{len(items)} synthetic phantoms (whole scans)"
    else:
        source = f"{len(items)} examples of {Path(config.csv).name}"
    fields = _fields(config, run, "classification",
                     f"Linear probe on pooled CoralBay encoder features (feature size {settings.feature_size}) "
                     f"for {', '.join(classes)}, trained with coralbay train-cls on {source}",
                     classes=classes, pooling=config.pooling)
    fields["inference"]["point_region_mm"] = point_region_mm(settings)
    network = _network(fields, "classification", len(classes), run, config.seed)
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
    candidates = ([config.weight_decay] if config.weight_decay != "auto"
                  else (PROBE_WEIGHT_DECAYS if val else [1e-3]))
    fits = []
    for decay in candidates:
        head = fit_linear_probe(train.features, targets, len(classes), weight_decay=decay)
        fits.append((decay, head, evaluate_probe(head, val, classes) if val else None))
    # The best validation AUROC (then accuracy); on ties the stronger penalty.
    decay, head, _ = max(fits, key=lambda f: ((f[2]["auroc"] or 0.0, f[2]["accuracy"]) if f[2] else (0, 0), f[0]))
    network.head.load_state_dict(head.state_dict())
    network.head.to(device)
    metrics: dict = {"training": {**evaluate_probe(head, train, classes), "weight_decay": decay}}
    if val:
        metrics["validation"] = {**evaluate_probe(head, val, classes),
                                 "auroc_by_weight_decay": {f"{d:g}": score["auroc"] for d, _, score in fits}}
    reporter.progress("fit", 1.0, "")
    if config.test_phantoms:
        metrics["held_out"] = classification_on_phantoms(in_memory_bundle(fields, network),
                                                         parse_seeds(config.test_phantoms), device,
                                                         config.lesion_points, reporter.stage_callback("test"))
        reporter.log(f"Held-out phantoms: AUROC {metrics['held_out']['auroc']}, "
                     f"accuracy {metrics['held_out']['accuracy']}.")
    return _finish(run, fields, network, metrics)
