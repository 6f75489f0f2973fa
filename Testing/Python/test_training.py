"""Head training: a short run learns and writes a loadable bundle; train-cls on a CSV; bad inputs.

Everything runs the real network at a tiny width (feature size 6, 64^3 windows) on tiny phantoms
at a coarse spacing, so the whole file takes well under two minutes on two loaded CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import run_cli_many
from coralbay.bundle.factory import manifest_fields
from coralbay.bundle.loader import load_bundle
from coralbay.cli import main
from coralbay.errors import UsageError
from coralbay.grid.resample import same_grid
from coralbay.inference.segment import segment_image
from coralbay.io.labels import Label, LabelTable, label_table_path_for
from coralbay.model.build import ArchitectureSpec, build_network
from coralbay.phantom import PHANTOM_LABELS, generate_phantom
from coralbay.review.metrics import dice_per_structure
from coralbay.training.augment import (AugmentSettings, CropSampler, augment, mirror_lookup, pool_crop_structure,
                                      sample_batch)
from coralbay.training.data import Case, find_pairs, parse_seeds, phantom_cases, plan_labels
from coralbay.training.loss import segmentation_loss
from coralbay.training.metrics import auroc
from coralbay.training.output import write_trained_bundle
from coralbay.training.segmentation import (CropStore, SegmentationSettings, build_crop_pool, forward_logits,
                                            load_checkpoint_state, train_segmentation)
from coralbay.training.teach import TeachRequest, teach_training

CPU = torch.device("cpu")
SPACING = 8.0
TINY = dict(spacing=SPACING, size_mm=(240, 200, 160), direction="LPS")  # 30 x 25 x 20 voxels


def _fields(name: str = "tiny-seg") -> dict:
    return manifest_fields(name, "segmentation", feature_size=6, labels=PHANTOM_LABELS,
                           spacing_mm=(SPACING,) * 3, window_size=(64, 64, 64), overlap=0.5)


def test_short_training_reduces_the_loss_and_writes_a_loadable_bundle(tmp_path):
    fields = _fields()
    cases, plan = phantom_cases([0, 1], fields["preprocessing"], **TINY)
    table = plan.table
    # No augmentation: the (padded) phantoms are smaller than one window, so each case gives one
    # fixed crop and the loss on those crops must fall. The Swin transformer is frozen and its
    # outputs cached ("convs" mode), the fast path the demo bundle was trained with.
    augment = AugmentSettings(window=(64, 64, 64), flip_prob=0, rotate_prob=0, scale_prob=0, shift_prob=0)
    settings = SegmentationSettings(augment=augment, steps=5, batch_size=2, lr=3e-3, warmup_steps=1,
                                    encoder_mode="convs", feature_cache=1, val_every=5, checkpoint_every=5)
    torch.manual_seed(0)
    network = build_network(ArchitectureSpec.from_manifest("segmentation", fields["architecture"], len(table) + 1))
    pool = build_crop_pool(network, [CropSampler(c, augment.window) for c in cases], settings, None, CPU)
    loss_fn = segmentation_loss()

    def pool_loss(net) -> float:
        with torch.no_grad():
            return float(loss_fn(forward_logits(net.eval(), pool.inputs, "convs", pool.cached), pool.targets))

    before = pool_loss(network)
    result = train_segmentation(network, cases, cases[:1], table, settings, CPU, checkpoint_dir=tmp_path / "ckpt")
    after = pool_loss(result.network)
    assert after < before - 0.05, (before, after)
    assert len(result.history) == 5 and result.validation is not None
    assert set(result.validation["dice"]) == {lab.name for lab in table}
    assert (tmp_path / "ckpt" / "last.pt").is_file()

    folder = write_trained_bundle(tmp_path / "bundle", {**fields, "metrics": {"steps": 5}}, result.network)
    assert (folder / "README.md").is_file()
    bundle = load_bundle(folder)
    for key, value in result.network.state_dict().items():
        if key in bundle.network.state_dict():
            assert torch.equal(bundle.network.state_dict()[key], value), key
    phantom = generate_phantom(7, **TINY)
    segmentation = segment_image(phantom.image, bundle, CPU)
    assert same_grid(segmentation.labels, phantom.image)


def test_crop_store_keeps_each_scans_crops_for_the_next_teach(tmp_path):
    """An incremental teach computes the frozen encoder only for the scan it adds: each case's crops
    are kept under a key of its own (its voxels, the encoder, the settings), whatever cases come
    with it; a case whose targets changed is computed again."""
    fields = _fields()
    cases, _ = phantom_cases([5, 6], fields["preprocessing"], **TINY)
    settings = SegmentationSettings(augment=AugmentSettings(window=(64, 64, 64)), encoder_mode="frozen",
                                    feature_cache=1, balanced_pool=True)
    network = build_network(ArchitectureSpec.from_manifest("segmentation", fields["architecture"], 8)).eval()
    passes = []
    network.encoder.register_forward_hook(lambda *_: passes.append(1))
    store = CropStore(tmp_path, "encoder-digest", {"seed": 0})
    samplers = [CropSampler(c, (64, 64, 64)) for c in cases]
    first = build_crop_pool(network, samplers[:1], settings, None, CPU, store=store)
    both = build_crop_pool(network, samplers, settings, None, CPU, store=store)
    assert len(passes) == 2  # one scan, then only the scan added
    assert all(torch.equal(a[:1], b) for a, b in zip(both.cached, first.cached))
    changed = Case(cases[0].name, cases[0].image, np.where(cases[0].target == 1, 0, cases[0].target).astype(np.uint8))
    build_crop_pool(network, [CropSampler(changed, (64, 64, 64))], settings, None, CPU, store=store)
    assert len(passes) == 3


def test_interrupted_training_resumes_where_it_stopped(tmp_path):
    """Crops come from rng([seed, step]): a run stopped by Ctrl-C and resumed from its checkpoint
    ends with the weights of an uninterrupted run."""
    fields = _fields()
    cases, plan = phantom_cases([2], fields["preprocessing"], **TINY)
    table = plan.table
    settings = SegmentationSettings(augment=AugmentSettings(window=(64, 64, 64)), steps=3, batch_size=1,
                                    lr=1e-3, warmup_steps=1, checkpoint_every=1, seed=3,
                                    encoder_mode="frozen", feature_cache=1)

    def run(resume=None, folder=None, progress=None):
        torch.manual_seed(0)
        net = build_network(ArchitectureSpec.from_manifest("segmentation", fields["architecture"], len(table) + 1))
        return train_segmentation(net, cases, [], table, settings, CPU, checkpoint_dir=folder, resume=resume,
                                  progress=progress).network

    def interrupt(fraction: float, message: str) -> None:
        if fraction >= 2 / 3:
            raise KeyboardInterrupt

    straight = run()
    with pytest.raises(KeyboardInterrupt):
        run(folder=tmp_path, progress=interrupt)
    checkpoint = load_checkpoint_state(tmp_path / "last.pt")
    assert checkpoint["step"] == 1
    resumed = run(resume=checkpoint)
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key
    torch.manual_seed(0)
    fresh = build_network(ArchitectureSpec.from_manifest("segmentation", fields["architecture"], len(table) + 1))
    frozen = "encoder.encoder1.layer.conv1.conv.weight"
    assert torch.equal(fresh.state_dict()[frozen], straight.state_dict()[frozen])  # encoder frozen
    assert not torch.equal(fresh.state_dict()["decoder.out.conv.conv.weight"],
                           straight.state_dict()["decoder.out.conv.conv.weight"])


def test_crops_are_balanced_and_left_right_flips_swap_kidneys():
    table = PHANTOM_LABELS
    lut = mirror_lookup(table)
    names = [None] + [lab.name for lab in table]
    assert names[lut[names.index("kidney_left")]] == "kidney_right"
    assert names[lut[names.index("liver")]] == "liver"
    # A large structure (class 1, half the volume) and a tiny one (class 2, 0.1%): balanced crops
    # centre on each structure equally often, whatever their sizes.
    target = np.zeros((128, 128, 128), np.uint8)
    target[:, :64] = 1
    target[60:70, 80:90, 60:70] = 2
    sampler = CropSampler(Case("synthetic", np.zeros(target.shape, np.float32), target), (64, 64, 64))
    rng = np.random.default_rng(0)
    centres = []
    for _ in range(60):
        image, crop = sampler.sample(rng, foreground_prob=1.0)
        assert image.shape == (64, 64, 64) and crop.shape == (64, 64, 64)
        centres.append(int(crop[32, 32, 32]))
    assert 15 <= centres.count(2) <= 45, centres.count(2)
    uniform = [int(sampler.sample(rng, foreground_prob=0.0)[1][32, 32, 32]) for _ in range(60)]
    assert uniform.count(2) <= 3


def test_metrics():
    table = LabelTable([Label(1, "a"), Label(2, "b"), Label(3, "c")])
    truth = np.array([0, 1, 1, 2, 2, 0])
    pred = np.array([0, 1, 0, 2, 2, 2])
    dice = dice_per_structure(pred, truth, table)
    assert dice["a"] == pytest.approx(2 / 3) and dice["b"] == pytest.approx(0.8) and dice["c"] is None
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5], [False, True]) == pytest.approx(0.5)
    assert auroc([0.1, 0.2], [True, True]) is None
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]


def test_merged_labels_are_trained_as_their_target():
    plan = plan_labels(PHANTOM_LABELS, "liver_lesion=liver,spleen=background")
    assert [lab.name for lab in plan.table] == ["liver", "kidney_left", "kidney_right", "aorta", "vertebrae", "lung"]
    lut = plan.lookup()
    assert lut[8] == lut[1] == 1 and lut[2] == 0 and lut[3] == 2
    for bad in ("liver_lesion=nothing", "liver_lesion", "liver=liver", "liver=spleen,spleen=aorta"):
        with pytest.raises(UsageError):
            plan_labels(PHANTOM_LABELS, bad)


# ------------------------------------------------------------------------------------------
# train-cls: a point-level probe from a CSV
# ------------------------------------------------------------------------------------------

def _blob_volume(path: Path, bright_at: tuple[int, int, int]) -> sitk.Image:
    """A 48^3 volume at 4 mm (soft tissue) with a bright 'nodule' around one voxel."""
    array = np.full((48, 48, 48), 40, np.int16)
    z, y, x = np.ogrid[:48, :48, :48]
    bi, bj, bk = bright_at
    array[(x - bi) ** 2 + (y - bj) ** 2 + (z - bk) ** 2 <= 16] = 240
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((4.0, 4.0, 4.0))
    sitk.WriteImage(image, str(path))
    return image


def test_train_cls_point_probe_from_csv(tmp_path):
    rows = ["image,label,x,y,z"]
    for i, (ci, cj, ck) in enumerate([(12, 12, 12), (34, 30, 14)]):
        image = _blob_volume(tmp_path / f"scan{i}.nii.gz", (ci, cj, ck))
        bright = image.TransformIndexToPhysicalPoint((ci, cj, ck))
        dull = image.TransformIndexToPhysicalPoint((47 - ci, 47 - cj, 47 - ck))
        rows.append(f"scan{i}.nii.gz,nodule,{bright[0]},{bright[1]},{bright[2]}")
        rows.append(f"scan{i}.nii.gz,background,{dull[0]},{dull[1]},{dull[2]}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "probe"
    row = rows[1].split(",")
    report = tmp_path / "report.json"
    # At 1 mm the region around a point (56 mm, one 64^3 window) holds the blob or not. Trained, then
    # the bundle classifies a training point: one interpreter, in this order.
    proc, classified = run_cli_many(
        ["train-cls", "--csv", tmp_path / "train.csv", "--feature-size", "6", "--spacing", "1", "--window", "64",
         "--output", out, "--classes", "background,nodule", "--progress", "none"],
        ["classify", tmp_path / row[0], "--model", out, "--point", ",".join(row[2:]), "--output", report,
         "--progress", "none"])
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["background", "nodule"]
    assert manifest["metrics"]["training"]["accuracy"] == 1.0
    assert manifest["reproduce"].startswith("coralbay train-cls --csv")
    assert "not validated for clinical use" in manifest["intended_use"]
    # The bundle classifies a training point through `coralbay classify --point`.
    assert classified.returncode == 0, classified.stderr
    assert json.loads(report.read_text())["prediction"] == "nodule"


# ------------------------------------------------------------------------------------------
# Bad training inputs: one sentence, exit code 1, no bundle folder
# ------------------------------------------------------------------------------------------

def _pair(folder: Path, name: str, labels_spacing: float = 4.0, label_value: int = 1) -> None:
    image = sitk.GetImageFromArray(np.full((20, 20, 20), 40, np.int16))
    image.SetSpacing((4.0, 4.0, 4.0))
    labels = sitk.GetImageFromArray(np.zeros((20, 20, 20), np.uint8))
    labels[5:10, 5:10, 5:10] = label_value
    labels.SetSpacing((labels_spacing,) * 3)
    sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))
    sitk.WriteImage(labels, str(folder / f"{name}_labels.nii.gz"))


def _train_fails(capsys, tmp_path, data: Path, expected: str, *extra: str) -> None:
    out = tmp_path / "bundle"
    code = main(["train-seg", "--data", str(data), "--feature-size", "6", "--window", "64", "--steps", "1",
                 "--output", str(out), "--progress", "none", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert expected in err and err.count("\n") == 0 and err.endswith("."), err
    assert not out.exists() and not list(tmp_path.glob(".bundle*"))


@pytest.mark.parametrize("problem", ["unpaired image", "unpaired labels", "other grid", "unknown value", "empty"])
def test_bad_training_folders_are_refused(problem, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    if problem == "empty":
        _train_fails(capsys, tmp_path, data, "holds no images and label maps")
        return
    _pair(data, "case1")
    if problem == "unpaired image":
        sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkInt16), str(data / "case2.nii.gz"))
        _train_fails(capsys, tmp_path, data, "case2.nii.gz has no label map")
    elif problem == "unpaired labels":
        sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkUInt8), str(data / "case3_seg.nrrd"))
        _train_fails(capsys, tmp_path, data, "has no matching image named case3")
    elif problem == "other grid":
        _pair(data, "case2", labels_spacing=2.0)
        _train_fails(capsys, tmp_path, data, "does not lie on the grid of its image")
    elif problem == "unknown value":
        _pair(data, "case2", label_value=5)
        table = tmp_path / "table.json"
        table.write_text(json.dumps(LabelTable([Label(1, "organ")]).to_dict()))
        _train_fails(capsys, tmp_path, data, "label value(s) 5 that the label table does not list",
                     "--labels", str(table))


def test_pairs_from_images_tr_layout_and_sidecar_table(tmp_path):
    for sub in ("imagesTr", "labelsTr"):
        (tmp_path / sub).mkdir()
    image = sitk.Image(8, 8, 8, sitk.sitkInt16)
    sitk.WriteImage(image, str(tmp_path / "imagesTr" / "liver_001_0000.nii.gz"))
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkUInt8), str(tmp_path / "labelsTr" / "liver_001.nii.gz"))
    (pair,) = find_pairs(tmp_path)
    assert pair.name == "liver_001" and pair.labels.parent.name == "labelsTr"
    assert label_table_path_for(pair.labels).name == "liver_001.labels.json"


def test_train_cls_refuses_a_single_class_csv(tmp_path, capsys):
    _blob_volume(tmp_path / "a.nii.gz", (10, 10, 10))
    (tmp_path / "one.csv").write_text("image,label\na.nii.gz,x\na.nii.gz,x\n")
    code = main(["train-cls", "--csv", str(tmp_path / "one.csv"), "--output", str(tmp_path / "b"), "--progress", "none"])
    assert code == 1 and "only one class" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_teach_pool_centres_crops_on_every_structure_and_held_out_crops_stop_training():
    """The teach settings: pool crops centred on each structure in turn (then one anywhere), and the
    stopping rule from held-out crops of the training cases (no validation scan needed) or the
    time budget, whichever ends training first."""
    target = np.zeros((128, 128, 128), np.uint8)
    target[:, :64] = 1
    target[60:70, 80:90, 60:70] = 2
    sampler = CropSampler(Case("synthetic", np.zeros(target.shape, np.float32), target), (64, 64, 64))
    assert [pool_crop_structure(sampler, k) for k in range(6)] == [1, 2, None, 1, 2, None]
    assert int(sampler.sample(np.random.default_rng(0), 0.0, structure=2)[1][32, 32, 32]) == 2

    fields = _fields()
    cases, plan = phantom_cases([4], fields["preprocessing"], **TINY)
    table = plan.table
    common = dict(augment=AugmentSettings(window=(64, 64, 64)), steps=20, batch_size=1, warmup_steps=1,
                  encoder_mode="frozen", feature_cache=2, balanced_pool=True, holdout_crops=1, check_every=1,
                  frozen_modules=("decoder.decoder1",))

    def run(**settings):
        torch.manual_seed(0)
        net = build_network(ArchitectureSpec.from_manifest("segmentation", fields["architecture"], len(table) + 1))
        before = net.decoder.decoder1.state_dict()
        result = train_segmentation(net, cases, [], table, SegmentationSettings(**common, **settings), CPU)
        for key, value in before.items():  # the frozen full-resolution block is kept as it started
            assert torch.equal(result.network.decoder.decoder1.state_dict()[key], value), key
        return result

    # A learning rate of zero cannot improve the held-out crops: stopped after the score of where it
    # started (step 0) and `patience` scores without improvement, keeping the starting weights.
    still = run(lr=0.0, patience=2)
    assert still.stopped == "no-improvement" and still.steps_done == 2 and still.chosen_step == 0
    assert still.holdout is not None and set(still.holdout) <= {lab.name for lab in table}
    budget = run(lr=1e-3, time_budget_s=1e-6)
    assert budget.stopped == "time budget" and budget.steps_done == 1


def test_teach_crops_keep_the_scans_orientation(tmp_path):
    """A teach's crops are never mirrored or turned (the model grid is RAS, so the next scan never shows
    mirrored anatomy), while its intensity augmentations stay: the teach's own settings through `augment`."""
    config = teach_training(TeachRequest(examples=tmp_path, base="demo-phantom-seg", name="t"), tmp_path / "t", 5, False)
    settings = AugmentSettings(window=(8, 8, 8), flip_prob=config.flip_prob, rotate_prob=config.rotate_prob,
                               scale_prob=config.scale_prob, shift_prob=config.shift_prob)
    target = np.zeros((8, 8, 8), np.uint8)
    target[:3, :2, :5] = 1  # no symmetry: any flip or axial turn moves it
    image = target.astype(np.float32)
    changed = 0
    for seed in range(200):
        out_image, out_target = augment(image, target, settings, np.random.default_rng(seed), np.array([0, 1], np.uint8))
        assert np.array_equal(out_target, target), seed
        changed += not np.allclose(out_image, image)
    assert changed > 50  # the intensity scale and shift still apply
