"""Interactive segmentation: `coralbay interact` driven as a real subprocess with simulated clicks,
bad prompts, cancel, and the feature cache refusing corrupt or foreign files.

The click test uses the bundled demo encoder (random F=6 weights carry too little to beat a
random walker) on a small phantom (3 mm, 180 x 150 x 120 mm: one sliding window).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_tiny_bundle

from coralbay.bundle.loader import load_bundle
from coralbay.interactive import features as feats
from coralbay.interactive import simulate as S
from coralbay.phantom import generate_phantom, write_phantom

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "CoralBaySlicer"), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def small_phantom(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("interactive")
    ph = generate_phantom(10007, spacing=3.0, size_mm=(180, 150, 120), lesions=False, direction="LPS")
    ct, labels = folder / "ct.nii.gz", folder / "labels.nii.gz"
    write_phantom(ph, ct, labels)
    return ct, labels


class Engine:
    """`coralbay interact` in a subprocess: one request in, events out until its answer."""

    def __init__(self, tmp: Path, model: str = "demo-phantom-seg", cache: Path | None = None) -> None:
        command = [sys.executable, "-m", "coralbay", "interact", "--model", model, "--output-dir", str(tmp / "out"),
                   "--examples", str(tmp / "examples")]
        if cache is not None:
            command += ["--cache", str(cache)]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=ENV, cwd=REPO)
        self.next_id = 0
        ready = self._read_until(lambda e: e.get("request") == "ready")
        assert ready["event"] == "result"

    def _read_until(self, done) -> dict:
        for line in self.proc.stdout:
            event = json.loads(line)
            if done(event):
                return event
        raise AssertionError(f"the engine ended: {self.proc.stderr.read()}")

    def send(self, **request) -> int:
        self.next_id += 1
        self.proc.stdin.write(json.dumps({"id": self.next_id, **request}) + "\n")
        self.proc.stdin.flush()
        return self.next_id

    def answer(self, number: int) -> dict:
        return self._read_until(lambda e: e.get("id") == number and e["event"] in ("result", "error"))

    def ask(self, **request) -> dict:
        return self.answer(self.send(**request))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.ask(type="quit")
        self.proc.wait(timeout=30)


def test_clicks_raise_dice_then_undo_redo_and_accept(small_phantom, tmp_path):
    ct, labels = small_phantom
    image = sitk.ReadImage(str(ct))
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(labels))) == 1  # liver
    engine = Engine(tmp_path)
    try:
        opened = engine.ask(type="open", image=str(ct))
        assert opened["event"] == "result" and opened["from_cache"] is False, opened
        assert engine.ask(type="start", name="liver", value=1)["event"] == "result"
        prediction, ours, clicks = None, [], []
        for _ in range(5):
            click = S.next_click(prediction, reference, image)
            clicks.append(click)
            answer = engine.ask(type="point", lps=list(click.lps), positive=click.positive)
            assert answer["event"] == "result", answer
            mask = sitk.ReadImage(answer["mask"])
            assert mask.GetSize() == image.GetSize() and mask.GetOrigin() == image.GetOrigin()
            prediction = sitk.GetArrayFromImage(mask) > 0
            ours.append(S.dice(prediction, reference))
        assert max(ours[2:]) > ours[0], ours
        # undo, redo and accept; the accepted structure is kept as an example
        assert engine.ask(type="undo")["event"] == "result"
        assert engine.ask(type="redo")["event"] == "result"
        accepted = engine.ask(type="accept")
        assert accepted["event"] == "result" and accepted["voxels"] > 0
        examples = list((tmp_path / "examples").glob("*/example.json"))
        assert len(examples) == 1 and "liver" in json.loads(examples[0].read_text())["structures"]
        # a name clash is refused and the accepted work is untouched
        clash = engine.ask(type="start", name="liver")
        assert clash["event"] == "error" and "already accepted" in clash["message"]
        written = engine.ask(type="labels")
        kept = sitk.GetArrayFromImage(sitk.ReadImage(written["path"])) == 1
        assert kept.sum() == accepted["voxels"]
        # a positive point on the accepted liver could change nothing: one sentence, not a silent no-op
        assert engine.ask(type="start", name="spleen", value=2)["event"] == "result"
        on_liver = image.TransformIndexToPhysicalPoint([int(v) for v in np.argwhere(kept)[0][::-1]])
        refused = engine.ask(type="point", lps=list(on_liver), positive=True)
        assert refused["event"] == "error" and "accepted structure liver" in refused["message"], refused
        assert engine.ask(type="status")["structures"][-1]["prompts"] == 0
    finally:
        engine.close()


def test_bad_prompts_get_one_sentence_and_the_session_goes_on(small_phantom, tmp_path):
    ct, _ = small_phantom
    engine = Engine(tmp_path)
    try:
        early = engine.ask(type="point", lps=[0, 0, 0], positive=True)
        assert early["event"] == "error" and early["message"] == "Open a scan first."
        assert engine.ask(type="open", image=str(ct))["event"] == "result"
        assert engine.ask(type="start", name="spleen")["event"] == "result"
        outside = engine.ask(type="point", lps=[5000, 0, 0], positive=True)
        assert outside["event"] == "error" and "outside the volume" in outside["message"]
        empty = tmp_path / "empty.nii.gz"
        blank = sitk.Image(sitk.ReadImage(str(ct)).GetSize(), sitk.sitkUInt8)
        blank.CopyInformation(sitk.ReadImage(str(ct)))
        sitk.WriteImage(blank, str(empty))
        scribble = engine.ask(type="scribble", path=str(empty))
        assert scribble["event"] == "error" and "scribble is empty" in scribble["message"]
        sneaky = engine.ask(type="start", name="../escape")
        assert sneaky["event"] == "error" and "may hold only" in sneaky["message"]
        unknown = engine.ask(type="paint")
        assert unknown["event"] == "error" and "Unknown request type" in unknown["message"]
        engine.proc.stdin.write("not json\n")
        engine.proc.stdin.flush()
        status = engine.ask(type="status")
        assert status["event"] == "result" and status["structures"][0]["prompts"] == 0
        assert status["structures"][0]["name"] == "spleen"
    finally:
        engine.close()


def test_cancel_stops_the_feature_computation(small_phantom, tmp_path):
    """Open and cancel together: the open is cancelled (or answered at once, features being lazy) and no
    window is computed in the background after the cancel, so no cache file appears."""
    ct, _ = small_phantom
    engine = Engine(tmp_path, cache=tmp_path / "fresh-cache")
    try:
        engine.next_id += 2
        opening, cancel = engine.next_id - 1, engine.next_id
        engine.proc.stdin.write(json.dumps({"id": opening, "type": "open", "image": str(ct)}) + "\n"
                                + json.dumps({"id": cancel, "type": "cancel"}) + "\n")
        engine.proc.stdin.flush()
        answer = engine.answer(opening)
        assert (answer["event"] == "error" and answer["message"] == "Cancelled.") or (
            answer["event"] == "result" and answer["features_complete"] is False), answer
        assert engine.answer(cancel)["event"] == "result"
        assert engine.ask(type="status")["event"] == "result"  # still serving
        assert not list((tmp_path / "fresh-cache").glob("*.npz"))
    finally:
        engine.close()


def test_corrupt_or_foreign_cache_is_recomputed(tmp_path):
    bundle = load_bundle(make_tiny_bundle(tmp_path / "tiny", seed=0))
    other = load_bundle(make_tiny_bundle(tmp_path / "tiny-other", seed=1))
    image = generate_phantom(10008, spacing=4.0, size_mm=(160, 140, 100), lesions=False).image
    cache = tmp_path / "cache"
    first = feats.scan_features(image, bundle, cache)
    assert not first.from_cache
    again = feats.scan_features(image, bundle, cache)
    assert again.from_cache and np.array_equal(again.features, first.features)
    # other encoder weights: another key, so the file is not used for them
    foreign = feats.scan_features(image, other, cache)
    assert not foreign.from_cache and foreign.key != first.key
    # a file under the right name but holding another key (copied from other weights) is refused
    path = feats.cache_path(cache, first.key)
    path.write_bytes(feats.cache_path(cache, foreign.key).read_bytes())
    assert feats.read_cache(cache, first.key) is None
    # flipped bytes inside the arrays: refused by the stored digest (or by the zip's CRC)
    feats.write_cache(cache, first)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert feats.read_cache(cache, first.key) is None
    path.write_bytes(b"not a zip at all")
    recomputed = feats.scan_features(image, bundle, cache)
    assert not recomputed.from_cache and np.array_equal(recomputed.features, first.features)
    assert feats.read_cache(cache, first.key) is not None  # rewritten


def test_background_sampling_on_a_grid_smaller_than_the_sample():
    from coralbay.interactive.head import random_background

    picks = random_background((20, 20, 3), np.random.default_rng(0), exclude=np.arange(10), count=6000)
    assert len(picks) == 1200 - 10 and picks.min() >= 10 and len(set(picks.tolist())) == len(picks)


def test_eval_interactive_refuses_an_odd_number_of_paths(small_phantom, tmp_path, cli):
    ct, _ = small_phantom
    done = cli("eval-interactive", ct, "--model", "demo-phantom-seg", "--json", tmp_path / "x.json")
    assert done.returncode == 2 and "CT LABELS pairs" in done.stderr and not (tmp_path / "x.json").exists()
