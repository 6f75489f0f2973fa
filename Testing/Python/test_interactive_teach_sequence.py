"""`eval-interactive --teach-between-scans`: the Teach-model loop of issue 24, simulated end to end.

Real pieces: the demo encoder's session, real teaches (a few steps) through the engine's teach API,
three small phantoms, the command as a real subprocess. What is checked: the examples taught are
the session's accepted answers (not the references), each teach after the first continues the one
before, and the next scan's structures start from the newest taught model's own segmentation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import run_cli_many, write_interactive_phantom

from coralbay.bundle.loader import load_bundle
from coralbay.interactive import simulate as S
from coralbay.interactive.proposals import ModelProposals, first_answer
from coralbay.interactive.session import Session
from coralbay.io.example_masks import read_mask
from coralbay.io.examples import read_examples


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> list[tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("teach-sequence")
    return [write_interactive_phantom(folder / f"s{seed}", seed=seed, direction=direction)
            for seed, direction in ((10007, "LPS"), (10008, "RAS"), (10009, "LPS"))]


def test_each_scan_starts_from_the_model_taught_on_the_scans_before(scans, tmp_path):
    teach_dir, out = tmp_path / "teach", tmp_path / "eval.json"
    pairs = [str(p) for pair in scans for p in pair]
    done, = run_cli_many(
        ["eval-interactive", *pairs, "--model", "demo-phantom-seg", "--structures", "liver,spleen", "--clicks", "1",
         "--no-baseline", "--teach-between-scans", "--teach-steps", "1", "--teach-dir", teach_dir,
         "--cache", tmp_path / "cache", "--json", out], env={"CORALBAY_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["box"] is False and report["sequence"] is True   # --no-box and --sequence implied

    teaches = report["teach_between_scans"]["teaches"]
    assert [(t["taught"], t["from"], t["taught_on_scans"]) for t in teaches] == [
        ("taught-after-scan-1", "demo-phantom-seg", 1), ("taught-after-scan-2", "taught-after-scan-1", 2)]
    assert all(t["steps"] == 1 and t["seconds"] > 0 for t in teaches)   # --teach-steps reached the teach
    by_scan = report["by_scan"]
    assert [(s["proposed_by"], s["taught_on_scans"]) for s in by_scan] == [
        (None, 0), ("taught-after-scan-1", 1), ("taught-after-scan-2", 2)]
    assert by_scan[1]["teach_seconds"] == teaches[0]["seconds"] and by_scan[0]["mean_dice_after"]["1"] > 0
    assert all("clicks_to_dice_0.90_from_first_click" in s["methods"]["ours"] for s in report["structures"])

    # The examples taught are what the simulated user accepted (its final answers), not the references.
    first_scan = [s for s in report["structures"] if s["scan"] == pairs[0]]
    reference = sitk.GetArrayFromImage(sitk.ReadImage(pairs[1]))
    accepted = {s.name: read_mask(s) for scan in read_examples(teach_dir / "examples")
                if scan.scan == pairs[0] for s in scan.structures}
    assert set(accepted) == {"liver", "spleen"}
    for record in first_scan:
        dice = S.dice(accepted[record["name"]], reference == record["value"])
        assert round(dice, 4) == record["methods"]["ours"]["final_dsc"] < 1.0

    # Scan 2's structures start from taught-after-scan-1's proposal on scan 2 (its segmentation, border
    # refined: the session's `first_answer`), the same mask a fresh session given that model shows.
    session = Session(load_bundle("demo-phantom-seg"), cache_dir=tmp_path / "cache")
    session.open_scan(sitk.ReadImage(pairs[2]), pairs[2])
    taught = ModelProposals(load_bundle(str(teach_dir / "taught-after-scan-1")))
    reference = sitk.GetArrayFromImage(sitk.ReadImage(pairs[3]))
    second = [s for s in report["structures"] if s["scan"] == pairs[2] and "proposal" in s]
    assert second, "the taught model proposed nothing on scan 2"
    for record in second:
        assert record["proposal"]["by"] == "taught-after-scan-1"
        session.start(record["name"], record["value"])
        answer, source = first_answer(session, taught, record["name"])
        assert source == "taught-after-scan-1"
        assert record["proposal"]["dice"] == round(S.dice(answer.mask, reference == record["value"]), 4)
    assert by_scan[1]["proposals_by"] == {"taught-after-scan-1": len(second)}


def test_what_the_teach_loop_cannot_measure_is_refused_before_any_work(scans, tmp_path):
    pairs = [str(p) for pair in scans[:2] for p in pair]
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("")
    base = ["eval-interactive", "--model", "demo-phantom-seg", "--no-baseline"]
    outs = [tmp_path / f"{i}.json" for i in range(6)]
    results = run_cli_many(
        [*base, *pairs, "--teach-between-scans", "--box", "--json", outs[0]],
        [*base, *pairs, "--teach-between-scans", "--propose-with", "demo-phantom-seg", "--json", outs[1]],
        [*base, *pairs[:2], "--teach-between-scans", "--json", outs[2]],
        [*base, *pairs, "--teach-steps", "3", "--json", outs[3]],
        [*base, *pairs, "--teach-between-scans", "--teach-dir", used, "--json", outs[4]],
        [*base, *pairs, "--teach-between-scans", "--no-ours", "--json", outs[5]])
    expected = [(2, "leave out --box"), (2, "leave out --propose-with"), (2, "at least two CT LABELS pairs"),
                (2, "--teach-steps needs --teach-between-scans"), (1, "not a new or empty folder"),
                (2, "needs our session")]
    for done, (code, words), out in zip(results, expected, outs):
        assert done.returncode == code and words in done.stderr, (done.args, done.returncode, done.stderr)
        assert done.stderr.count("\n") == 1 and not out.exists()
    assert [p.name for p in used.iterdir()] == ["x"]
