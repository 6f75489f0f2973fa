"""`coralbay eval-interactive`: the simulated user on every structure of reference label maps.

For each scan (in order) and each structure of its reference: start the structure (with
`--sequence`, the first answer is the automatic proposal learned from the earlier scans'
accepted structures), optionally a box, then the clicks of `simulate.next_click`; after the last
click the structure is accepted (with the reference mask when asked to, see `accept_reference`),
so it is negative evidence for the next structure and, with `--sequence`, an example for later
scans. The random-walker baseline answers the same clicks.

Clicks to reach a Dice: 0 when the automatic proposal already reaches it (the user accepts what
is shown without clicking), else the first click count after which the answer does; the figure
that ignores the proposal (the first click always counted) is kept beside it.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from coralbay.interactive import prompts as P
from coralbay.interactive import simulate as S
from coralbay.interactive.engine import LabelTable
from coralbay.interactive.session import Session

Log = Callable[[str], None]


def evaluate_case(session: Session, image: sitk.Image, reference: np.ndarray, table: LabelTable,
                  names: Sequence[str] | None, clicks: int, use_box: bool, baseline: bool,
                  window_hu: tuple[float, float], scan_name: str, log: Log) -> tuple[list[dict], float]:
    volume = session.open_scan(image, scan_name)
    spacing = tuple(image.GetSpacing()[::-1])
    results = []
    for label in table:
        if names and label.name not in names:
            continue
        ref = reference == label.value
        if not ref.any():
            continue
        session.start(label.name, label.value)
        ours, theirs = S.Curve(), S.Curve()
        given: list[S.Click] = []
        prediction = None
        box_zyx = None
        record: dict = {"name": label.name, "value": int(label.value), "scan": scan_name,
                        "reference_voxels": int(ref.sum())}
        start = time.perf_counter()
        proposal = session.propose(label.name)
        if proposal is not None:
            prediction = proposal.mask
            record["proposal_dice"] = round(S.dice(prediction, ref), 4)
            record["proposal_seconds"] = round(time.perf_counter() - start, 3)
        if use_box:
            lower, upper = S.reference_box_lps(ref, image)
            start = time.perf_counter()
            answer = session.prompt(P.box(image, lower, upper))
            record["box_seconds"] = round(time.perf_counter() - start, 3)
            prediction = answer.mask
            record["dice_after_box"] = round(S.dice(prediction, ref), 4)
            where = np.argwhere(ref)
            box_zyx = (where.min(0), where.max(0) + 1)
        for _ in range(clicks):
            click = S.next_click(prediction, ref, image)
            if click is None:  # perfect: the user stops; the curve stays where it is
                ours.dice.append(ours.dice[-1] if ours.dice else 1.0)
                ours.nsd.append(ours.nsd[-1] if ours.nsd else 1.0)
                continue
            given.append(click)
            start = time.perf_counter()
            answer = session.prompt(P.point(image, click.lps, click.positive))
            ours.seconds.append(time.perf_counter() - start)
            # a user looks at each answer before the next click; `interact` computes the remaining
            # feature windows in that pause (one at a time), so the simulated user gets them too
            session.compute_features()
            prediction = answer.mask
            ours.dice.append(S.dice(prediction, ref))
            ours.nsd.append(S.nsd(prediction, ref, spacing))
            if baseline:
                start = time.perf_counter()
                rw = S.random_walker_answer(session.hu, spacing, given, box_zyx, window_hu)
                theirs.seconds.append(time.perf_counter() - start)
                theirs.dice.append(S.dice(rw, ref))
                theirs.nsd.append(S.nsd(rw, ref, spacing))
        summary = S.curve_summary(ours)
        record.update(summary)
        record["seconds_per_interaction"] = [round(t, 3) for t in ours.seconds]
        for target in TARGETS:
            reached = S.clicks_to_reach(ours.dice, target)
            record[f"clicks_to_dice_{target:.2f}_from_first_click"] = reached
            proposed = record.get("proposal_dice")
            record[f"clicks_to_dice_{target:.2f}"] = 0 if proposed is not None and proposed >= target else reached
        if baseline:
            other = S.curve_summary(theirs)
            record.update({"baseline_" + k: v for k, v in other.items()})
            record["baseline_seconds_per_interaction"] = [round(t, 3) for t in theirs.seconds]
        structure = session.structures[label.name]
        if structure.mask is not None and structure.mask.any():
            session.accept(label.name)
        log(f"{scan_name} {label.name}: Dice after 1/3/5/10 clicks {summary['dice_after']}"
            + (f", baseline {record['baseline_dice_after']}" if baseline else "")
            + (f", proposal {record['proposal_dice']}" if "proposal_dice" in record else ""))
        results.append(record)
    return results, volume.seconds


TARGETS = (0.85, 0.90)


def scan_summary(records: list[dict], clicks: int) -> list[dict]:
    """Per scan, in order: mean clicks to Dice 0.85 / 0.90 over its structures (clicks + 1 when not
    reached), also with the first click always counted, and the mean Dice of the proposals."""
    out = []
    for scan in dict.fromkeys(r["scan"] for r in records):
        mine = [r for r in records if r["scan"] == scan]
        entry: dict = {"scan": scan, "structures": len(mine)}
        for target in TARGETS:
            for suffix in ("", "_from_first_click"):
                key = f"clicks_to_dice_{target:.2f}{suffix}"
                values = [clicks + 1 if r[key] is None else r[key] for r in mine]
                entry["mean_" + key] = round(float(np.mean(values)), 2)
        proposals = [r["proposal_dice"] for r in mine if "proposal_dice" in r]
        entry["proposals"] = len(proposals)
        entry["mean_proposal_dice"] = round(float(np.mean(proposals)), 4) if proposals else None
        out.append(entry)
    return out


def mean_curves(records: list[dict]) -> dict:
    """Mean Dice / NSD after each reported click count, per structure name, both methods."""
    out: dict = {}
    for name in dict.fromkeys(r["name"] for r in records):
        mine = [r for r in records if r["name"] == name]
        entry = {}
        for key in ("dice_after", "nsd_after", "baseline_dice_after", "baseline_nsd_after"):
            if key not in mine[0]:
                continue
            entry[key] = {n: (round(float(np.mean([r[key][n] for r in mine if r[key][n] is not None])), 4)
                              if any(r[key][n] is not None for r in mine) else None)
                          for n in mine[0][key]}
        seconds = [t for r in mine for t in r["seconds_per_interaction"]]
        entry["median_seconds_per_interaction"] = round(float(np.median(seconds)), 3) if seconds else None
        entry["cases"] = len(mine)
        out[name] = entry
    return out
