"""The same prompts give the same mask (issue 25): an answer is a function of the scan, the model,
the prompts and the accepted structures, nothing else.

Written against the Session and `coralbay interact` APIs only (not the method's internals), so the
contract keeps holding whatever the method becomes:
- features computed eagerly, lazily (a click before any window), partly (a click after some
  background windows) or read from the cache give identical answers, voxel for voxel;
- the real `coralbay interact` engine SIGKILLed (between requests and during a click), restarted
  with the same folders and the prompts replayed, gives the uninterrupted answers voxel for voxel,
  with and without a structure accepted before.

Real engine: the bundled demo encoder (4 mm grid, 64^3 windows at overlap 0.5) on a phantom wide
enough for several windows (400 mm across), so that lazy features really are partial.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from conftest import write_interactive_phantom

from coralbay.bundle.loader import load_bundle
from coralbay.interactive import prompts as P
from coralbay.interactive.session import Session

REPO = Path(__file__).resolve().parents[2]
STRUCTURE = "kidney_left"
ACCEPTED = "liver"
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("determinism")
    ct, labels = write_interactive_phantom(folder, size_mm=(400, 240, 200), spacing=4.0)
    table = {e["name"]: e["value"] for e in json.loads((folder / "labels.labels.json").read_text())["labels"]}
    image = sitk.ReadImage(str(ct))
    label_array = sitk.GetArrayFromImage(sitk.ReadImage(str(labels)))
    reference = label_array == table[STRUCTURE]
    return {"ct": ct, "image": image, "folder": folder, "value": table[STRUCTURE],
            "clicks": _fixed_clicks(image, reference),
            "accepted_click": _deepest_lps(image, label_array == table[ACCEPTED])}


def _deepest_lps(image: sitk.Image, mask: np.ndarray) -> list[float]:
    depth = ndimage.distance_transform_edt(mask, sampling=image.GetSpacing()[::-1])
    z, y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return list(image.TransformIndexToPhysicalPoint((int(x), int(y), int(z))))


def _fixed_clicks(image: sitk.Image, reference: np.ndarray) -> list[tuple[list[float], bool]]:
    """Three prompts fixed by the reference alone (the same for every run): the structure's deepest
    point, a negative click 12 mm outside it, and a positive click at its farthest voxel from the first."""
    first = _deepest_lps(image, reference)
    ring = ndimage.binary_dilation(reference, iterations=3) & ~reference
    outside = np.argwhere(ring)[len(np.argwhere(ring)) // 2]
    inside = np.argwhere(ndimage.binary_erosion(reference))
    start = np.asarray(image.TransformPhysicalPointToIndex(first))[::-1]
    far = inside[int(np.argmax(((inside - start) ** 2).sum(1)))]
    lps = lambda zyx: list(image.TransformIndexToPhysicalPoint(tuple(int(v) for v in zyx[::-1])))  # noqa: E731
    return [(first, True), (lps(outside), False), (lps(far), True)]


@pytest.fixture(scope="module")
def demo():
    return load_bundle("demo-phantom-seg")


def _answers(session: Session, wide: dict, between=None) -> list[np.ndarray]:
    """The fixed clicks' masks; `between(session)` runs before each click (the features' timing)."""
    session.start(STRUCTURE, wide["value"])
    masks = []
    for lps, positive in wide["clicks"]:
        if between is not None:
            between(session)
        masks.append(session.prompt(P.point(wide["image"], lps, positive)).mask.copy())
    return masks


def _assert_same(expected: list[np.ndarray], got: list[np.ndarray], what: str) -> None:
    assert len(expected) == len(got)
    for i, (a, b) in enumerate(zip(expected, got), 1):
        assert a.any(), f"click {i} gave an empty mask: nothing would be compared"
        assert np.array_equal(a, b), f"{what}: click {i} differs in {int(np.count_nonzero(a != b))} voxels"


def test_eager_lazy_partial_and_cached_features_give_identical_answers(wide, demo, tmp_path):
    cache = tmp_path / "cache"
    eager = Session(demo, cache_dir=cache, lazy=False)
    eager.open_scan(wide["image"])
    assert eager.features.complete and list(cache.glob("*.npz")), "the eager session writes the cache"
    expected = _answers(eager, wide)

    lazy = Session(demo)                      # no cache: every click computes what it needs, nothing more
    lazy.open_scan(wide["image"])
    done: list[float] = []
    got = _answers(lazy, wide, between=lambda s: done.append(s.features.fraction))
    assert done[0] == 0.0, "the first click must come before any window (else nothing lazy is tested)"
    _assert_same(expected, got, "lazy features")

    # One background window before each click: in MONAI's order, not the clicks' (the first is one
    # the first click does not need), so each click finds another set of windows computed.
    partial = Session(demo)
    partial.open_scan(wide["image"])
    done.clear()
    got = _answers(partial, wide, between=lambda s: (s.compute_features(1), done.append(s.features.fraction)))
    assert 0.0 < done[0] < 1.0, done
    _assert_same(expected, got, "partial features")

    cached = Session(demo, cache_dir=cache)
    assert cached.open_scan(wide["image"]).from_cache
    _assert_same(expected, _answers(cached, wide), "cached features")


def test_a_click_before_the_features_are_complete_equals_the_click_after(wide, demo):
    before = Session(demo)
    before.open_scan(wide["image"])
    early = _answers(before, wide)
    after = Session(demo)
    after.open_scan(wide["image"])
    after.compute_features()
    assert not after.features_pending
    _assert_same(early, _answers(after, wide), "clicked before the features were complete")


# ------------------------------------------------------------------------ the real engine, SIGKILLed

class Engine:
    """`coralbay interact` as a real subprocess, driven over JSON lines."""

    def __init__(self, folder: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO / "CoralBaySlicer"), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coralbay", "interact", "--model", "demo-phantom-seg", "--device", "cpu",
             "--output-dir", str(folder / "out"), "--cache", str(folder / "cache"),
             "--examples", str(folder / "examples")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
        self.counter = 0
        self.until(lambda e: e.get("request") == "ready")

    def send(self, kind: str, **fields) -> int:
        self.counter += 1
        self.proc.stdin.write(json.dumps({"id": self.counter, "type": kind, **fields}) + "\n")
        self.proc.stdin.flush()
        return self.counter

    def until(self, done) -> dict:
        for line in self.proc.stdout:
            event = json.loads(line)
            if done(event):
                return event
        raise AssertionError(f"the engine ended (exit code {self.proc.wait()}) before answering")

    def ask(self, kind: str, **fields) -> dict:
        number = self.send(kind, **fields)
        event = self.until(lambda e: e.get("id") == number and e["event"] in ("result", "error"))
        assert event["event"] == "result", event
        return event

    def click(self, lps: list[float], positive: bool) -> np.ndarray:
        event = self.ask("point", name=STRUCTURE, lps=lps, positive=positive)
        return sitk.GetArrayFromImage(sitk.ReadImage(event["mask"])) > 0

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def quit(self) -> None:
        if self.proc.poll() is None:
            self.send("quit")
            self.proc.wait(timeout=60)


def _begin(engine: Engine, wide: dict, accept_first: bool) -> None:
    engine.ask("open", image=str(wide["ct"]))
    if accept_first:
        engine.ask("start", name=ACCEPTED, propose=False)
        engine.ask("point", name=ACCEPTED, lps=wide["accepted_click"], positive=True)
        engine.ask("accept", name=ACCEPTED)
    engine.ask("start", name=STRUCTURE, value=wide["value"], propose=False)


@pytest.mark.parametrize("accept_first", [False, True], ids=["no-accepted", "after-accept"])
def test_replay_after_sigkill_equals_the_uninterrupted_answers(wide, tmp_path, accept_first):
    clicks = wide["clicks"]
    engine = Engine(tmp_path / "uninterrupted")
    try:
        _begin(engine, wide, accept_first)
        expected = [engine.click(lps, positive) for lps, positive in clicks]
    finally:
        engine.quit()

    folder = tmp_path / "killed"
    engine = Engine(folder)
    try:
        _begin(engine, wide, accept_first)
        first = engine.click(*clicks[0])
        engine.kill()                                   # between requests
    finally:
        engine.quit()
    engine = Engine(folder)                              # the same folders, as the Slicer module restarts it
    try:
        opened = engine.ask("open", image=str(wide["ct"]))
        assert list(opened["accepted"]) == ([ACCEPTED] if accept_first else []), opened["accepted"]
        engine.ask("start", name=STRUCTURE, value=wide["value"], propose=False)
        replayed = [engine.click(*clicks[0])]
        engine.send("point", name=STRUCTURE, lps=clicks[1][0], positive=clicks[1][1])
        engine.kill()                                   # during a click
    finally:
        engine.quit()
    engine = Engine(folder)
    try:
        engine.ask("open", image=str(wide["ct"]))
        engine.ask("start", name=STRUCTURE, value=wide["value"], propose=False)
        again = [engine.click(lps, positive) for lps, positive in clicks]
        undone = engine.ask("undo", name=STRUCTURE)
        undone_mask = sitk.GetArrayFromImage(sitk.ReadImage(undone["mask"])) > 0
    finally:
        engine.quit()
    _assert_same(expected[:1], [first], "before the kill")
    _assert_same(expected[:1], replayed, "replayed after a kill between requests")
    _assert_same(expected, again, "replayed after a kill during a click")
    _assert_same(expected[1:2], [undone_mask], "undo after the restart")
