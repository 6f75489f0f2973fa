"""`coralbay demo --output DIR`: the README's main job, offline, on the bundled demo models.

Generates a CT phantom the demo models never saw in training, segments it with
`demo-phantom-seg` and classifies it with `demo-phantom-cls` through the engine functions that
`coralbay segment` and `coralbay classify` run (reading the CT back from the file it wrote, as a
user's scan would be read), and compares the label map with the phantom's exact truth.
"""

from __future__ import annotations

import argparse

# A held-out phantom: the demo bundles were trained on seeds 0-39 and validated on 5000-5002.
DEMO_SEED = 20000
SEG_MODEL = "demo-phantom-seg"
CLS_MODEL = "demo-phantom-cls"
STAGES = {"phantom": 0.15, "load": 0.05, "preprocess": 0.05, "inference": 0.55, "restore": 0.1, "classify": 0.1}


def register(subparsers: argparse._SubParsersAction) -> None:
    from coralbay.cli import add_progress_option
    from coralbay.device import DEVICE_CHOICES

    p = subparsers.add_parser(
        "demo", help="generate a CT phantom, segment and classify it with the demo models, score it",
        description="Run the whole pipeline offline on the bundled demonstration models: write "
                    "DIR/phantom_ct.nii.gz and its exact truth DIR/phantom_truth.nii.gz, the predicted "
                    "DIR/labels.nii.gz (+ labels.labels.json), DIR/classification.json and "
                    "DIR/report.json with Dice per structure against the truth. The demo models are "
                    "trained on synthetic phantoms and are not for any clinical or research conclusion.")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="folder for the results (created if missing)")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help=f"phantom seed (default {DEMO_SEED}, never used in training)")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="compute device (default auto)")
    add_progress_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    import SimpleITK as sitk

    from coralbay.atomic import write_text_atomic
    from coralbay.bundle.factory import DEMO_NOTICE
    from coralbay.bundle.loader import load_bundle
    from coralbay.cli import make_reporter
    from coralbay.commands._common import read_input
    from coralbay.device import describe, select_device
    from coralbay.errors import InputError
    from coralbay.inference.classify import classify_image
    from coralbay.inference.segment import segment_image
    from coralbay.labels import label_table_path_for
    from coralbay.outputs import write_label_map
    from coralbay.phantom import generate_phantom, write_phantom
    from coralbay.training.metrics import dice_per_structure, mean_dice

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise InputError(f"The output {out} is a file; give a folder.")
    if not out.parent.is_dir():
        raise InputError(f"The folder {out.parent} does not exist.")
    out.mkdir(exist_ok=True)
    files = {"ct": out / "phantom_ct.nii.gz", "truth": out / "phantom_truth.nii.gz",
             "labels": out / "labels.nii.gz", "classification": out / "classification.json",
             "report": out / "report.json"}
    files["label_table"] = label_table_path_for(files["labels"])
    reporter = make_reporter(args, STAGES)
    device = select_device(args.device)
    started = time.perf_counter()

    reporter.progress("phantom", 0.0, f"generating phantom {args.seed}")
    phantom = generate_phantom(args.seed)
    write_phantom(phantom, files["ct"], files["truth"])
    reporter.progress("phantom", 1.0, "written")
    image = read_input(str(files["ct"]), reporter)

    reporter.progress("load", 0.0, "loading the demo models")
    seg_bundle = load_bundle(SEG_MODEL, log=reporter.log)
    cls_bundle = load_bundle(CLS_MODEL, log=reporter.log)
    reporter.progress("load", 1.0, f"on {describe(device)}")
    segmentation = segment_image(image, seg_bundle, device, progress=reporter.progress)
    write_label_map(segmentation.labels, segmentation.label_table, files["labels"])

    classification = classify_image(image, cls_bundle, device,
                                     progress=lambda s, f, m="": reporter.progress("classify", f if s == "inference" else 0.0, m))
    truth_class = cls_bundle.manifest.classes[-1] if phantom.has_lesion else cls_bundle.manifest.classes[0]
    classification.update(input=str(files["ct"]), truth=truth_class, correct=classification["prediction"] == truth_class)
    write_text_atomic(files["classification"], json.dumps(classification, indent=2) + "\n")

    dice = dice_per_structure(sitk.GetArrayViewFromImage(segmentation.labels),
                              sitk.GetArrayViewFromImage(phantom.labels), seg_bundle.manifest.labels)
    mean = mean_dice(dice)
    report = {
        "notice": DEMO_NOTICE,
        "phantom": {"seed": args.seed, "size": list(phantom.image.GetSize()),
                    "spacing_mm": [round(s, 4) for s in phantom.image.GetSpacing()],
                    "has_liver_lesion": phantom.has_lesion},
        "segmentation": {"model": seg_bundle.manifest.name, "dice": {k: (round(v, 4) if v is not None else None)
                                                                     for k, v in dice.items()},
                         "mean_dice": round(mean, 4) if mean is not None else None,
                         "structures_absent_from_truth_and_prediction": [k for k, v in dice.items() if v is None],
                         "stats": segmentation.stats},
        "classification": {"model": cls_bundle.manifest.name, "prediction": classification["prediction"],
                           "probabilities": classification["probabilities"], "truth": truth_class,
                           "correct": classification["correct"]},
        "device": device.type, "seconds": round(time.perf_counter() - started, 1),
        "files": {k: str(v) for k, v in files.items()},
    }
    write_text_atomic(files["report"], json.dumps(report, indent=2) + "\n")
    reporter.result(outputs=report["files"], mean_dice=report["segmentation"]["mean_dice"],
                    prediction=classification["prediction"])
    if args.progress != "jsonl":
        scores = ", ".join(f"{k} {v:.3f}" for k, v in dice.items() if v is not None)
        print(f"Phantom {args.seed}: mean Dice {mean:.3f} ({scores}).")
        print(f"Classification: {classification['prediction']} (truth: {truth_class}).")
        print(f"{DEMO_NOTICE}")
        print("Files:")
        for key in ("ct", "truth", "labels", "label_table", "classification", "report"):
            print(f"  {files[key]}")
    return 0
