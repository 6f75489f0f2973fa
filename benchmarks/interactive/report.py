"""Markdown tables of `eval-interactive` JSON files (the honest evaluation in docs/interactive.md).

    python benchmarks/interactive/report.py benchmarks/interactive/dev-realct-c5-a.json [more.json ...]

Several files are read as one set of structures: halves of one run, or runs of different methods
on the same scans (e.g. a new `--no-baseline` run of ours beside the committed baselines): the
methods of one structure (same scan file, by its folder and name, and label value) are put together; a method found twice for one
structure keeps the later file's.
Table 1: per method, means over every structure. Table 2: per structure name, Dice after 5 clicks
per method (more than one case: the mean, and in brackets how many cases ours is more than 0.02
below Grow from seeds).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def summary_rows(records: list[dict], methods: list[str]) -> list[str]:
    rows = ["| method | n | Dice after box | Dice after 1 / 3 / 5 / 10 clicks | DSC_AUC | final NSD | "
            "clicks with Dice falling > 0.02 | median / p95 s per click |", "|---|---|---|---|---|---|---|---|"]
    for method in methods:
        mine = [r["methods"][method] for r in records if method in r["methods"]]

        def mean(values):
            known = [v for v in values if v is not None]
            return float(np.mean(known)) if known else None

        after = " / ".join(fmt(mean([m["dice_after"][n] for m in mine])) for n in ("1", "3", "5", "10"))
        counted, falls = sum(m["clicks_counted"] for m in mine), sum(m["falls"] for m in mine)
        seconds = [t for m in mine for t in m["seconds_per_click"]]
        rows.append(f"| {method} | {len(mine)} | {fmt(mean([m['dice_after_box'] for m in mine]))} | {after} | "
                    f"{fmt(mean([m['dsc_auc'] for m in mine]))} | {fmt(mean([m['final_nsd'] for m in mine]))} | "
                    f"{falls}/{counted} ({100 * falls / max(counted, 1):.1f} %) | "
                    f"{np.median(seconds):.2f} / {np.percentile(seconds, 95):.2f} |")
    return rows


def structure_rows(records: list[dict], methods: list[str], at: str = "5") -> list[str]:
    rows = [f"| structure | n | " + " | ".join(f"{m} Dice@{at}" for m in methods) + " |",
            "|---|---|" + "---|" * len(methods)]
    for name in dict.fromkeys(r["name"] for r in records):
        mine = [r for r in records if r["name"] == name]
        cells = []
        for method in methods:
            values = [r["methods"][method]["dice_after"][at] for r in mine if method in r["methods"]]
            cells.append(fmt(float(np.mean(values))) if values else "-")
        if "ours" in methods and "grow-from-seeds" in methods and len(mine) > 1:
            behind = sum(r["methods"]["ours"]["dice_after"][at] < r["methods"]["grow-from-seeds"]["dice_after"][at] - 0.02
                         for r in mine)
            cells[0] += f" ({behind} of {len(mine)} > 0.02 below Grow from seeds)"
        rows.append(f"| {name} | {len(mine)} | " + " | ".join(cells) + " |")
    return rows


def main(paths: list[str]) -> None:
    reports = [json.loads(open(p).read()) for p in paths]
    merged: dict[tuple[str, str], dict] = {}
    for report in reports:
        for record in report["structures"]:
            key = ("/".join(Path(record["scan"]).parts[-2:]), record["value"])  # the same scan from another folder
            if key in merged:
                merged[key]["methods"].update(record["methods"])
            else:
                merged[key] = {**record, "methods": dict(record["methods"])}
    records = list(merged.values())
    methods = list(dict.fromkeys(m for report in reports for m in report["methods"]))
    runs = {report.get("run", {}).get("commit", "?")[:7] for report in reports}
    print(f"protocol {reports[0]['protocol']['name']}, box {reports[0]['box']}, {reports[0]['clicks']} clicks, "
          f"commit(s) measured {', '.join(sorted(runs))}\n")
    print("\n".join(summary_rows(records, methods)))
    print()
    print("\n".join(structure_rows(records, methods)))


if __name__ == "__main__":
    main(sys.argv[1:])
