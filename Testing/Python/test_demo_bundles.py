"""The shipped demo bundles and the README's main command (`coralbay demo`).

The held-out test runs the shipped bundle through the real `segment_image` path on 5 phantom
seeds the bundle never saw in training or validation, and compares with each phantom's exact
truth on the phantom's own grid. The phantoms are generated at the bundle's spacing (their
orientation stays random) to keep the test fast; the bundle's manifest also records Dice on
held-out phantoms at their own random, finer spacings.
"""

from __future__ import annotations

import json
import re
import shlex

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from coralbay.bundle.catalog import list_models
from coralbay.bundle.loader import load_bundle
from coralbay.commands.demo import DEMO_SEED
from coralbay.grid.resample import same_grid
from coralbay.inference.classify import classify_image
from coralbay.inference.segment import segment_image
from coralbay.io.label_maps import read_label_map
from coralbay.phantom import generate_phantom
from coralbay.review.metrics import dice_per_structure
from coralbay.training.data import parse_seeds

HELD_OUT = [10000, 10001, 10002, 10003, 10004]
DEMOS = {"demo-phantom-seg": ("segmentation", "train-seg"), "demo-phantom-cls": ("classification", "train-cls")}
CPU = torch.device("cpu")


def _manifest(name: str):
    found = [m for m in list_models() if m.name == name]
    assert found, f"{name} is not in the catalog"
    return found[0]


def _seeds_used(reproduce: str) -> set[int]:
    words = shlex.split(reproduce)
    used: set[int] = set()
    for flag in ("--phantoms", "--val-phantoms"):
        if flag in words:
            used |= set(parse_seeds(words[words.index(flag) + 1]))
    return used


@pytest.mark.parametrize("name", sorted(DEMOS))
def test_demo_bundle_is_small_reproducible_and_says_it_is_a_demo(name):
    manifest = _manifest(name)
    task, command = DEMOS[name]
    data = manifest.data
    assert data["task"] == task
    size = sum(p.stat().st_size for p in manifest.folder.iterdir() if p.is_file())
    assert size < 10 * 1024 * 1024, size
    for text in (data["description"], data["intended_use"]):
        assert "synthetic" in text and "not for any clinical or research conclusion" in text
    assert data["reproduce"].startswith(f"coralbay {command} ")
    assert re.search(rf"--output \S*{name}\b", data["reproduce"])
    readme = (manifest.folder / "README.md").read_text(encoding="utf-8")
    assert data["reproduce"] in readme and "not for any clinical or research conclusion" in readme
    used = _seeds_used(data["reproduce"])
    assert used and not used & (set(HELD_OUT) | {DEMO_SEED}), "held-out seeds were used in training"
    assert set(data["metrics"]["held_out"]["phantom_seeds"]).isdisjoint(used)


def test_demo_segmentation_reaches_dice_085_on_held_out_phantoms():
    bundle = load_bundle("demo-phantom-seg")
    table = bundle.manifest.labels
    spacing = bundle.manifest.preprocessing["spacing_mm"]
    per_case = []
    for seed in HELD_OUT:
        phantom = generate_phantom(seed, spacing=spacing)
        result = segment_image(phantom.image, bundle, CPU)
        assert same_grid(result.labels, phantom.image)
        per_case.append(dice_per_structure(sitk.GetArrayViewFromImage(result.labels),
                                           sitk.GetArrayViewFromImage(phantom.labels), table))
    per_structure = {lab.name: np.mean([c[lab.name] for c in per_case if c[lab.name] is not None])
                     for lab in table if any(c[lab.name] is not None for c in per_case)}
    print("held-out Dice per structure:", {k: round(float(v), 3) for k, v in per_structure.items()})
    mean = float(np.mean(list(per_structure.values())))
    assert mean >= 0.85, per_structure
    for organ in ("liver", "spleen", "kidney_left", "kidney_right", "lung"):
        assert per_structure[organ] >= 0.8, (organ, per_structure[organ])


def test_demo_classifier_reports_held_out_auroc_and_runs():
    manifest = _manifest("demo-phantom-cls")
    held_out = manifest.data["metrics"]["held_out"]
    assert set(held_out["phantom_seeds"]).isdisjoint(_seeds_used(manifest.data["reproduce"]))
    assert 0.0 <= held_out["auroc"] <= 1.0 and held_out["positives"] > 0
    assert held_out["positives"] < held_out["examples"]
    assert f"{held_out['auroc']}" in (manifest.folder / "README.md").read_text(encoding="utf-8")
    # A held-out lesion's region scores higher than the same region of the lesion-free twin.
    bundle = load_bundle("demo-phantom-cls")
    with_lesion = generate_phantom(HELD_OUT[0], lesions=True)
    centre = with_lesion.lesion_centers_lps[0]
    twin = generate_phantom(HELD_OUT[0], lesions=False)
    reports = [classify_image(p.image, bundle, CPU, point_lps=centre) for p in (with_lesion, twin)]
    for report in reports:
        assert set(report["probabilities"]) == {"no liver lesion", "liver lesion"}
        assert sum(report["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert reports[0]["probabilities"]["liver lesion"] > reports[1]["probabilities"]["liver lesion"]


def test_coralbay_demo_writes_the_report(tmp_path, cli):
    out = tmp_path / "demo-output"
    proc = cli("demo", "--output", out, "--progress", "none", timeout=900)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["phantom"]["seed"] == DEMO_SEED and report["phantom"]["liver_lesions"] >= 1
    assert report["segmentation"]["model"] == "demo-phantom-seg"
    assert 0.0 <= report["segmentation"]["mean_dice"] <= 1.0  # the quality target is the held-out test's
    ct = sitk.ReadImage(str(out / "phantom_ct.nii.gz"))
    labels = read_label_map(out / "labels.nii.gz")
    truth = read_label_map(out / "phantom_truth.nii.gz")
    assert same_grid(labels, ct) and same_grid(truth, ct)
    recomputed = dice_per_structure(sitk.GetArrayViewFromImage(labels), sitk.GetArrayViewFromImage(truth),
                                    load_bundle("demo-phantom-seg").manifest.labels)
    assert recomputed["liver"] == pytest.approx(report["segmentation"]["dice"]["liver"], abs=1e-4)
    classification = json.loads((out / "classification.json").read_text())
    points = classification["points"]
    assert [p["truth"] for p in points] == ["liver lesion", "no liver lesion"]
    assert [p["prediction"] for p in points] == [p["prediction"] for p in report["classification"]["points"]]
    lesion_mm, healthy_mm = (np.asarray(p["point_lps"]) for p in points)
    assert np.linalg.norm(lesion_mm - healthy_mm) >= 50
    index = truth.TransformPhysicalPointToIndex(healthy_mm.tolist())
    assert truth[index] == 1  # the healthy point lies in the liver
    assert (out / "labels.labels.json").is_file()
    for name in ("report.json", "labels.nii.gz", "classification.json"):
        assert str(out / name) in proc.stdout


def test_linear_restore_is_closer_to_the_truth_than_nearest_labels():
    """The default restore (probabilities resampled linearly, argmax on the input grid) against the
    MONAI-style one (model-grid argmax copied from the nearest model voxel), on a held-out phantom
    at its own finer grid: the same model output, two ways back to the scan."""
    from coralbay.review.metrics import mean_dice

    bundle = load_bundle("demo-phantom-seg")
    phantom = generate_phantom(HELD_OUT[2])
    truth = sitk.GetArrayViewFromImage(phantom.labels)
    scores, labels = {}, {}
    for method in ("linear", "nearest"):
        result = segment_image(phantom.image, bundle, CPU, restore=method)
        assert same_grid(result.labels, phantom.image)
        labels[method] = sitk.GetArrayFromImage(result.labels)
        scores[method] = mean_dice(dice_per_structure(labels[method], truth, bundle.manifest.labels))
    same = float(np.mean(labels["linear"] == labels["nearest"]))
    assert 0.9 < same < 1.0, same  # they differ only near boundaries
    assert scores["linear"] > scores["nearest"], scores
