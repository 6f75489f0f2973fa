"""`coralbay demo --output DIR`: the README's main job, offline, on the bundled demo models.

Generates a CT phantom with liver lesions that the demo models never saw in training, segments it
with `demo-phantom-seg` and classifies two regions of it with `demo-phantom-cls` (around the first
lesion, and around the healthy liver point farthest from any lesion, as `coralbay classify
--point` would), through the engine functions those commands run (reading the CT back from the
file it wrote, as a user's scan is read), and scores both against the phantom's exact truth.
"""

from __future__ import annotations

import argparse

from coralbay.commands._common import add_progress_option, make_reporter, read_input

# A held-out phantom: the demo bundles were trained on seeds 0-39 and validated on 5000-5002.
DEMO_SEED = 20000
SEG_MODEL = "demo-phantom-seg"
CLS_MODEL = "demo-phantom-cls"
STAGES = {"phantom": 0.15, "load": 0.05, "preprocess": 0.05, "inference": 0.55, "restore": 0.1, "classify": 0.1}
HEALTHY_DISTANCE_MM = 50.0  # the healthy point's region must not reach a lesion


def healthy_liver_point(phantom, away_mm: float = HEALTHY_DISTANCE_MM) -> tuple[float, float, float]:
    """The liver voxel deepest inside healthy liver, at least `away_mm` from every lesion centre (LPS mm)."""
    import numpy as np
    import SimpleITK as sitk
    from scipy.ndimage import distance_transform_edt

    step = [max(1, int(round(2.0 / s))) for s in phantom.labels.GetSpacing()]  # about 2 mm is enough
    coarse = phantom.labels[::step[0], ::step[1], ::step[2]]
    liver = sitk.GetArrayViewFromImage(coarse) == phantom.label_table.by_name("liver").value
    depth = distance_transform_edt(liver, sampling=list(coarse.GetSpacing())[::-1])
    for k, j, i in np.argwhere(depth > 0)[np.argsort(-depth[depth > 0], kind="stable")]:
        point = np.asarray(coarse.TransformIndexToPhysicalPoint((int(i), int(j), int(k))))
        if all(np.linalg.norm(point - np.asarray(c)) >= away_mm for c in phantom.lesion_centers_lps):
            return tuple(float(v) for v in point)
    raise RuntimeError("the phantom's liver has no point far enough from its lesions")


def register(subparsers: argparse._SubParsersAction) -> None:
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
    from coralbay.device import describe, select_device
    from coralbay.errors import InputError
    from coralbay.inference.classify import classify_image
    from coralbay.inference.segment import segment_image
    from coralbay.io.labels import label_table_path_for
    from coralbay.io.label_maps import write_label_map
    from coralbay.phantom import generate_phantom, write_phantom
    from coralbay.review.metrics import dice_per_structure, mean_dice

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
    phantom = generate_phantom(args.seed, lesions=True)
    write_phantom(phantom, files["ct"], files["truth"])
    reporter.progress("phantom", 1.0, "written")
    image = read_input(str(files["ct"]), reporter)

    reporter.progress("load", 0.0, "loading the demo models")
    seg_bundle = load_bundle(SEG_MODEL, log=reporter.log)
    cls_bundle = load_bundle(CLS_MODEL, log=reporter.log)
    reporter.progress("load", 1.0, f"on {describe(device)}")
    segmentation = segment_image(image, seg_bundle, device, progress=reporter.progress)
    write_label_map(segmentation.labels, segmentation.label_table, files["labels"])

    positive, negative = cls_bundle.manifest.classes[-1], cls_bundle.manifest.classes[0]
    regions = [("around the first liver lesion", tuple(phantom.lesion_centers_lps[0]), positive)
               ] if phantom.lesion_centers_lps else []  # a seed whose liver fitted no lesion
    regions.append(("around healthy liver, far from every lesion", healthy_liver_point(phantom), negative))
    points = []
    for i, (where, point, truth) in enumerate(regions):
        result = classify_image(image, cls_bundle, device, point_lps=point,
                                progress=lambda s, f, m="", i=i: reporter.progress(
                                    "classify", (i + (f if s == "inference" else 0.0)) / len(regions), m))
        points.append({"where": where, "point_lps": [round(v, 2) for v in point], "truth": truth,
                       "prediction": result["prediction"], "probabilities": result["probabilities"],
                       "correct": result["prediction"] == truth})
    classification = {"model": cls_bundle.manifest.name, "input": str(files["ct"]), "classes": cls_bundle.manifest.classes,
                      "points": points, "notice": DEMO_NOTICE}
    write_text_atomic(files["classification"], json.dumps(classification, indent=2) + "\n")

    dice = dice_per_structure(sitk.GetArrayViewFromImage(segmentation.labels),
                              sitk.GetArrayViewFromImage(phantom.labels), seg_bundle.manifest.labels)
    mean = mean_dice(dice)
    report = {
        "notice": DEMO_NOTICE,
        "phantom": {"seed": args.seed, "size": list(phantom.image.GetSize()),
                    "spacing_mm": [round(s, 4) for s in phantom.image.GetSpacing()],
                    "liver_lesions": len(phantom.lesion_centers_lps)},
        "segmentation": {"model": seg_bundle.manifest.name, "dice": {k: (round(v, 4) if v is not None else None)
                                                                     for k, v in dice.items()},
                         "mean_dice": round(mean, 4) if mean is not None else None,
                         "structures_absent_from_truth_and_prediction": [k for k, v in dice.items() if v is None],
                         "stats": segmentation.stats},
        "classification": {"model": cls_bundle.manifest.name,
                           "points": [{k: p[k] for k in ("where", "point_lps", "truth", "prediction", "correct")}
                                      for p in points]},
        "device": device.type, "seconds": round(time.perf_counter() - started, 1),
        "files": {k: str(v) for k, v in files.items()},
    }
    write_text_atomic(files["report"], json.dumps(report, indent=2) + "\n")
    reporter.result(outputs=report["files"], mean_dice=report["segmentation"]["mean_dice"],
                    predictions=[p["prediction"] for p in points])
    if args.progress != "jsonl":
        scores = ", ".join(f"{k} {v:.3f}" for k, v in dice.items() if v is not None)
        print(f"Phantom {args.seed}: mean Dice {mean:.3f} ({scores}).")
        for p in points:
            print(f"Region {p['where']} at {', '.join(f'{v:.1f}' for v in p['point_lps'])} mm (LPS): "
                  f"{p['prediction']} (truth: {p['truth']}).")
        print(f"{DEMO_NOTICE}")
        print("Files:")
        for key in ("ct", "truth", "labels", "label_table", "classification", "report"):
            print(f"  {files[key]}")
    return 0
