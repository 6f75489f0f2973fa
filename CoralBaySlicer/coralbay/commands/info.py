"""`coralbay info INPUT`: geometry and intensity summary of a volume, or the series of a DICOM study."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from coralbay.commands._common import add_series_option


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="geometry and intensity summary of a volume, or the series of a study",
                              description="Print size, spacing, origin (mm, LPS), orientation and "
                                          "intensity range of a NIfTI/NRRD/MHA file or DICOM series folder. "
                                          "For a DICOM study folder (a DICOMDIR, series in subfolders, or "
                                          "several series) list each series: number, description, modality, "
                                          "size, spacing, slices, and whether it is a regular CT volume or why "
                                          "not; --series then summarises one of them.")
    p.add_argument("input", metavar="INPUT", help="volume file, DICOM series folder or DICOM study folder")
    add_series_option(p, help="summarise this series of a DICOM study folder (SeriesNumber or SeriesInstanceUID)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from coralbay.io.volumes import read_volume, volume_info

    if args.series is None and Path(args.input).is_dir():
        from coralbay.io.dicom_study import check_study

        study, checks = check_study(args.input)
        if checks and not study.plain_series_folder:
            return _print_study(study, checks, args.json)
    image = read_volume(args.input, args.series)
    info = volume_info(image)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"size         {' x '.join(map(str, info['size']))} voxels")
    print(f"spacing      {' x '.join(f'{s:g}' for s in info['spacing_mm'])} mm")
    print(f"extent       {' x '.join(f'{s:g}' for s in info['extent_mm'])} mm")
    print(f"origin (LPS) {', '.join(f'{o:g}' for o in info['origin_mm_lps'])} mm")
    print(f"orientation  {info['orientation']} (ITK/DICOM LPS letters)")
    print(f"pixel type   {info['pixel_type']}")
    print(f"intensity    min {info['min']:g}, max {info['max']:g}, mean {info['mean']:.1f}")
    if info["dicom_series"]:
        print(f"DICOM series {info['dicom_series']['series'] or '(no number)'} (UID {info['dicom_series']['series_uid']})")
    if info["note"]:
        print(f"note: {info['note']}")
    for warning in (info["orientation_warning"], info["warning"]):
        if warning:
            print(f"warning: {warning}")
    return 0


def _print_study(study, checks, as_json: bool) -> int:
    """List the series of a study, marking the one read when no --series is given."""
    from coralbay.io.dicom_study import automatic_choice

    chosen = automatic_choice(checks)
    if as_json:
        print(json.dumps({"study": str(study.folder), "dicomdir": study.dicomdir is not None,
                          "series": [c.summary(study.folder) for c in checks],
                          "default_series": chosen.series.uid if chosen else None,
                          "left_out": list(study.skipped)}, indent=2))
        return 0
    source = "its DICOMDIR" if study.dicomdir is not None else "its files"
    print(f"study {study.folder}: {len(checks)} image series (from {source})")
    for check in checks:
        row = check.summary(study.folder)
        name = f"series {row['number']}" if row["number"] else "series (no number)"
        size = " x ".join(map(str, row["size"])) + " voxels" if row["size"] else "size unknown"
        spacing = " x ".join(f"{v:g}" for v in row["spacing_mm"]) + " mm" if row["spacing_mm"] else ""
        slices = f"{row['slices']} slice{'s' if row['slices'] != 1 else ''}" if row["slices"] else ""
        verdict = "regular CT volume" if check.regular_ct else f"not a regular CT volume: {check.problem}"
        mark = "  <- read when no --series is given" if check is chosen else ""
        text = f"\"{row['description']}\"  " if row["description"] else ""
        print(f"  {name}  {text}{row['modality'] or 'no modality'}  "
              f"{', '.join(p for p in (size, spacing, slices) if p)}  {verdict}{mark}")
        print(f"      UID {row['uid']}  in {', '.join(row['folders']) or '(no files)'}")
    if chosen is None:
        print("Not exactly one regular CT volume: commands given this folder need --series NUMBER "
              "(or its SeriesInstanceUID).")
    if study.skipped:
        print(f"left out: {study.left_out()}")
    return 0
