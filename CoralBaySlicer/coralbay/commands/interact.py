"""`coralbay interact`: the interactive session over JSON lines on stdin/stdout (docs/interactive.md)."""

from __future__ import annotations

import argparse

from coralbay.commands._common import EPILOG, add_model_options, add_series_option


def register(subparsers: argparse._SubParsersAction) -> None:

    p = subparsers.add_parser(
        "interact", help="interactive segmentation session (JSON lines on stdin/stdout)",
        description="Keep a model loaded and answer prompts (points, scribbles, box, segment to refine) "
                    "with full 3D masks, one JSON request per line on stdin, one JSON event per line on "
                    "stdout. Requests and answers are listed in docs/interactive.md.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    p.add_argument("--output-dir", required=True, metavar="DIR", help="folder for the masks the session writes")
    p.add_argument("--cache", metavar="DIR", help="feature cache folder (default: DIR/feature-cache)")
    p.add_argument("--examples", metavar="DIR", help="folder where accepted structures are kept as examples "
                   "(a restarted session restores the accepted structures found there)")
    p.add_argument("--propose-with", metavar="M", help="a segmentation model (e.g. one taught with 'coralbay "
                   "teach') whose segmentation starts each structure it knows, for the user to correct")
    add_series_option(p, help="which series an 'open' request given a DICOM study folder reads (its "
                              "SeriesNumber or SeriesInstanceUID; a request's own \"series\" wins); default: "
                              "the only regular CT volume, named on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from coralbay.bundle.loader import load_bundle
    from coralbay.device import select_device
    from coralbay.interactive.proposals import ModelProposals
    from coralbay.interactive.protocol import serve
    from coralbay.interactive.session import Session

    output = Path(args.output_dir)
    bundle = load_bundle(args.model, backbone=args.backbone, trust_remote_code=args.trust_remote_code)
    device = select_device(args.device)
    session = Session(bundle, cache_dir=args.cache or output / "feature-cache", examples_dir=args.examples,
                      device=str(device))
    proposals = ModelProposals(load_bundle(args.propose_with), device) if args.propose_with else None
    return serve(session, output, proposals=proposals, series=args.series)
