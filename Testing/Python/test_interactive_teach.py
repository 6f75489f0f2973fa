"""Learning from the user beyond one process: accepted structures restored by a restarted session,
`coralbay teach` (a bundle from the accepted examples, added to the catalog), its refusals, and
`eval-interactive` reading a TotalSegmentator-style labels.json.

Real pieces throughout: the demo encoder on a small phantom for the session, a tiny real bundle
(F=6) for teach, real subprocesses for the commands.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import make_tiny_bundle, run_cli_many, write_interactive_phantom

from coralbay.bundle.loader import load_bundle
from coralbay.interactive import prompts as P
from coralbay.interactive import simulate as S
from coralbay.interactive.session import Session
from coralbay.io.example_masks import write_accepted
from coralbay.io.examples import read_examples
from coralbay.model.digest import encoder_digest
from coralbay.phantom import generate_phantom, write_phantom


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("teach")
    ct, labels = write_interactive_phantom(folder)
    image = sitk.ReadImage(str(ct))
    return {"ct": ct, "labels": labels, "image": image, "folder": folder,
            "values": sitk.GetArrayFromImage(sitk.ReadImage(str(labels)))}


@pytest.fixture(scope="module")
def demo():
    return load_bundle("demo-phantom-seg")


def _segment_liver(session: Session, image, reference, clicks: int = 2) -> None:
    session.start("liver")
    prediction = None
    for _ in range(clicks):
        click = S.next_click(prediction, reference, image)
        prediction = session.prompt(P.point(image, click.lps, click.positive)).mask
    session.accept("liver")


def test_a_restarted_session_restores_the_accepted_structures(phantom, demo, tmp_path):
    """A new process (a new Session on the same folders) finds the liver accepted on the scan, as
    negative evidence, and knows it from the examples of earlier scans."""
    image, liver = phantom["image"], phantom["values"] == 1
    cache, examples = tmp_path / "cache", tmp_path / "examples"
    first = Session(demo, cache_dir=cache, examples_dir=examples)
    first.open_scan(image, str(phantom["ct"]))
    _segment_liver(first, image, liver)
    accepted = first.structures["liver"]
    record = read_examples(examples)[0]
    assert record.encoder_sha256 == encoder_digest(demo.network) and record.model_name == "demo-phantom-seg"

    second = Session(demo, cache_dir=cache, examples_dir=examples)
    assert second.restore_examples() == 1 and second.examples.knows("liver")
    second.open_scan(image, str(phantom["ct"]))
    restored = second.structures["liver"]
    assert restored.accepted and restored.value == accepted.value
    assert np.array_equal(restored.mask, accepted.mask) and np.array_equal(second.accepted_input, first.accepted_input)
    assert np.array_equal(sitk.GetArrayFromImage(second.labels()), sitk.GetArrayFromImage(first.labels()))
    with pytest.raises(Exception, match="already accepted"):
        second.start("liver")  # never overwritten
    assert second.restore_examples() == 0  # once per process
    # The restored liver is negative evidence: a spleen segmented next never takes its voxels.
    second.start("spleen")
    click = S.next_click(None, phantom["values"] == 2, image)
    spleen = second.prompt(P.point(image, click.lps, True)).mask
    assert not (spleen & restored.mask).any()


def test_examples_of_another_encoder_are_not_restored(phantom, demo, tmp_path, caplog):
    image = phantom["image"]
    examples = tmp_path / "examples"
    session = Session(demo, cache_dir=tmp_path / "cache", examples_dir=examples)
    session.open_scan(image, str(phantom["ct"]))
    write_accepted(examples, session.scan_id, str(phantom["ct"]), "liver", 1, phantom["values"] == 1, image,
                   "other-model", "0" * 64)
    fresh = Session(demo, cache_dir=tmp_path / "cache", examples_dir=examples)
    with caplog.at_level(logging.WARNING, logger="coralbay.interactive"):
        assert fresh.restore_examples() == 0
        fresh.open_scan(image, str(phantom["ct"]))
    assert fresh.structures == {} and "another encoder" in caplog.text


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("tiny-teach")
    bundle = make_tiny_bundle(folder / "tiny-seg")
    other = make_tiny_bundle(folder / "tiny-other", seed=1)
    return {"bundle": bundle, "other": other}


def _accept_reference(examples: Path, phantom: dict, bundle_dir: Path, names=("liver", "spleen")) -> None:
    bundle = load_bundle(str(bundle_dir))
    digest = encoder_digest(bundle.network)
    for value, name in enumerate(names, start=1):
        write_accepted(examples, f"scan-{digest[:8]}", str(phantom["ct"]), name, value, phantom["values"] == value,
                       phantom["image"], bundle.manifest.name, digest)


def test_teach_writes_a_bundle_on_the_same_encoder_and_adds_it_to_the_catalog(phantom, tiny, tmp_path, cli):
    examples = tmp_path / "examples"
    _accept_reference(examples, phantom, tiny["bundle"])
    env = {"CORALBAY_HOME": str(tmp_path / "home")}
    out = tmp_path / "seg.nii.gz"
    # teach, then list the catalog and segment with the taught name: one interpreter, three commands
    done, listed, seg = run_cli_many(
        ["teach", examples, "--model", tiny["bundle"], "--name", "my-organs", "--steps", "3", "--progress", "jsonl"],
        ["models", "--json"],
        ["segment", phantom["ct"], "--model", "my-organs", "--output", out, "--progress", "none"], env=env)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert any(e["event"] == "progress" and e.get("stage") == "train" for e in events)
    bundle_dir = Path(events[-1]["outputs"]["bundle"])
    assert bundle_dir == tmp_path / "home" / "models" / "my-organs"
    taught = load_bundle(str(bundle_dir))
    assert [lab.name for lab in taught.manifest.labels] == ["liver", "spleen"]
    assert taught.manifest.labels.by_name("liver").terminology is not None  # from the base bundle's table
    assert encoder_digest(taught.network) == encoder_digest(load_bundle(str(tiny["bundle"])).network)
    assert "my-organs" in listed.stdout
    # The catalog name works where models are named: segment a scan with it.
    assert seg.returncode == 0, seg.stderr and out.is_file()

    # A name clash: one sentence, non-zero, the existing bundle untouched.
    before = {p.name: p.read_bytes() for p in bundle_dir.iterdir() if p.is_file()}
    again = cli("teach", examples, "--model", tiny["bundle"], "--name", "my-organs", "--steps", "3", env=env)
    assert again.returncode == 1 and "already in the catalog" in again.stderr
    assert {p.name: p.read_bytes() for p in bundle_dir.iterdir() if p.is_file()} == before


def test_teach_refuses_no_examples_and_examples_of_another_encoder(phantom, tiny, tmp_path):
    env = {"CORALBAY_HOME": str(tmp_path / "home")}
    empty = tmp_path / "empty"
    empty.mkdir()
    examples = tmp_path / "examples"
    _accept_reference(examples, phantom, tiny["other"])
    no_examples, done, bad_name = run_cli_many(  # one interpreter, three commands
        ["teach", empty, "--model", tiny["bundle"], "--name", "x"],
        ["teach", examples, "--model", tiny["bundle"], "--name", "x"],
        ["teach", examples, "--model", tiny["other"], "--name", "My Organs"], env=env)
    assert no_examples.returncode == 1 and "holds no accepted structures" in no_examples.stderr
    assert done.returncode == 1 and "encoder differs" in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "home" / "models" / "x").exists()
    assert bad_name.returncode == 2 and "may hold only" in bad_name.stderr


def _weights(bundle_dir: Path) -> dict:
    return load_bundle(str(bundle_dir)).network.state_dict()


def test_teach_records_its_examples_and_continues_incrementally(phantom, tiny, tmp_path):
    """The taught bundle records the examples it saw; `--from` continues a model taught before on the
    same encoder (all its weights, the output layer too when the structures are the same), and is
    refused for a model of another encoder."""
    examples = tmp_path / "examples"
    _accept_reference(examples, phantom, tiny["bundle"])
    env = {"CORALBAY_HOME": str(tmp_path / "home")}
    first, later = tmp_path / "first", tmp_path / "later"
    # Taught, continued with a learning rate of almost zero, refused: one interpreter, in this order.
    done, continued, refused = run_cli_many(
        ["teach", examples, "--model", tiny["bundle"], "--name", "first", "--output", first, "--steps", "2",
         "--no-catalog"],
        ["teach", examples, "--model", tiny["bundle"], "--name", "later", "--output", later, "--from", first,
         "--steps", "1", "--lr", "1e-12", "--no-catalog"],
        ["teach", examples, "--model", tiny["bundle"], "--name", "x", "--from", tiny["other"],
         "--no-catalog", "--output", tmp_path / "x"], env=env)
    assert done.returncode == 0, done.stderr
    training = json.loads((first / "manifest.json").read_text())["metrics"]["training"]
    scan_id = read_examples(examples)[0].scan_id
    assert training["examples"] == [{"scan_id": scan_id, "structures": ["liver", "spleen"]}]
    assert training["stopped"] == "steps" and set(training["holdout_dice"]) == {"liver", "spleen"}

    # A learning rate of almost zero: the continued model is the one it started from, output layer included
    # (a teach from the base model starts its output layer as a fresh linear probe instead).
    assert continued.returncode == 0, continued.stderr
    before, after, base = _weights(first), _weights(later), _weights(tiny["bundle"])
    for key in ("decoder.out.conv.conv.weight", "decoder.decoder2.conv_block.conv1.conv.weight"):
        assert torch.allclose(before[key], after[key], atol=1e-6), key
    assert not torch.allclose(before["decoder.out.conv.conv.weight"], base["decoder.out.conv.conv.weight"][:3])
    manifest = json.loads((later / "manifest.json").read_text())
    assert "--from" in manifest["reproduce"] and "continued from" in manifest["description"]

    assert refused.returncode == 1 and "was not taught on the encoder" in refused.stderr
    assert refused.stderr.count("\n") == 1 and not (tmp_path / "x").exists()


def test_teach_warns_about_a_structure_too_small_to_learn_and_keeps_to_its_time_budget(phantom, tiny, tmp_path,
                                                                                         cli):
    bundle = load_bundle(str(tiny["bundle"]))
    digest = encoder_digest(bundle.network)
    examples = tmp_path / "examples"
    speck = np.zeros(phantom["values"].shape, bool)
    speck[20:22, 20:22, 20:22] = True  # 8 voxels of 3 mm: a few voxels on the 4 mm model grid
    write_accepted(examples, "scan-a", str(phantom["ct"]), "liver", 1, phantom["values"] == 1, phantom["image"],
                   bundle.manifest.name, digest)
    write_accepted(examples, "scan-a", str(phantom["ct"]), "speck", 2, speck, phantom["image"],
                   bundle.manifest.name, digest)
    out = tmp_path / "taught"
    done = cli("teach", examples, "--model", tiny["bundle"], "--name", "t", "--output", out, "--minutes", "1e-6",
               "--no-catalog", env={"CORALBAY_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    assert "warning: speck covers only" in done.stderr and "unlikely to learn it" in done.stderr
    training = json.loads((out / "manifest.json").read_text())["metrics"]["training"]
    assert training["stopped"] == "time budget" and training["steps"] == 1
    assert any(w.startswith("speck covers only") for w in training["warnings"])


def test_eval_interactive_reads_a_totalsegmentator_labels_json(phantom, tmp_path):
    """labels.json beside the label map names the structures; --labels-table overrides it."""
    folder = tmp_path / "ts"
    folder.mkdir()
    labels = folder / "seg.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(phantom["labels"])), str(labels))
    (folder / "labels.json").write_text(json.dumps({"1": "leber", "2": "milz"}))
    table, nothing = tmp_path / "table.json", tmp_path / "nothing.json"
    table.write_text(json.dumps({"3": "niere_links"}))
    nothing.write_text(json.dumps({"99": "nothing"}))
    evaluate = ("eval-interactive", phantom["ct"], labels, "--model", "demo-phantom-seg")
    quick = ("--clicks", "1", "--no-baseline", "--cache", tmp_path / "cache")
    named, overridden, refused = run_cli_many(  # one interpreter, three commands
        [*evaluate, "--structures", "milz", *quick, "--json", tmp_path / "eval.json"],
        [*evaluate, "--labels-table", table, *quick, "--json", tmp_path / "table-eval.json"],
        [*evaluate, "--labels-table", nothing, "--json", tmp_path / "none.json"])
    assert named.returncode == 0, named.stderr
    structures = json.loads((tmp_path / "eval.json").read_text())["structures"]
    assert [(s["name"], s["value"]) for s in structures] == [("milz", 2)]
    assert overridden.returncode == 0, overridden.stderr
    assert [s["name"] for s in json.loads((tmp_path / "table-eval.json").read_text())["structures"]] == ["niere_links"]
    assert refused.returncode == 1 and "names none of its label values" in refused.stderr
    assert not (tmp_path / "none.json").exists()


def test_a_structure_starts_from_the_taught_models_proposal_and_is_corrected(tmp_path):
    """`interact --propose-with M`: `start` of a structure M knows answers with M's segmentation
    (entered as a segment to refine), a structure it does not know starts empty, and a click corrects."""
    import os
    import subprocess
    import sys

    # The demo bundle's field of view (on the small phantom above it finds nothing: a model proposes
    # only what it learned); here it stands in for a taught model that knows the liver.
    ph = generate_phantom(10007, spacing=3.0, size_mm=(240, 200, 140), lesions=False)
    ct, labels = tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz"
    write_phantom(ph, ct, labels)
    phantom = {"ct": ct, "image": ph.image, "values": sitk.GetArrayFromImage(ph.labels)}
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo / "CoralBaySlicer"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "coralbay", "interact", "--model", "demo-phantom-seg", "--propose-with",
               "demo-phantom-seg", "--output-dir", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(number: int, **request) -> dict:
        proc.stdin.write(json.dumps({"id": number, **request}) + "\n")
        proc.stdin.flush()
        for line in proc.stdout:
            event = json.loads(line)
            if event.get("id") == number and event["event"] in ("result", "error"):
                return event
        raise AssertionError("the engine ended")

    try:
        assert ask(1, type="open", image=str(phantom["ct"]))["event"] == "result"
        started = ask(2, type="start", name="liver")
        assert started["event"] == "result" and started["proposed_by"] == "demo-phantom-seg"
        liver = phantom["values"] == 1
        proposal = sitk.GetArrayFromImage(sitk.ReadImage(started["mask"])) > 0
        assert S.dice(proposal, liver) > 0.5
        click = S.next_click(proposal, liver, phantom["image"])
        corrected = ask(3, type="point", lps=list(click.lps), positive=click.positive)
        assert corrected["event"] == "result" and corrected["answer"] > started["answer"]
        assert S.dice(sitk.GetArrayFromImage(sitk.ReadImage(corrected["mask"])) > 0, liver) > 0.5
        unknown = ask(4, type="start", name="gallbladder")
        assert unknown["event"] == "result" and "proposed_by" not in unknown and "mask" not in unknown
        ask(5, type="quit")
    finally:
        proc.kill() if proc.poll() is None else None
        proc.wait(timeout=30)


def test_propose_with_a_classifier_is_refused(tmp_path, cli):
    done = cli("interact", "--model", "demo-phantom-seg", "--propose-with", "demo-phantom-cls",
               "--output-dir", tmp_path / "out", input="")
    assert done.returncode == 2 and "does not segment structures" in done.stderr
