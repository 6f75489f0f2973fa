"""Lazy features: `open` computes no encoder window, an answer none either (it is a graph cut on
the scan's intensities), a request for features (a box, a working region) computes every window
covering those voxels, the rest come later, and only the complete volume reaches the cache; the
order does not change a value (test_interactive_determinism.py checks the answers).

Real engine: the bundled demo encoder (4 mm grid, 64^3 windows at overlap 0.5) on a phantom wide
enough for several windows (400 mm across: three windows along x, one along y and z).
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

from conftest import write_interactive_phantom

from coralbay.bundle.loader import load_bundle
from coralbay.interactive import features as feats
from coralbay.interactive import prompts as P
from coralbay.interactive import simulate as S
from coralbay.interactive.session import Session

REPO = Path(__file__).resolve().parents[2]
STRUCTURE = "kidney_left"


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("lazy")
    ct, labels = write_interactive_phantom(folder, size_mm=(400, 240, 200), spacing=4.0)
    table = json.loads((folder / "labels.labels.json").read_text())["labels"]
    value = next(e["value"] for e in table if e["name"] == STRUCTURE)
    image = sitk.ReadImage(str(ct))
    return {"ct": ct, "image": image, "folder": folder, "value": value,
            "reference": sitk.GetArrayFromImage(sitk.ReadImage(str(labels))) == value}


@pytest.fixture(scope="module")
def demo():
    return load_bundle("demo-phantom-seg")


def _clicks(session: Session, wide: dict, count: int) -> list[np.ndarray]:
    image, reference = wide["image"], wide["reference"]
    session.start(STRUCTURE, wide["value"])
    masks, prediction = [], None
    for _ in range(count):
        click = S.next_click(prediction, reference, image)
        prediction = session.prompt(P.point(image, click.lps, click.positive)).mask
        masks.append(prediction)
    return masks


def test_windows_come_when_asked_and_the_cache_waits_for_all(wide, demo, tmp_path):
    cache = tmp_path / "cache"
    session = Session(demo, cache_dir=cache)
    session.open_scan(wide["image"])
    lazy = session.features
    total = len(lazy.run.todo)
    assert total >= 3 and len(lazy.pending) == total and not list(cache.glob("*.npz"))

    # A method asks for a box at one end of the scan: exactly the windows meeting it are computed,
    # and the box's values are final at once, while the other end has none yet.
    lower, upper = (0, 0, 0), (8, 8, 8)
    corner = lazy.region(lower, upper).copy()
    done = total - len(lazy.pending)
    assert done == len(lazy.windows_in_box(lower, upper)) and 0 < done < total, f"{done} of {total} windows"
    assert lazy.covered[:8, :8, :8].all() and not lazy.covered[-1].any()
    assert not list(cache.glob("*.npz")), "partial features must never reach the cache"

    # an answer is a graph cut on the scan's intensities: it computes no window
    first = _clicks(session, wide, 1)[0]
    assert total - len(lazy.pending) == done, "an answer computed feature windows"
    assert S.dice(first, wide["reference"]) > 0.5   # one click, no box (0.66 measured: a click, not an answer)
    assert not list(cache.glob("*.npz")), "partial features must never reach the cache"

    session.compute_features()
    assert lazy.complete and list(cache.glob("*.npz")) == [feats.cache_path(cache, lazy.volume.key)]

    # computed in another order than MONAI's (a corner, then the click's windows): the eager
    # features bit for bit (integer blending sums), the corner's early values included
    eager = feats.scan_features(wide["image"], demo, None)
    assert np.array_equal(lazy.volume.features, eager.features)
    assert np.array_equal(corner, eager.features[:, :8, :8, :8])
    cached = feats.read_cache(cache, lazy.volume.key)
    assert cached is not None and np.array_equal(cached.features, lazy.volume.features)
    # a second session on the scan starts complete, from the cache
    again = Session(demo, cache_dir=cache)
    volume = again.open_scan(wide["image"])
    assert volume.from_cache and again.features.complete


def test_once_complete_the_answers_equal_the_eager_sessions(wide, demo):
    eager = Session(demo, lazy=False)
    eager.open_scan(wide["image"])
    assert eager.features.complete
    lazy = Session(demo)
    lazy.open_scan(wide["image"])
    lazy.compute_features()              # in MONAI's order: the eager features bit for bit
    assert np.array_equal(lazy.volume.features, eager.volume.features)
    for a, b in zip(_clicks(lazy, wide, 3), _clicks(eager, wide, 3)):
        assert np.array_equal(a, b)


def test_interact_opens_at_once_and_completes_between_requests(wide, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "CoralBaySlicer"), "OMP_NUM_THREADS": "1"}
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "coralbay", "interact", "--model", "demo-phantom-seg",
                             "--output-dir", str(tmp_path / "out"), "--cache", str(cache)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)

    def send(lines: list[dict]) -> None:
        proc.stdin.write("".join(json.dumps(r) + "\n" for r in lines))
        proc.stdin.flush()

    def until(done) -> list[dict]:
        seen = []
        for line in proc.stdout:
            seen.append(json.loads(line))
            if done(seen[-1]):
                return seen
        raise AssertionError(proc.stderr.read())

    try:
        until(lambda e: e.get("request") == "ready")
        # open and cancel at once: the open answers (or is cancelled), the background windows pause
        send([{"id": 1, "type": "open", "image": str(wide["ct"])}, {"id": 2, "type": "cancel"}])
        until(lambda e: e.get("id") == 2)
        send([{"id": 3, "type": "status"}])
        status = until(lambda e: e.get("id") == 3 and e["event"] == "result")[-1]
        assert status.get("features_complete", False) is False   # no scan (open cancelled) or paused
        assert not list(cache.glob("*.npz"))
        send([{"id": 4, "type": "open", "image": str(wide["ct"])}])
        opened = until(lambda e: e.get("id") == 4 and e["event"] == "result")[-1]
        assert opened["features_complete"] is False and opened["features_fraction"] < 1.0
        events = until(lambda e: e.get("request") == "open" and e["event"] == "progress"
                       and e.get("message") == "features complete")
        assert [e["fraction"] for e in events if e["event"] == "progress"][-1] == 1.0
        assert len(list(cache.glob("*.npz"))) == 1
        send([{"id": 5, "type": "status"}])
        assert until(lambda e: e.get("id") == 5 and e["event"] == "result")[-1]["features_complete"] is True
    finally:
        if proc.poll() is None:
            send([{"type": "quit"}])
        proc.wait(timeout=60)
