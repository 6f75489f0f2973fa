"""Run: PYTHONPATH=CoralBaySlicer python benchmarks/diagnostics/restore_vs_truth.py 10000 10001 10002 10003 10004

Which restore is closer to the truth: ours linear, ours nearest, MONAI's bundle recipe (softmax,
Invertd bilinear, argmax), MONAI label-first (argmax, Invertd nearest)?"""
import sys, tempfile
from pathlib import Path
import numpy as np, SimpleITK as sitk, torch
from coralbay.bundle.loader import load_bundle
from coralbay.inference.segment import segment_image
from coralbay.phantom import generate_phantom
from coralbay.review.metrics import dice_per_structure, mean_dice
from coralbay_bench.monai_path import run_monai_path
torch.set_num_threads(1)
b = load_bundle("demo-phantom-seg"); table = b.manifest.labels
tmp = Path(tempfile.mkdtemp())
res = {"linear": [], "nearest": [], "monai-probabilities": [], "monai-labels": []}
for seed in [int(s) for s in sys.argv[1:]]:
    ph = generate_phantom(seed)
    path = tmp / f"p{seed}.nii.gz"; sitk.WriteImage(ph.image, str(path))
    truth = sitk.GetArrayViewFromImage(ph.labels)
    img = sitk.ReadImage(str(path))
    for how in ("linear", "nearest"):
        lab = segment_image(img, b, torch.device("cpu"), restore=how).labels
        res[how].append(dice_per_structure(sitk.GetArrayViewFromImage(lab), truth, table))
    for invert in ("probabilities", "labels"):
        run = run_monai_path(path, b, torch.device("cpu"), overlap=0.5, window_batch=2, precision="fp32",
                             invert=invert)
        res[f"monai-{invert}"].append(dice_per_structure(sitk.GetArrayViewFromImage(run.labels), truth, table))
    print(seed, ph.image.GetSpacing(), {k: round(mean_dice(v[-1]), 4) for k, v in res.items()}, flush=True)
for k, v in res.items():
    print(k, round(float(np.mean([mean_dice(c) for c in v])), 4))
