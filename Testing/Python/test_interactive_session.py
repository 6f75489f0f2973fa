"""CoralBaySlicerLib.interactive_session: the Slicer module's long-lived `coralbay interact` process,
driven as a real subprocess (demo encoder, small phantom as in test_interactive.py): requests that
return at once, answers polled, the process SIGKILLed mid-session and restarted with the scan and
the prompts replayed, Cancel that kills a request the engine cannot stop.

One session is shared by the tests of this file (they run in order) to keep them fast.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk

from coralbay.interactive import simulate as S
from conftest import write_interactive_phantom
from coralbay.interactive.messages import Event, Request
from CoralBaySlicerLib.interactive_session import (InteractiveSession, ReplayLog, SessionError, example_masks,
                                                   forget_scan, forget_unused_scans, interact_argv, keep_scan)

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 180


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("interactive-session")
    ct, labels = write_interactive_phantom(folder)
    image = sitk.ReadImage(str(ct))
    return {"ct": ct, "image": image, "liver": sitk.GetArrayFromImage(sitk.ReadImage(str(labels))) == 1,
            "folder": folder}


@pytest.fixture(scope="module")
def session(scan):
    env = {**os.environ, "PYTHONPATH": str(REPO / "CoralBaySlicer"), "OMP_NUM_THREADS": "1"}
    argv = interact_argv(sys.executable, "demo-phantom-seg", scan["folder"] / "out", scan["folder"] / "examples",
                         device="CPU")
    s = InteractiveSession(argv, env=env, cwd=scan["folder"])
    s.start()
    yield s
    s.close()
    assert not s.alive


def _mask(event) -> np.ndarray:
    assert event["event"] == "result", event
    return sitk.GetArrayFromImage(sitk.ReadImage(event["mask"])) > 0


def _click(scan, prediction):
    return S.next_click(prediction, scan["liver"], scan["image"])


def test_requests_return_at_once_and_answers_come_by_polling(session, scan):
    started = time.monotonic()
    opened = session.request("open", image=str(scan["ct"]))
    assert time.monotonic() - started < 0.5 and session.busy
    assert [e for e in session.poll() if e.get("event") == "result"] == []  # nothing answered yet, no wait
    assert session.wait(opened, TIMEOUT_S)["event"] == "result"
    assert session.ask("start", name="liver")["event"] == "result"
    masks, dice = [], []
    prediction = None
    for _ in range(3):
        click = _click(scan, prediction)
        prediction = _mask(session.ask("point", lps=list(click.lps), positive=click.positive, timeout=TIMEOUT_S))
        masks.append(prediction)
        dice.append(S.dice(prediction, scan["liver"]))
    assert max(dice[1:]) > dice[0] - 0.05 and max(dice) > 0.3, dice
    assert [p["type"] for p in session.log.prompts] == ["point"] * 3 and session.log.structure == "liver"
    scan["masks"] = masks


def test_sigkill_mid_request_restarts_and_replays_the_prompts(session, scan):
    """The process is SIGKILLed while an undo is on its way: a new process opens the scan from the
    feature cache, replays the three points, and answers the undo with the two-point mask."""
    first = session.pid
    os.kill(first, signal.SIGSTOP)  # stopped, it cannot answer the undo before the kill lands
    undo = session.request("undo")
    os.kill(first, signal.SIGKILL)
    answer = session.wait(undo, TIMEOUT_S)
    assert session.restarts == 1 and session.pid != first and session.alive
    assert np.array_equal(_mask(answer), scan["masks"][1])  # the replayed prompts give the same answer
    assert np.array_equal(_mask(session.ask("redo", timeout=TIMEOUT_S)), scan["masks"][2])
    status = session.ask("status")
    assert [(s["name"], s["prompts"]) for s in status["structures"]] == [("liver", 3)]


def test_cancel_kills_a_request_the_engine_does_not_stop_and_the_session_goes_on(session, scan):
    session.CANCEL_GRACE_S = 0.0  # the engine only stops feature computation by itself: force the kill path
    before = session.pid
    tree = {before} | {p.pid for p in psutil.Process(before).children(recursive=True)}
    click = _click(scan, scan["masks"][2])
    os.kill(before, signal.SIGSTOP)  # a point takes ~15 ms: stopped, it is still unanswered at the cancel
    point = session.request("point", lps=list(click.lps), positive=click.positive)
    assert session.cancel() == [point]
    started = time.monotonic()
    answer = session.wait(point, 10)
    assert answer["event"] == "error" and answer["message"] == "Cancelled." and time.monotonic() - started < 5
    for pid in tree:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert session.pid != before and len(session.log.prompts) == 3  # the cancelled point is not replayed
    session.CANCEL_GRACE_S = InteractiveSession.CANCEL_GRACE_S
    assert np.array_equal(_mask(session.ask("undo", timeout=TIMEOUT_S)), scan["masks"][1])


def test_accepted_work_stays_on_disk_across_a_restart(session, scan):
    accepted = session.ask("accept", timeout=TIMEOUT_S)
    assert accepted["event"] == "result" and accepted["voxels"] == int(scan["masks"][1].sum())
    kept = example_masks(scan["folder"] / "examples")
    assert set(kept) == {"liver"}
    before = kept["liver"].read_bytes()
    os.kill(session.pid, signal.SIGKILL)
    started = session.ask("start", name="spleen", timeout=TIMEOUT_S)
    assert started["event"] == "result" and session.restarts == 3
    assert session.log.accepted == {"liver": accepted["value"]} and session.log.structure == "spleen"
    assert kept["liver"].read_bytes() == before  # the restart never rewrote the accepted structure
    # the new engine process restored the liver as accepted (values and names), from the examples folder
    status = session.ask("status")
    assert [(s["name"], s["value"], s["accepted"]) for s in status["structures"]] == [
        ("liver", accepted["value"], True), ("spleen", started["value"], False)]
    bad = session.ask("point", lps=[1e4, 0, 0])
    assert bad["event"] == "error" and "outside" in bad["message"] and session.alive


def test_an_engine_that_cannot_start_is_given_up_with_its_own_sentence(scan, tmp_path):
    """Restarting must end: a model that does not exist makes every process exit at once."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "CoralBaySlicer"), "OMP_NUM_THREADS": "1"}
    s = InteractiveSession(interact_argv(sys.executable, "no-such-model", tmp_path / "out", tmp_path / "examples"),
                           env=env, cwd=tmp_path)
    s.start()
    answer = s.wait(s.request("open", image=str(scan["ct"])), TIMEOUT_S)
    assert answer["event"] == "error" and s.restarts == InteractiveSession.MAX_RESTARTS_WITHOUT_ANSWER
    assert "No model named 'no-such-model'" in answer["message"] and "stopped 3 times" in answer["message"]
    with pytest.raises(SessionError):
        s.request("status")
    s.close()


def test_the_replay_log_starts_a_structure_as_it_was_started():
    """The log records whether `start` asked for and got a proposal; the replay asks the same way,
    and undoes a model's proposal (a prompt to the engine) if the user had undone it."""
    log = ReplayLog()
    log.record({"type": "open", "image": "scan.nrrd"}, {})
    log.record({"type": "start", "name": "liver"}, {"name": "liver", "value": 1, "proposed_by": "my-organs"})
    assert log.propose and log.proposed_by == "my-organs"
    point = {"type": "point", "lps": [1.0, 2.0, 3.0], "positive": True}
    log.record({"id": "3", **point}, {})
    log.record({"type": "undo"}, {})
    log.record({"type": "undo"}, {})          # the proposal itself
    assert log.prompts == [] and log.proposal_undone
    assert log.requests()[1:] == [{"type": "start", "name": "liver", "value": 1, "propose": True},
                                  {"type": "undo", "name": "liver"}]
    log.record({"type": "redo"}, {})          # the proposal comes back first
    assert not log.proposal_undone and log.undone == [point]
    log.record({"type": "undo"}, {})
    log.record(point, {})                     # a new prompt: the undone proposal is gone for good
    log.record({"type": "undo"}, {})
    log.record({"type": "redo"}, {})          # ... so redo brings the prompt back, not the proposal
    assert log.proposal_undone and log.prompts == [point]
    assert [r["type"] for r in log.requests()] == ["open", "start", "undo", "point"]
    log.record({"type": "start", "name": "spleen", "propose": False}, {"name": "spleen", "value": 2})
    assert log.requests()[1:] == [{"type": "start", "name": "spleen", "value": 2, "propose": False}]


def proposal_sentence(event: dict) -> str:
    return Event.decode(event).proposal_sentence()


def test_proposal_status_sentence():
    answer = {"name": "liver", "mask": "m.nrrd", "volume_ml": 1234.5}
    assert proposal_sentence({**answer, "proposed_by": "examples"}).startswith(
        "liver: proposed from your accepted examples (1234.5 ml)")
    assert proposal_sentence({**answer, "proposed_by": "my-organs"}).startswith("liver: proposed by model my-organs")
    assert proposal_sentence({**answer, "request": "undo", "proposed_by": "examples"}).startswith(
        "liver: back to the proposal from your accepted examples")
    assert proposal_sentence(answer) == "" and proposal_sentence({"name": "liver", "proposed_by": "examples"}) == ""


def test_each_event_decoded_once_says_what_the_status_line_shows():
    """The status line follows every kind of event the engine sends (one decoding, `Event`)."""
    answer = {"event": "result", "id": 7, "request": "point", "name": "liver", "mask": "m.nrrd", "volume_ml": 12.5,
              "answer": 3}
    event = Event.decode(answer)
    assert (event.kind, event.id, event.request, event.is_answer, event.finishes_request) == ("result", "7", "point",
                                                                                              True, True)
    assert event.status() == "liver: 12.5 ml (answer 3)."
    assert Event.decode({**answer, "proposed_by": "examples"}).status().startswith("liver: proposed from your")
    assert Event.decode({"event": "result", "request": "start", "name": "aorta"}).status() == \
        "aorta: no proposal; place points."
    assert Event.decode({"event": "result", "request": "accept", "name": "liver"}).status() == "Accepted liver."
    assert Event.decode({"event": "result", "request": "open"}).status().startswith("Ready")
    progress = Event.decode({"event": "progress", "stage": "features", "fraction": 0.25, "message": "features 25 %"})
    assert (progress.status(), progress.fraction, progress.finishes_request) == ("features 25 %", 0.25, False)
    restarted = {"event": "log", "level": "warning", "restarted": True, "message": "The engine process stopped."}
    assert Event.decode(restarted).status() == "The engine process stopped."
    assert Event.decode({"event": "log", "message": "chatter"}).status() == ""
    assert Event.decode({"event": "error", "id": 1, "message": "Cancelled."}).status() == "Cancelled."
    assert str(Request.POINT) == "point" and Request.POINT == "point"  # the wire format is the plain string


def test_a_kept_scan_stays_only_while_an_example_refers_to_it(tmp_path):
    examples = tmp_path / "examples"
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "input.nrrd").write_bytes(b"the same voxels")
    first = keep_scan(tmp_path / "a" / "input.nrrd", examples)
    again = keep_scan(tmp_path / "b" / "input.nrrd", examples)  # the same volume opened again: the same file
    assert first == again and first.parent == examples / "scans" and first.read_bytes() == b"the same voxels"
    assert not (tmp_path / "a" / "input.nrrd").exists() and not (tmp_path / "b" / "input.nrrd").exists()
    (examples / "0123456789abcdef").mkdir()
    record = examples / "0123456789abcdef" / "example.json"
    record.write_text(json.dumps({"scan": str(first), "structures": {}}))
    assert not forget_scan(first, examples) and first.is_file()
    record.write_text(json.dumps({"scan": "elsewhere.nrrd", "structures": {}}))
    assert forget_scan(first, examples) and not first.exists()
    outside = tmp_path / "mine.nrrd"
    outside.write_bytes(b"x")
    assert not forget_scan(outside, examples) and outside.is_file()  # only scans it kept itself


def test_the_clean_up_deletes_only_kept_scans_nothing_refers_to(tmp_path):
    """The panel's clean-up of cached scans: scans an example refers to stay, and so does the open
    session's; the others go (a session that ended without End session left them)."""
    examples = tmp_path / "examples"
    kept = {}
    for name in ("used", "orphan", "open"):
        written = tmp_path / f"{name}.nrrd"
        written.write_bytes(name.encode())
        kept[name] = keep_scan(written, examples)
    (examples / "a").mkdir()
    (examples / "a" / "example.json").write_text(json.dumps({"scan": str(kept["used"]), "structures": {}}))
    assert forget_unused_scans(examples, keep=kept["open"]) == [kept["orphan"]]
    assert not kept["orphan"].exists() and kept["used"].is_file() and kept["open"].is_file()
    assert forget_unused_scans(examples) == [kept["open"]] and not kept["open"].exists()
    assert kept["used"].is_file()
    assert forget_unused_scans(tmp_path / "nothing-here") == []


def test_the_command_line_carries_the_panels_choices():
    """Encoder weights, device and proposals reach `coralbay interact` as for Segment."""
    argv = interact_argv("python", "demo-phantom-seg", "out", "examples", device="CPU", cache_dir="cache",
                         propose_with="my-organs", backbone=" weights.safetensors ")
    assert argv[:4] == ["python", "-m", "coralbay", "interact"]
    pairs = dict(zip(argv[4::2], argv[5::2]))
    assert pairs == {"--model": "demo-phantom-seg", "--device": "cpu", "--backbone": "weights.safetensors",
                     "--output-dir": "out", "--examples": "examples", "--cache": "cache",
                     "--propose-with": "my-organs"}
    assert "--backbone" not in interact_argv("python", "m", "out", "examples")
    with pytest.raises(ValueError, match="Choose a model"):
        interact_argv("python", " ", "out", "examples")
