"""Markdown tables of an `eval-interactive --sequence` JSON, per scan k (docs/interactive.md, "The
teach loop, scan after scan"): what proposed, the teach's seconds, proposal Dice, Dice after 1 / 5 /
10 clicks, clicks to 0.85 / 0.90 counting the first click; then per structure, clicks to 0.90 and
(proposal -> Dice after the last click).

    PYTHONPATH=CoralBaySlicer python benchmarks/interactive/teach_sequence_table.py benchmarks/interactive/dev-teach-sequence-c10.json

The per-scan means are computed again from the structures by the engine's `scan_summary` (a JSON
written before `mean_dice_after` was in `by_scan` gets it too); what proposed comes from the JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from coralbay.interactive.evaluate import scan_summary


def fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def scan_rows(report: dict) -> list[str]:
    written = {e["scan"]: e for e in report["by_scan"]}
    rows = ["| scan k | proposed by | that teach (s) | proposal Dice | Dice after 1 / 5 / 10 clicks | clicks to 0.85 | "
            "clicks to 0.90 |", "|---|---|---|---|---|---|---|"]
    for k, e in enumerate(scan_summary(report["structures"], report["clicks"]), 1):
        e = {**e, **{key: written[e["scan"]].get(key) for key in ("proposed_by", "teach_seconds")}}
        source = e.get("proposed_by") or ", ".join(e.get("proposals_by", {})) or "- (no proposal)"
        after = " / ".join(fmt(e["mean_dice_after"][n]) for n in ("1", "5", "10"))
        rows.append(f"| {k} ({Path(e['scan']).name.split('.')[0]}) | {source} | {e.get('teach_seconds') or '-'} | "
                    f"{fmt(e['mean_proposal_dice'])} | {after} | {fmt(e['mean_clicks_to_dice_0.85_from_first_click'], 2)} | "
                    f"**{fmt(e['mean_clicks_to_dice_0.90_from_first_click'], 2)}** |")
    return rows


def structure_rows(report: dict) -> list[str]:
    scans = [e["scan"] for e in report["by_scan"]]
    rows = ["| structure | " + " | ".join(f"scan {k}" for k in range(1, len(scans) + 1)) + " |",
            "|---|" + "---|" * len(scans)]
    for name in dict.fromkeys(r["name"] for r in report["structures"]):
        cells = []
        for scan in scans:
            r = next((r for r in report["structures"] if r["scan"] == scan and r["name"] == name), None)
            if r is None:
                cells.append("")
                continue
            ours = r["methods"]["ours"]
            reached = ours["clicks_to_dice_0.90_from_first_click"]
            proposal = r.get("proposal", {}).get("dice")
            cells.append(f"{'-' if reached is None else reached} ("
                         + ("" if proposal is None else f"{proposal:.2f} -> ") + f"{ours['final_dsc']:.2f})")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def main(path: str) -> None:
    report = json.loads(Path(path).read_text())
    run = report.get("run", {})
    print(f"{path}: commit measured {run.get('commit', '?')[:7]}, finished {run.get('finished_utc', '?')} UTC\n")
    print("\n".join(scan_rows(report)))
    print()
    print("\n".join(structure_rows(report)))


if __name__ == "__main__":
    main(sys.argv[1])
