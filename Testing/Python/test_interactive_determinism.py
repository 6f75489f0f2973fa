"""The same prompts give the same mask (issue 25): an answer is a function of the scan, the model,
the prompts and the accepted structures, nothing else.

Written against the Session and `coralbay interact` APIs only (not the method's internals), so the
contract keeps holding whatever the method becomes:
- features computed eagerly, lazily (a click before any window), partly (a click after some
  background windows) or read from the cache give identical answers, voxel for voxel;
- the real `coralbay interact` engine SIGKILLed (between requests and during a click), restarted
  with the same folders and the prompts replayed, gives the uninterrupted answers voxel for voxel,
  undo included, with and without a structure accepted before.

Real engine: the bundled demo encoder (4 mm grid, 64^3 windows at overlap 0.5); the feature tests
on a phantom wide enough for three windows (400 mm across), so that lazy features really are
partial, the SIGKILL test on the small phantom of the other interactive tests (four processes).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
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
TIMEOUT_S = 300   # an engine that stops answering is killed, and the test fails, after this long


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
    """Two prompts fixed by the reference alone (the same for every run): the structure's deepest
    point, then a negative click 12 mm outside it (an answer that starts from a previous one)."""
    ring = ndimage.binary_dilation(reference, iterations=3) & ~reference
    outside = np.argwhere(ring)[int(np.count_nonzero(ring)) // 2]
    return [(_deepest_lps(image, reference), True),
            (list(image.TransformIndexToPhysicalPoint(tuple(int(v) for v in outside[::-1]))), False)]


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
    """One session: a structure clicked before any window is computed, then every window, then
    another structure given the same click: the same mask (the answer's draws, region and
    features depend on the prompts, not on the name nor on the time of the click)."""
    session = Session(demo)
    session.open_scan(wide["image"])
    lps, positive = wide["clicks"][0]
    session.start("early")
    assert session.features.fraction == 0.0
    early = session.prompt(P.point(wide["image"], lps, positive)).mask.copy()
    session.compute_features()
    assert not session.features_pending
    session.start("late")
    late = session.prompt(P.point(wide["image"], lps, positive)).mask
    _assert_same([early], [late], "clicked before the features were complete")


# ------------------------------------------------------------------------ the real engine, SIGKILLed

class Engine:
    """`coralbay interact` as a real subprocess, driven over JSON lines."""

    def __init__(self, folder: Path, cache: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO / "CoralBaySlicer"), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coralbay", "interact", "--model", "demo-phantom-seg", "--device", "cpu",
             "--output-dir", str(folder / "out"), "--cache", str(cache), "--examples", str(folder / "examples")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
        self.counter = 0
        self.watchdog = threading.Timer(TIMEOUT_S, self.proc.kill)
        self.watchdog.daemon = True
        self.watchdog.start()
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

    def click(self, name: str, lps: list[float], positive: bool) -> np.ndarray:
        return self.mask_of(self.ask("point", name=name, lps=lps, positive=positive))

    @staticmethod
    def mask_of(event: dict) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.ReadImage(event["mask"])) > 0

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def quit(self) -> None:
        self.watchdog.cancel()
        if self.proc.poll() is None:
            self.send("quit")
            self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict:
    """The small phantom of the other interactive tests (one window): four engine processes stay cheap."""
    folder = tmp_path_factory.mktemp("determinism-small")
    ct, labels = write_interactive_phantom(folder)
    table = {e["name"]: e["value"] for e in json.loads((folder / "labels.labels.json").read_text())["labels"]}
    image = sitk.ReadImage(str(ct))
    label_array = sitk.GetArrayFromImage(sitk.ReadImage(str(labels)))
    return {"ct": str(ct), "clicks": _fixed_clicks(image, label_array == table[STRUCTURE]),
            "accepted_click": _deepest_lps(image, label_array == table[ACCEPTED])}


def test_replay_after_sigkill_equals_the_uninterrupted_answers(small, tmp_path):
    """The uninterrupted run: a structure clicked with nothing accepted, then the liver accepted and
    a second structure clicked. The interrupted run: SIGKILLed during a click, and again between
    requests after the accept; each restart re-opens the scan and replays the structure in
    progress as the Slicer module does (same folders: the accepted liver comes back from disk, the
    features and the reference projection from the cache the uninterrupted run wrote)."""
    clicks = small["clicks"]
    first, second = STRUCTURE, "kidney_again"

    def accept_liver(engine: Engine) -> None:
        engine.ask("start", name=ACCEPTED, propose=False)
        engine.ask("point", name=ACCEPTED, lps=small["accepted_click"], positive=True)
        engine.ask("accept", name=ACCEPTED)

    cache = tmp_path / "cache"     # shared, as on one machine: the interrupted runs read what this one wrote
    engine = Engine(tmp_path / "uninterrupted", cache)
    try:
        engine.ask("open", image=small["ct"])
        engine.ask("start", name=first, propose=False)
        plain = [engine.click(first, *c) for c in clicks]
        accept_liver(engine)
        engine.ask("start", name=second, propose=False)
        after_accept = [engine.click(second, *c) for c in clicks]
    finally:
        engine.quit()
    assert len(list((cache / "projections").glob("*.npz"))) == 1, "the reference projection is kept for a restart"

    folder = tmp_path / "interrupted"
    engine = Engine(folder, cache)
    try:
        engine.ask("open", image=small["ct"])
        engine.ask("start", name=first, propose=False)
        before_kill = engine.click(first, *clicks[0])
        engine.send("point", name=first, lps=clicks[1][0], positive=clicks[1][1])
        engine.kill()                                   # during a click
    finally:
        engine.quit()
    engine = Engine(folder, cache)                      # the same folders, as the Slicer module restarts it
    try:
        assert engine.ask("open", image=small["ct"])["accepted"] == {}
        engine.ask("start", name=first, propose=False)
        replayed = [engine.click(first, *c) for c in clicks]
        undone = engine.mask_of(engine.ask("undo", name=first))
        accept_liver(engine)
        engine.ask("start", name=second, propose=False)
        second_before_kill = engine.click(second, *clicks[0])
        engine.kill()                                   # between requests, a structure accepted
    finally:
        engine.quit()
    engine = Engine(folder, cache)
    try:
        assert list(engine.ask("open", image=small["ct"])["accepted"]) == [ACCEPTED]
        engine.ask("start", name=second, propose=False)
        replayed_after_accept = [engine.click(second, *c) for c in clicks]
        undone_after_accept = engine.mask_of(engine.ask("undo", name=second))
    finally:
        engine.quit()

    _assert_same(plain[:1], [before_kill], "before the kill")
    _assert_same(plain, replayed, "replayed after a kill during a click")
    _assert_same(plain[:1], [undone], "undo after the restart")
    _assert_same(after_accept[:1], [second_before_kill], "after the accept, before the kill")
    _assert_same(after_accept, replayed_after_accept, "replayed after a kill, a structure accepted")
    _assert_same(after_accept[:1], [undone_after_accept], "undo after the restart, a structure accepted")


def test_examples_from_several_scans_are_held_in_the_same_order_whatever_order_they_were_accepted():
    """A restarted engine reloads accepted structures scan by scan (scan-id order); the live session
    accepted them in the user's order. The head is fitted on the rows in the order they are held, so
    both must hold them alike; accepting a structure again on a scan replaces its rows there."""
    from coralbay.interactive.session import Examples

    rng = np.random.default_rng(0)
    rows = {scan: (rng.normal(size=(4, 3)), rng.normal(size=(5, 3))) for scan in ("scan-b", "scan-a", "scan-c")}
    live, restored = Examples(), Examples()
    for scan in ("scan-b", "scan-a", "scan-c"):  # the user's order
        live.add("liver", scan, *rows[scan])
    live.add("liver", "scan-a", *rows["scan-a"])  # accepted again on scan-a: replaced, not doubled
    for scan in sorted(rows):  # what a restart reads from disk
        restored.add("liver", scan, *rows[scan])
    for held in (Examples.positive, Examples.negative):
        assert len(held(live, "liver")) == 3
        assert all(np.array_equal(a, b) for a, b in zip(held(live, "liver"), held(restored, "liver")))
    assert live.names() == ["liver"] and live.knows("liver") and not live.knows("spleen")
