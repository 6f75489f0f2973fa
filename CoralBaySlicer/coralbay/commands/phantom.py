"""`coralbay phantom`: write a synthetic abdominal CT and its exact label map."""

from __future__ import annotations

import argparse
import json

from coralbay.errors import UsageError

DESCRIPTION = """\
Generate a synthetic abdominal CT in Hounsfield units with an exact label map: body wall (skin,
fat, muscle, ribs), liver, spleen, both kidneys, contrast-filled aorta, vertebrae, lung bases,
bowel, and optionally hypodense liver lesions. The same seed and options always give the same
files. Anatomy, voxel spacing and orientation are random per seed unless given; the anatomy of a
seed stays the same whatever spacing, orientation or lesion option you choose.

Labels: 1 liver, 2 spleen, 3 kidney_left, 4 kidney_right, 5 aorta, 6 vertebrae, 7 lung,
8 liver_lesion (names, colours and SNOMED CT codes in LABELS' sidecar <name>.labels.json).
The output format follows the extension: .nii.gz, .nii, .nrrd or .mha.
"""

EXAMPLES = """\
examples:
  coralbay phantom --seed 1 --output ct.nii.gz --labels truth.nii.gz
  coralbay phantom --seed 7 --output ct.nrrd --labels truth.nrrd --spacing 0.7,0.7,3 --lesions yes
  coralbay phantom --seed 7 --output ct.nrrd --labels truth.nrrd --spacing 1.5 --direction RAS
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "phantom", help="write a synthetic abdominal CT and its exact label map",
        description=DESCRIPTION, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", required=True, metavar="N", help="random seed, a whole number >= 0")
    p.add_argument("--output", required=True, metavar="CT", help="CT volume to write (HU, int16)")
    p.add_argument("--labels", required=True, metavar="LABELS", help="label map to write (uint8)")
    p.add_argument("--spacing", metavar="X,Y,Z",
                   help="voxel spacing in mm per image axis, or one number for isotropic "
                        "(default: random per seed, isotropic 1.2-2 mm or 0.7-1 mm in-plane with "
                        "2-5 mm slices)")
    p.add_argument("--size-mm", metavar="LR,AP,SI",
                   help="field of view in mm along the patient's left-right, anterior-posterior "
                        "and head-foot axes; the body is scaled to fill it (default 300,250,200)")
    p.add_argument("--shape", metavar="NX,NY,NZ",
                   help="voxels per image axis; combine with at most one of --spacing, --size-mm")
    p.add_argument("--direction", metavar="CODE|9 NUMBERS",
                   help="image axes in LPS: an orientation code such as LPS, RAS, LPI, PIR, or "
                        "nine comma-separated direction cosines row by row as ITK stores them "
                        "(write --direction=-1,0,0,... when the first is negative) "
                        "(default: random per seed, mostly axial, sometimes permuted or tilted)")
    p.add_argument("--lesions", choices=("yes", "no", "random"), default="random",
                   help="hypodense liver lesions: always, never, or decided by the seed (default)")
    p.add_argument("--noise-hu", type=float, default=None, metavar="HU",
                   help="standard deviation of the image noise in HU (default 15)")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    p.set_defaults(run=run)


def _numbers(text: str | None, option: str, count: tuple[int, ...]) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        values = []
    if len(values) not in count:
        want = " or ".join(str(c) for c in count)
        raise UsageError(f"{option} needs {want} comma-separated numbers (got {text!r}).")
    return values


def _seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        raise UsageError(f"--seed must be a whole number >= 0 (got {text!r}).") from None
    if seed < 0:
        raise UsageError(f"--seed must be a whole number >= 0 (got {text!r}).")
    return seed


def run(args: argparse.Namespace) -> int:
    from coralbay.phantom import DEFAULT_NOISE_HU, generate_phantom, write_phantom
    from coralbay.io.volumes import check_output_path

    seed = _seed(args.seed)
    spacing = _numbers(args.spacing, "--spacing", (1, 3))
    size_mm = _numbers(args.size_mm, "--size-mm", (1, 3))
    shape = _numbers(args.shape, "--shape", (1, 3))
    if shape is not None and any(v != int(v) for v in shape):
        raise UsageError(f"--shape needs whole numbers of voxels (got {args.shape!r}).")
    direction = None
    if args.direction is not None:
        direction = (args.direction.strip() if args.direction.strip().isalpha()
                     else _numbers(args.direction, "--direction", (9,)))
    lesions = {"yes": True, "no": False, "random": None}[args.lesions]
    noise = DEFAULT_NOISE_HU if args.noise_hu is None else args.noise_hu
    # Refuse bad output paths before spending time on generation.
    ct_path = check_output_path(args.output)
    labels_path = check_output_path(args.labels)
    if ct_path.resolve() == labels_path.resolve():
        raise UsageError("--output and --labels must be different files.")

    ph = generate_phantom(seed, spacing=spacing, size_mm=size_mm, direction=direction,
                          lesions=lesions, noise_hu=noise, shape=shape)
    write_phantom(ph, args.output, args.labels)

    from coralbay.io.labels import label_table_path_for

    summary = {
        "seed": seed,
        "ct": str(args.output),
        "labels": str(args.labels),
        "label_table": str(label_table_path_for(args.labels)),
        "size": list(ph.image.GetSize()),
        "spacing_mm": [round(v, 6) for v in ph.image.GetSpacing()],
        "origin_mm_lps": [round(v, 4) for v in ph.image.GetOrigin()],
        "direction": [round(v, 6) for v in ph.image.GetDirection()],
        "has_lesion": ph.has_lesion,
        "lesion_centers_lps": [list(c) for c in ph.lesion_centers_lps],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    size = " x ".join(map(str, summary["size"]))
    spacing_text = " x ".join(f"{v:g}" for v in summary["spacing_mm"])
    lesion_text = (f"{len(ph.lesion_centers_lps)} liver lesion(s)" if ph.has_lesion else "no lesion")
    print(f"phantom seed {seed}: {size} voxels of {spacing_text} mm, {lesion_text}")
    print(f"CT          {summary['ct']}")
    print(f"labels      {summary['labels']}")
    print(f"label table {summary['label_table']}")
    return 0
