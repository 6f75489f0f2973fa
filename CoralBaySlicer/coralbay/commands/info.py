"""`coralbay info INPUT`: geometry and intensity summary of a volume."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="geometry and intensity summary of a volume",
                              description="Print size, spacing, origin (mm, LPS), orientation and "
                                          "intensity range of a NIfTI/NRRD/MHA file or DICOM folder.")
    p.add_argument("input", metavar="INPUT", help="volume file or DICOM series folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from coralbay.io.volumes import read_volume, volume_info

    info = volume_info(read_volume(args.input))
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
    if info["note"]:
        print(f"note: {info['note']}")
    for warning in (info["orientation_warning"], info["warning"]):
        if warning:
            print(f"warning: {warning}")
    return 0
