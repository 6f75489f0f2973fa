"""Markdown tables of the interactive benchmark's JSON files (pasted into docs/interactive.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
AT = ("1", "3", "5", "10")


def fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def curves(files: list[str], title: str) -> None:
    records = [r for f in files if (HERE / f).is_file() for r in json.loads((HERE / f).read_text())["structures"]]
    if not records:
        print(f"({title}: no results)\n")
        return
    feature = [s for f in files if (HERE / f).is_file() for s in json.loads((HERE / f).read_text())["feature_seconds"]]
    print(f"**{title}** ({len(records)} structure runs; feature seconds per scan: {feature})\n")
    print("| structure | n | Dice 1/3/5/10 (ours) | Dice 1/3/5/10 (random walker) | NSD 2mm 1/3/5/10 (ours) | "
          "NSD (random walker) | Dice-AUC ours / RW | median s per click ours / RW |")
    print("|---|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["name"] for r in records):
        mine = [r for r in records if r["name"] == name]

        def mean(key: str, n: str | None = None):
            vals = [(r[key][n] if n else r[key]) for r in mine if key in r]
            vals = [v for v in vals if v is not None]
            return float(np.mean(vals)) if vals else None

        def row(key: str) -> str:
            return " / ".join(fmt(mean(key, n)) for n in AT)
        ours_t = np.median([t for r in mine for t in r["seconds_per_interaction"]])
        rw_t = [t for r in mine for t in r.get("baseline_seconds_per_interaction", [])]
        print(f"| {name} | {len(mine)} | {row('dice_after')} | {row('baseline_dice_after') if 'baseline_dice_after' in mine[0] else '-'} | "
              f"{row('nsd_after')} | {row('baseline_nsd_after') if 'baseline_nsd_after' in mine[0] else '-'} | "
              f"{fmt(mean('dice_auc'))} / {fmt(mean('baseline_dice_auc'))} | {ours_t:.2f} / "
              f"{(np.median(rw_t) if rw_t else float('nan')):.2f} |")
    print()


def sequence(file: str) -> None:
    path = HERE / file
    if not path.is_file():
        print("(sequence: no results)\n")
        return
    report = json.loads(path.read_text())
    records = report["structures"]
    scans = list(dict.fromkeys(r["scan"] for r in records))
    print("**--sequence** (scans in order; clicks to reach Dice 0.90, 0 = the proposal already reached it, "
          "'-' = not within the clicks, in brackets with the first click always counted; "
          "proposal = Dice of the automatic first answer)\n")
    print("| structure | " + " | ".join(Path(s).name for s in scans) + " |")
    print("|---|" + "---|" * len(scans))
    for name in dict.fromkeys(r["name"] for r in records):
        cells = []
        for r in (r for r in records if r["name"] == name):
            c = r.get("clicks_to_dice_0.90")
            first = r.get("clicks_to_dice_0.90_from_first_click", c)
            cells.append(f"{'-' if c is None else c}{'' if first == c else f' ({first if first else chr(45)})'} clicks, "
                         f"Dice@5 {fmt(r['dice_after']['5'])}"
                         + (f", proposal {r['proposal_dice']:.3f}" if "proposal_dice" in r else ""))
        print(f"| {name} | " + " | ".join(cells) + " |")
    for entry_key, label in (("mean_clicks_to_dice_0.90", "mean clicks to 0.90"),
                             ("mean_clicks_to_dice_0.90_from_first_click", "... first click always counted"),
                             ("mean_clicks_to_dice_0.85", "mean clicks to 0.85"),
                             ("mean_proposal_dice", "mean proposal Dice")):
        cells = ["-" if e.get(entry_key) is None else f"{e[entry_key]:.2f}" for e in report.get("by_scan", [])]
        if cells:
            print(f"| **{label}** | " + " | ".join(cells) + " |")
    print()


if __name__ == "__main__":
    curves(["phantom-10000.json", "phantom-10001.json", "phantom-10002.json"], "Held-out phantoms 10000-10002")
    curves(["real_totalseg.json"], "TotalSegmentator example CT (reference = TotalSegmentator's output)")
    curves(["real_lung_nodule.json"], "pyradiomics lung1 nodule")
    curves(["real_dcmqi_liver.json"], "dcmqi 3-slice DICOM liver")
    sequence("sequence.json")
    sys.exit(0)
