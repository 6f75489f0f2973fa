"""The JSON-lines progress protocol and the Reporter that writes it."""

from __future__ import annotations

import argparse
import io
import json
import logging

from coralbay.progress import Reporter, decode_event, encode_event, read_events


def test_events_round_trip_and_noise_is_ignored():
    line = encode_event("progress", stage="inference", fraction=0.5, message="window 1/2")
    assert decode_event(line) == {"event": "progress", "stage": "inference", "fraction": 0.5, "message": "window 1/2"}
    assert decode_event("Loading weights...") is None
    assert decode_event('{"event": "unknown"}') is None
    assert decode_event("{not json") is None
    assert [e["event"] for e in read_events([line, "noise", encode_event("result", outputs={})])] == ["progress", "result"]


def test_stage_weights_give_a_monotonic_overall_fraction():
    out = io.StringIO()
    reporter = Reporter("jsonl", stream=out, stages={"load": 1, "inference": 3})
    for stage, fraction in [("load", 0), ("load", 1), ("inference", 0.5), ("inference", 1)]:
        reporter.progress(stage, fraction)
    fractions = [e["fraction"] for e in read_events(out.getvalue().splitlines())]
    assert fractions == [0.0, 0.25, 0.625, 1.0]


def test_engine_warnings_become_log_events(capsys):
    from coralbay.commands._common import make_reporter

    make_reporter(argparse.Namespace(progress="jsonl"))
    logging.getLogger("coralbay.io").warning("The DICOM slices were resampled onto a regular grid.")
    logging.getLogger("coralbay.io").info("not forwarded: below warning")
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events == [{"event": "log", "level": "warning",
                       "message": "The DICOM slices were resampled onto a regular grid."}]
