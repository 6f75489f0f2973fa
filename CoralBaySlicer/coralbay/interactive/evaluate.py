"""`coralbay eval-interactive`: the simulated user on every structure of reference label maps, for
our interactive session and each classical baseline, every method clicking on its own errors.

Per structure and method: the box (unless `--no-box`), then `clicks` clicks, each placed by the
protocol (`simulate.PROTOCOLS`) on that method's last answer. The record keeps a trace of every
step (prompt kind and position, Dice, NSD, seconds), Dice / NSD after each click, DSC_AUC, the
final Dice / NSD, and how often a click made Dice fall by more than 0.02 (`monotonicity`).

Every structure is measured on its own, for every method: no method sees another structure's
answer (as in the official protocol, and as the baselines, which keep no state). Our session
accepts its structures when the scan is done, so that with `--sequence` they are examples for later
scans; a structure the session has seen on earlier scans starts from its proposal (recorded, not
counted as a step). Accepting after each structure instead would make a leak of one accepted
answer a wall for the next structure (an accepted structure is never overwritten), a constraint
the baselines do not carry.
Between clicks the session computes its remaining feature windows untimed, as `interact` does
while the user looks at the answer.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Protocol as Interface, Sequence

import numpy as np
import SimpleITK as sitk

from coralbay.interactive import baselines as B
from coralbay.interactive import prompts as P
from coralbay.interactive import simulate as S
from coralbay.interactive.engine import LabelTable
from coralbay.interactive.proposals import ModelProposals, first_answer
from coralbay.interactive.session import Session

Log = Callable[[str], None]
OURS = "ours"
REPORT_AFTER = (1, 3, 5, 10)
TARGETS = (0.85, 0.90)
FALL = 0.02


class Method(Interface):
    """One interactive method as the simulated user sees it: start a structure, answer prompts."""

    name: str

    def start(self, name: str, value: int) -> None: ...

    def answer(self, prompt: S.VoxelBox | S.Click) -> np.ndarray: ...

    def pause(self) -> None:
        """What the method does while the user looks at an answer (untimed)."""

    def finish(self) -> None: ...

    def end_scan(self) -> None:
        """What the method does when every structure of the scan has been measured."""


class SessionMethod:
    """Our interactive session."""

    name = OURS

    def __init__(self, session: Session, image: sitk.Image, proposals: ModelProposals | None = None) -> None:
        self.session, self.image, self.proposals = session, image, proposals
        self.finished: list[str] = []
        self.proposed_by: str | None = None   # where the last proposal came from (a model's name, or examples)

    def start(self, name: str, value: int) -> None:
        self.session.start(name, value)

    def proposal(self, name: str) -> np.ndarray | None:
        """The answer the structure starts from (`first_answer`: the --propose-with model's mask,
        else the accepted examples' proposal), or None."""
        found, self.proposed_by = first_answer(self.session, self.proposals, name)
        return None if found is None else found.mask

    def answer(self, prompt: S.VoxelBox | S.Click) -> np.ndarray:
        if isinstance(prompt, S.VoxelBox):
            given: P.Prompt = P.Box(tuple(prompt.lower_zyx[::-1]), tuple(v + 1 for v in prompt.upper_zyx[::-1]))
        else:
            given = P.point(self.image, prompt.lps, prompt.positive)
        return self.session.prompt(given).mask

    def pause(self) -> None:
        self.session.compute_features()

    def finish(self) -> None:
        structure = self.session.structures[self.session.current]
        if structure.mask is not None and structure.mask.any():
            self.finished.append(structure.name)

    def end_scan(self) -> None:
        """Accept the scan's structures (examples for later scans), once all were measured."""
        for name in self.finished:
            self.session.accept(name)
        self.finished = []


@dataclass
class BaselineMethod:
    """A classical baseline: answers the prompts so far from scratch (it keeps no state)."""

    name: str
    segment: B.Baseline
    hu: np.ndarray
    spacing: tuple[float, float, float]
    prompts: B.Prompts = field(default_factory=B.Prompts)

    def start(self, name: str, value: int) -> None:
        self.prompts = B.Prompts()

    def answer(self, prompt: S.VoxelBox | S.Click) -> np.ndarray:
        if isinstance(prompt, S.VoxelBox):
            self.prompts.box = prompt
        else:
            self.prompts.clicks.append(prompt)
        return self.segment(self.hu, self.spacing, self.prompts)

    def pause(self) -> None:
        pass

    def finish(self) -> None:
        pass

    def end_scan(self) -> None:
        pass


def _step(kind: str, prompt: S.VoxelBox | S.Click | None, mask: np.ndarray, reference: np.ndarray,
          protocol: S.Protocol, spacing: tuple[float, float, float], seconds: float) -> dict:
    entry: dict = {"prompt": kind}
    if isinstance(prompt, S.VoxelBox):
        entry.update(prompt.to_dict())
    elif isinstance(prompt, S.Click):
        entry.update(voxel_zyx=list(prompt.voxel_zyx), lps=[round(c, 2) for c in prompt.lps])
    entry.update(dice=round(S.dice(mask, reference), 4), nsd=round(protocol.nsd(mask, reference, spacing), 4),
                 seconds=round(seconds, 3))
    return entry


def simulate_structure(method: Method, reference: np.ndarray, image: sitk.Image, protocol: S.Protocol,
                       clicks: int, box: S.VoxelBox | None, shown: np.ndarray | None = None) -> dict:
    """One method on one structure: the box (if any), then `clicks` clicks on its own errors.
    Without a box the user clicks on the errors of `shown`, the proposal the method showed first."""
    spacing = tuple(float(s) for s in image.GetSpacing()[::-1])
    trace: list[dict] = []
    prediction = shown if box is None else None
    if box is not None:
        start = time.perf_counter()
        prediction = method.answer(box)
        trace.append(_step("box", box, prediction, reference, protocol, spacing, time.perf_counter() - start))
    for _ in range(clicks):
        click = protocol.click(prediction, reference, image)
        if click is None:   # perfect: the user has nothing to click; the answer stays (as the official run)
            trace.append({**trace[-1], "prompt": "none", "seconds": 0.0})
            continue
        start = time.perf_counter()
        prediction = method.answer(click)
        seconds = time.perf_counter() - start
        trace.append(_step("positive" if click.positive else "negative", click, prediction, reference, protocol,
                           spacing, seconds))
        method.pause()
    method.finish()
    click_steps = trace[1:] if box is not None else trace
    dice_clicks = [t["dice"] for t in click_steps]
    before = ([trace[0]["dice"]] if box is not None
              else [round(S.dice(shown, reference), 4)] if shown is not None else [None])
    falls = S.monotonicity([before + dice_clicks], FALL)
    auc = protocol.dsc_auc(dice_clicks)
    return {"trace": trace,
            "dice_after_box": trace[0]["dice"] if box is not None else None,
            "dice_after": {str(n): (dice_clicks[n - 1] if len(dice_clicks) >= n else None) for n in REPORT_AFTER},
            "nsd_after": {str(n): (click_steps[n - 1]["nsd"] if len(click_steps) >= n else None) for n in REPORT_AFTER},
            "dice_per_click": dice_clicks,
            "dsc_auc": None if auc is None else round(auc, 4),
            "final_dsc": trace[-1]["dice"] if trace else None, "final_nsd": trace[-1]["nsd"] if trace else None,
            "clicks_counted": falls["clicks"], "falls": falls["falls"],
            "seconds_per_click": [t["seconds"] for t in click_steps if t["prompt"] != "none"]}


def _clicks_to_reach(curve: list[float], target: float) -> int | None:
    return next((i + 1 for i, d in enumerate(curve) if d >= target), None)


def evaluate_case(session: Session | None, image: sitk.Image, reference: np.ndarray, table: LabelTable,
                  names: Sequence[str] | None, clicks: int, use_box: bool, baselines: Sequence[str],
                  protocol: S.Protocol, scan_name: str, log: Log, proposals: ModelProposals | None = None
                  ) -> tuple[list[dict], float | None]:
    """Every method on every structure of one scan; our session is skipped when `session` is None."""
    spacing = tuple(float(s) for s in image.GetSpacing()[::-1])
    feature_seconds = None
    if session is not None:
        feature_seconds = session.open_scan(image, scan_name).seconds
        hu = session.hu
    else:
        hu = sitk.GetArrayFromImage(image).astype(np.float32)
    methods: list[Method] = [SessionMethod(session, image, proposals)] if session is not None else []
    methods += [BaselineMethod(name, B.baseline(name), hu, spacing) for name in baselines]
    results = []
    for label in table:
        if names and label.name not in names:
            continue
        ref = reference == label.value
        if not ref.any():
            continue
        box = protocol.box(ref) if use_box else None
        record: dict = {"name": label.name, "value": int(label.value), "scan": scan_name,
                        "reference_voxels": int(ref.sum()), "box": None if box is None else box.to_dict(), "methods": {}}
        for method in methods:
            method.start(label.name, label.value)
            proposal_dice, proposal = None, None
            if isinstance(method, SessionMethod):
                start = time.perf_counter()
                proposal = method.proposal(label.name)
                if proposal is not None:
                    proposal_dice = round(S.dice(proposal, ref), 4)
                    record["proposal"] = {"dice": proposal_dice, "seconds": round(time.perf_counter() - start, 3),
                                          "by": method.proposed_by}
            found = simulate_structure(method, ref, image, protocol, clicks, box, proposal)
            for target in TARGETS:
                reached = _clicks_to_reach(found["dice_per_click"], target)
                found[f"clicks_to_dice_{target:.2f}_from_first_click"] = reached
                found[f"clicks_to_dice_{target:.2f}"] = (0 if proposal_dice is not None and proposal_dice >= target
                                                         else reached)
            record["methods"][method.name] = found
        log(f"{scan_name} {label.name}: Dice after box + 1/3/5/10 clicks "
            + "; ".join(f"{m}: {r['dice_after_box']} {list(r['dice_after'].values())}" for m, r in record["methods"].items()))
        results.append(record)
    for method in methods:
        method.end_scan()
    return results, feature_seconds


def _mean(values: list) -> float | None:
    known = [v for v in values if v is not None and not np.isnan(v)]
    return round(float(np.mean(known)), 4) if known else None


def method_summary(records: list[dict]) -> dict:
    """Per method, over all structures: mean Dice after the box and after each reported click
    count, mean DSC_AUC, final DSC / NSD, monotonicity, median and p95 seconds per click."""
    out: dict = {}
    for name in dict.fromkeys(m for r in records for m in r["methods"]):
        mine = [r["methods"][name] for r in records if name in r["methods"]]
        seconds = [t for m in mine for t in m["seconds_per_click"]]
        counted, falls = sum(m["clicks_counted"] for m in mine), sum(m["falls"] for m in mine)
        out[name] = {
            "structures": len(mine),
            "mean_dice_after_box": _mean([m["dice_after_box"] for m in mine]),
            "mean_dice_after": {n: _mean([m["dice_after"][n] for m in mine]) for n in mine[0]["dice_after"]},
            "mean_nsd_after": {n: _mean([m["nsd_after"][n] for m in mine]) for n in mine[0]["nsd_after"]},
            "mean_dsc_auc": _mean([m["dsc_auc"] for m in mine]),
            "mean_final_dsc": _mean([m["final_dsc"] for m in mine]),
            "mean_final_nsd": _mean([m["final_nsd"] for m in mine]),
            "monotonicity": {"clicks": counted, "falls": falls, "drop_threshold": FALL,
                             "share": round(falls / counted, 4) if counted else None},
            "median_seconds_per_click": round(float(np.median(seconds)), 3) if seconds else None,
            "p95_seconds_per_click": round(float(np.percentile(seconds, 95)), 3) if seconds else None,
        }
    return out


def mean_by_structure(records: list[dict]) -> dict:
    """Per structure name and method: mean Dice after the box and after each reported click count."""
    out: dict = {}
    for name in dict.fromkeys(r["name"] for r in records):
        out[name] = {key: {"cases": value["structures"], "dice_after_box": value["mean_dice_after_box"],
                           "dice_after": value["mean_dice_after"], "dsc_auc": value["mean_dsc_auc"]}
                     for key, value in method_summary([r for r in records if r["name"] == name]).items()}
    return out


def scan_summary(records: list[dict], clicks: int) -> list[dict]:
    """Our session per scan, in order (what `--sequence` is for): mean clicks to Dice 0.85 / 0.90
    over its structures (clicks + 1 when not reached; 0 when the proposal already reaches it), also
    with the first click always counted, mean Dice after 1 / 3 / 5 / 10 clicks, and the proposals:
    how many, from where, their mean Dice."""
    out = []
    for scan in dict.fromkeys(r["scan"] for r in records):
        mine = [r for r in records if r["scan"] == scan and OURS in r["methods"]]
        if not mine:
            continue
        entry: dict = {"scan": scan, "structures": len(mine)}
        for target in TARGETS:
            for suffix in ("", "_from_first_click"):
                key = f"clicks_to_dice_{target:.2f}{suffix}"
                values = [clicks + 1 if r["methods"][OURS][key] is None else r["methods"][OURS][key] for r in mine]
                entry["mean_" + key] = round(float(np.mean(values)), 2)
        entry["mean_dice_after"] = {n: _mean([r["methods"][OURS]["dice_after"][n] for r in mine])
                                    for n in mine[0]["methods"][OURS]["dice_after"]}
        proposals = [r["proposal"]["dice"] for r in mine if "proposal" in r]
        entry["proposals"] = len(proposals)
        entry["proposals_by"] = dict(Counter(r["proposal"].get("by") for r in mine if "proposal" in r))
        entry["mean_proposal_dice"] = round(float(np.mean(proposals)), 4) if proposals else None
        out.append(entry)
    return out
