"""`coralbay eval-interactive`: the official CVPR 2025 click and box rules on hand-made masks, the
metrics (DSC_AUC, NSD, monotonicity), each classical baseline segmenting a blob and clicking on
its own errors (Slicer's Grow from seeds through slicer-core), and the command end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import integrate

from coralbay.interactive import baselines as B
from coralbay.interactive import simulate as S
from coralbay.interactive.evaluate import BaselineMethod, simulate_structure

REPO = Path(__file__).resolve().parents[2]


def _image(shape: tuple[int, int, int], spacing_xyz=(1.0, 1.0, 1.0)) -> sitk.Image:
    image = sitk.Image(*shape[::-1], sitk.sitkFloat32)
    image.SetSpacing(spacing_xyz)
    return image


def _block(shape, lo, hi) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


def test_one_error_mask_26_connected_missed_and_extra_together():
    """A missed cube and an extra cube that touch only at a corner are one 26-connected error
    (54 voxels), larger than a separate missed block of 40: the click goes there, not to the 40."""
    shape = (20, 20, 30)
    missed = _block(shape, (2, 2, 2), (5, 5, 5))
    extra = _block(shape, (5, 5, 5), (8, 8, 8))       # corner to corner with `missed`
    apart = _block(shape, (12, 12, 18), (14, 16, 23))  # 2 x 4 x 5 = 40 missed voxels
    reference = missed | apart | _block(shape, (12, 2, 20), (16, 6, 24))
    prediction = extra | (reference & ~missed & ~apart)
    click = S.official_click(prediction, reference, _image(shape))
    assert (missed | extra)[click.voxel_zyx]
    assert click.positive == bool(missed[click.voxel_zyx])
    # this project's earlier rule (6-connected, missed and extra apart) picks the block of 40 instead
    assert apart[S.next_click(prediction, reference, _image(shape)).voxel_zyx]


def test_click_at_the_deepest_voxel_with_its_sign_and_none_when_perfect():
    shape = (16, 16, 16)
    reference = _block(shape, (3, 3, 3), (8, 8, 8))       # 5^3: one deepest voxel, its centre
    extra = _block(shape, (9, 9, 9), (16, 16, 16))        # 7^3 extra, touching the image border
    click = S.official_click(reference | extra, reference, _image(shape))
    # the EDT pads the crop with zeros: the image border counts as outside, so the centre of the 7^3 wins
    assert click.voxel_zyx == (12, 12, 12) and click.positive is False
    click = S.official_click(np.zeros(shape, bool), reference, _image(shape))
    assert click.voxel_zyx == (5, 5, 5) and click.positive is True
    assert S.official_click(None, reference, _image(shape)).voxel_zyx == (5, 5, 5)   # no box: the first click
    assert S.official_click(reference.copy(), reference, _image(shape)) is None


def test_ties_broken_as_the_official_seeded_choice_and_distance_in_voxels():
    """An even-sized error has several deepest voxels: the official script calls np.random.seed(42)
    then np.random.choice over them (C order); the spacing plays no part (EDT in voxels)."""
    shape = (12, 12, 12)
    reference = _block(shape, (2, 2, 2), (6, 5, 5))     # 4 x 3 x 3: two voxels at distance 2
    candidates = [(3, 3, 3), (4, 3, 3)]
    np.random.seed(42)
    expected = candidates[np.random.choice(len(candidates))]
    for spacing in ((1.0, 1.0, 1.0), (0.5, 0.5, 5.0)):
        click = S.official_click(np.zeros(shape, bool), reference, _image(shape, spacing))
        assert click.voxel_zyx == expected and click.positive


def test_official_box_takes_x_y_from_the_middle_slice_and_a_scaled_shift():
    shape = (14, 300, 520)
    reference = np.zeros(shape, bool)
    reference[3:6, 40:200, 60:400] = True   # wide slices below the middle
    reference[6:11, 100:150, 200:260] = True  # narrow slices: z 3..10, middle of the 8 = slice 7
    shift = int(np.random.RandomState(2025).randint(0, 6, 1)[0])
    box = S.official_box(reference)
    sy, sx = int(shift * 300 / 256), int(shift * 520 / 256)
    assert box.lower_zyx == (3, 100 - sy, 200 - sx) and box.upper_zyx == (10, 149 + sy, 259 + sx)
    assert not reference[box.slices()].all() and reference[box.slices()].sum() < reference.sum()  # not the 3D box
    tight = S.tight_box(reference)
    assert tight.lower_zyx == (3, 40, 60) and tight.upper_zyx == (10, 199, 399)


def test_dsc_auc_nsd_and_monotonicity_as_defined():
    dice = [0.5, 0.6, 0.7, 0.8, 0.9]
    assert S.official_dsc_auc(dice) == pytest.approx(integrate.cumulative_trapezoid(dice, np.arange(5))[-1])
    assert S.official_dsc_auc(dice) == pytest.approx(2.8) and S.mean_auc(dice) == pytest.approx(0.7)
    shape = (20, 20, 20)
    cube = _block(shape, (5, 5, 5), (15, 15, 15))
    assert S.official_nsd(cube, cube, (1.0, 1.0, 1.0)) == pytest.approx(1.0)
    shell = cube & ~_block(shape, (6, 6, 6), (14, 14, 14))   # within 1 mm of the cube's surface, Dice < 0.2
    assert S.dice(shell, _block(shape, (7, 7, 7), (13, 13, 13))) < 0.2
    assert S.official_nsd(shell, _block(shape, (7, 7, 7), (13, 13, 13)), (1.0, 1.0, 1.0)) == 0.0
    assert S.nsd(shell, _block(shape, (7, 7, 7), (13, 13, 13)), (1.0, 1.0, 1.0)) > 0.5  # ours computes it
    found = S.monotonicity([[0.5, 0.6, 0.55, 0.56], [None, 0.3, 0.2]])
    assert (found["clicks"], found["falls"], found["share"]) == (4, 2, 0.5)


@pytest.fixture(scope="module")
def blob():
    """A soft-tissue ellipsoid (60 HU) beside a brighter neighbour in fat (-100 HU), noisy, 2 x 1 x 1 mm."""
    rng = np.random.default_rng(0)
    shape = (24, 48, 48)
    z, y, x = np.ogrid[:24, :48, :48]
    target = ((z - 12) / 7.0) ** 2 + ((y - 22) / 12.0) ** 2 + ((x - 24) / 10.0) ** 2 <= 1
    neighbour = ((z - 12) / 6.0) ** 2 + ((y - 22) / 8.0) ** 2 + ((x - 40) / 5.0) ** 2 <= 1
    hu = (np.where(target, 60.0, -100.0) + np.where(neighbour, 250.0, 0.0) + rng.normal(0, 15, shape)).astype(np.float32)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((1.0, 1.0, 2.0))
    return image, hu, target


def _grow_from_seeds():
    pytest.importorskip("slicer", reason="Slicer's Grow from seeds needs slicer-core (the test extra)")
    spec = importlib.util.spec_from_file_location("grow_from_seeds", REPO / "benchmarks/interactive/grow_from_seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.grow_from_seeds


@pytest.mark.parametrize("name", ["grow-from-seeds", "random-walker"])
def test_each_baseline_segments_a_blob_and_clicks_on_its_own_errors(blob, name):
    pytest.importorskip("skimage", reason="the random walker needs scikit-image (the eval extra)")
    image, hu, target = blob
    segment = _grow_from_seeds() if name == "grow-from-seeds" else B.baseline(name)
    spacing = (2.0, 1.0, 1.0)
    box = S.official_box(target)
    found = simulate_structure(BaselineMethod(name, segment, hu, spacing), target, image, S.PROTOCOLS["official"], 3, box)
    assert found["dice_after_box"] == 0.0          # a box alone seeds no foreground: nothing to grow
    assert found["dice_after"]["1"] > 0.6 and found["final_dsc"] > 0.9, found["dice_per_click"]
    # each click is the official click on this method's own previous answer
    prompts, previous = B.Prompts(box=box), segment(hu, spacing, B.Prompts(box=box))
    for step in found["trace"][1:]:
        if step["prompt"] == "none":
            continue
        expected = S.official_click(previous, target, image)
        assert step["voxel_zyx"] == list(expected.voxel_zyx) and step["prompt"] == ("positive" if expected.positive else "negative")
        prompts.clicks.append(expected)
        previous = segment(hu, spacing, prompts)
        assert step["dice"] == round(S.dice(previous, target), 4)


def test_seeds_box_outside_is_background_and_clicks_are_balls():
    shape = (20, 40, 40)
    box = S.VoxelBox((5, 10, 10), (14, 29, 29))
    click = S.Click((9, 20, 20), (0.0, 0.0, 0.0), True)
    outside = S.Click((9, 36, 20), (0.0, 0.0, 0.0), True)   # a positive click beyond the box widens it
    seeded = B.seed_region(shape, (2.0, 1.0, 1.0), B.Prompts(box, [click, outside]))
    lo = np.asarray([s.start for s in seeded.region])
    assert seeded.seeds[tuple(np.asarray(click.voxel_zyx) - lo)] == B.FOREGROUND
    assert seeded.seeds[tuple(np.asarray(outside.voxel_zyx) - lo)] == B.FOREGROUND
    assert seeded.seeds[0, 0, 0] == B.BACKGROUND and (seeded.seeds == 0).sum() > 0.8 * 10 * 20 * 20
    ball = np.argwhere(seeded.seeds == B.FOREGROUND) + lo
    assert np.abs(ball[:, 0] - 9).max() == 1 and np.abs(ball[:, 2] - 20).max() == 3   # 3 mm at 2 x 1 x 1 mm


def test_eval_interactive_end_to_end_with_a_per_click_trace(tmp_path):
    """Through the Slicer harness: our session, Grow from seeds and the random walker on a small
    phantom, official protocol: trace, summary, monotonicity. Plain `coralbay eval-interactive`:
    --no-box starts with a positive click; Grow from seeds asked for is named with how to get it."""
    import subprocess
    import sys

    from conftest import cli_env, run_cli_many, write_interactive_phantom

    pytest.importorskip("slicer", reason="Slicer's Grow from seeds needs slicer-core (the test extra)")
    pytest.importorskip("skimage", reason="the random walker needs scikit-image (the eval extra)")
    ct, labels = write_interactive_phantom(tmp_path / "ph")
    out = tmp_path / "eval.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/interactive/eval_with_slicer.py"), str(ct), str(labels),
                           "--model", "demo-phantom-seg", "--structures", "spleen", "--clicks", "2",
                           "--cache", str(tmp_path / "cache"), "--json", str(out)],
                          capture_output=True, text=True, env=cli_env(), timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    methods = ["ours", "grow-from-seeds", "random-walker"]
    assert result["protocol"]["name"] == "official" and result["methods"] == methods
    structure = result["structures"][0]
    assert structure["name"] == "spleen" and structure["box"]["lower_zyx"] <= structure["box"]["upper_zyx"]
    for method in methods:
        found = structure["methods"][method]
        assert [t["prompt"] for t in found["trace"]][0] == "box" and len(found["trace"]) == 3
        assert all(0.0 <= t["dice"] <= 1.0 and t["seconds"] >= 0 for t in found["trace"])
        assert found["final_dsc"] == found["trace"][-1]["dice"]
        summary = result["summary"][method]
        assert summary["monotonicity"]["clicks"] == 2 and 0.0 <= summary["monotonicity"]["share"] <= 1.0
        assert summary["mean_dice_after"]["1"] is not None and summary["mean_dsc_auc"] is not None
    assert result["summary"]["grow-from-seeds"]["mean_dice_after"]["1"] > 0.5
    missing = tmp_path / "missing.json"
    done, refused = run_cli_many(  # one interpreter, two commands
        ["eval-interactive", ct, labels, "--model", "demo-phantom-seg", "--structures", "spleen", "--no-box",
         "--no-ours", "--clicks", "2", "--baselines", "random-walker", "--json", out],
        ["eval-interactive", ct, labels, "--model", "demo-phantom-seg", "--baselines", "grow-from-seeds",
         "--no-ours", "--json", missing])
    assert done.returncode == 0, done.stderr
    trace = json.loads(out.read_text())["structures"][0]["methods"]["random-walker"]["trace"]
    assert trace[0]["prompt"] == "positive" and len(trace) == 2
    assert refused.returncode == 2 and "eval_with_slicer.py" in refused.stderr and refused.stderr.count("\n") == 1
    assert not missing.exists()


def test_the_earlier_protocol_stays_available(blob):
    """--protocol ours: the tight 3D box, the earlier clicker, DSC_AUC as the mean Dice."""
    pytest.importorskip("skimage", reason="the random walker needs scikit-image (the eval extra)")
    image, hu, target = blob
    protocol = S.PROTOCOLS["ours"]
    box = protocol.box(target)
    assert box == S.tight_box(target)
    found = simulate_structure(BaselineMethod("random-walker", B.baseline("random-walker"), hu, (2.0, 1.0, 1.0)),
                               target, image, protocol, 2, box)
    assert found["trace"][0]["lower_zyx"] == list(box.lower_zyx)
    assert found["dsc_auc"] == pytest.approx(np.mean(found["dice_per_click"]), abs=1e-4)


def test_without_a_box_the_user_clicks_on_the_proposal_shown(blob):
    """A structure that starts from a proposal (--propose-with, or the examples' proposal): the
    simulated user looks at that proposal, so the first click is the official click on its errors
    and a fall is counted from its Dice, not from an empty answer."""
    pytest.importorskip("skimage", reason="the random walker needs scikit-image (the eval extra)")
    image, hu, target = blob
    protocol = S.PROTOCOLS["official"]
    shown = target.copy()
    shown[:, :, :20] = False                         # a proposal that misses the left part
    method = BaselineMethod("random-walker", B.baseline("random-walker"), hu, (2.0, 1.0, 1.0))
    method.start("blob", 1)
    found = simulate_structure(method, target, image, protocol, 1, None, shown)
    expected = S.official_click(shown, target, image)
    assert found["trace"][0]["voxel_zyx"] == list(expected.voxel_zyx)
    assert found["trace"][0]["voxel_zyx"] != list(S.official_click(None, target, image).voxel_zyx)
    falls = found["falls"]
    assert found["clicks_counted"] == 1 and falls == int(found["trace"][0]["dice"] < S.dice(shown, target) - 0.02)
