"""`coralbay segment`: label map of a CT volume on exactly the input's grid."""

from __future__ import annotations

import argparse

from coralbay.commands._common import (EPILOG, add_model_options, add_progress_option, add_series_option,
                                       float_list, load_for_task, make_reporter, overlap_value, read_input)
from coralbay.vocabulary import Task

STAGES = {"load": 0.05, "preprocess": 0.1, "inference": 0.7, "restore": 0.1, "write": 0.05}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "segment", help="segment a CT volume into a label map",
        description="Segment a CT volume (NIfTI/NRRD/MHA file or DICOM series folder) with a "
                    "segmentation bundle. The label map is written on exactly the input's grid, "
                    "with its label table (names, colours, terminology) beside it as "
                    "<name>.labels.json.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="INPUT", help="CT volume file, DICOM series folder or DICOM study folder")
    add_series_option(p)
    p.add_argument("--output", "-o", required=True, metavar="LABELS",
                   help="label map to write (.nii.gz, .nii, .nrrd or .mha)")
    add_model_options(p)
    p.add_argument("--overlap", type=overlap_value, metavar="F",
                   help="fraction by which sliding windows overlap (default from the bundle, "
                        "usually 0.5; higher is smoother and slower)")
    p.add_argument("--roi", type=float_list(6, "--roi"), metavar="X0,Y0,Z0,X1,Y1,Z1",
                   help="only segment inside this box: two opposite corners in mm, LPS (write "
                        "--roi=-10,... when the first number is negative)")
    p.add_argument("--structures", metavar="NAMES",
                   help="comma-separated structure names to keep (default: all the model knows)")
    p.add_argument("--probabilities", metavar="DIR",
                   help="also write each structure's probability map (float, input grid) into DIR")
    add_progress_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from coralbay.device import describe, select_device
    from coralbay.inference.segment import segment_image
    from coralbay.io.labels import label_table_path_for
    from coralbay.io.label_maps import write_label_map, write_probability_maps
    from coralbay.io.volumes import check_output_path, series_read

    output = check_output_path(args.output)
    reporter = make_reporter(args, STAGES)
    device = select_device(args.device)
    reporter.progress("load", 0.0, "reading input")
    image = read_input(args.input, reporter, args.series)
    bundle = load_for_task(args, Task.SEGMENTATION, reporter)
    structures = [s for s in args.structures.split(",")] if args.structures else None
    if structures:
        bundle.manifest.labels.subset(structures)  # fail on unknown names before the long run
    reporter.progress("load", 1.0, f"model {bundle.manifest.name} on {describe(device)}")
    result = segment_image(image, bundle, device, overlap=args.overlap, roi_lps=args.roi,
                           structures=structures, probabilities=bool(args.probabilities),
                           window_batch_size=args.window_batch, progress=reporter.progress)
    reporter.progress("write", 0.0, "writing")
    outputs = {"labels": str(write_label_map(result.labels, result.label_table, output)),
               "label_table": str(label_table_path_for(output))}
    if args.probabilities:
        outputs["probabilities"] = str(write_probability_maps(result.probabilities or {}, args.probabilities))
    reporter.progress("write", 1.0, "done")
    reporter.result(outputs=outputs, **series_read(image), model=bundle.manifest.name, device=device.type,
                    structures=[lab.name for lab in result.label_table], stats=result.stats)
    if args.progress != "jsonl":
        print(f"Wrote {outputs['labels']}")
    return 0
