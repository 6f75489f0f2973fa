"""`coralbay teach`: a segmentation bundle from the structures a user accepted (docs/interactive.md).

Thin: parse, call `training.teach.teach_bundle`, report. Cancel = kill the process: the bundle is
written atomically at the very end, so a cancelled run leaves no model behind.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coralbay.commands._common import EPILOG, add_progress_option, make_reporter, positive_float, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    from coralbay.device import DEVICE_CHOICES

    p = subparsers.add_parser(
        "teach", help="teach a segmentation model from accepted interactive structures",
        description="Train the Swin-UNETR decoder on the frozen encoder of --model from the structures "
                    "accepted in interactive sessions (the --examples folder of 'coralbay interact' or "
                    "of the Slicer module), write it as a bundle and add it to the catalog as NAME.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("examples", metavar="EXAMPLES", help="folder of accepted structures (<scan id>/example.json)")
    p.add_argument("--model", "-m", required=True, metavar="M",
                   help="the model the structures were accepted with (catalog name or bundle folder): "
                        "its encoder is kept, frozen")
    p.add_argument("--name", required=True, help="catalog name of the taught model (lower case, digits, . _ -)")
    p.add_argument("--output", "-o", metavar="BUNDLE", help="bundle folder to write (default: "
                   "$CORALBAY_HOME/models/NAME); never replaces an existing one")
    p.add_argument("--steps", type=positive_int, default=None, metavar="N",
                   help="most decoder training steps of 2 crops (default 200, 60 with --from); training stops "
                        "sooner once held-out crops of the examples stop improving")
    p.add_argument("--minutes", type=positive_float, default=None, metavar="MIN",
                   help="time budget from the start of training, the encoder passes over the crops included "
                        "(it stops after the step that spends it, keeping the best weights so far)")
    p.add_argument("--from", dest="start_from", metavar="TAUGHT",
                   help="incremental teach: start from a model taught before from some of these examples "
                        "(same encoder as --model), e.g. after accepting structures on one more scan")
    p.add_argument("--lr", type=positive_float, default=None, help="peak learning rate (default 0.01)")
    p.add_argument("--fresh-decoder", action="store_true",
                   help="train every decoder block from random weights (default: start them from --model's "
                        "decoder; the output layer, one channel per structure, always starts afresh)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation and crops (default 0)")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="compute device (default auto)")
    p.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads for PyTorch")
    p.add_argument("--no-catalog", action="store_true", help="write the bundle without adding it to the catalog")
    add_progress_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from coralbay.training.api import SEG_STAGES
    from coralbay.training.teach import TEACH_LR, TeachRequest, teach_bundle

    request = TeachRequest(examples=Path(args.examples), base=args.model, name=args.name,
                           output=Path(args.output) if args.output else None, steps=args.steps,
                           minutes=args.minutes, start_from=args.start_from,
                           lr=args.lr or TEACH_LR, fresh_decoder=args.fresh_decoder, seed=args.seed, device=args.device, threads=args.threads,
                           add_to_catalog=not args.no_catalog)
    reporter = make_reporter(args, SEG_STAGES)
    result = teach_bundle(request, reporter)
    reporter.result(outputs={"bundle": str(result.bundle)}, metrics=result.metrics, name=args.name)
    if args.progress != "jsonl":
        training = result.metrics["training"]
        print(f"Taught {args.name} in {training['steps']} steps (stopped: {training['stopped']}): wrote the bundle "
              f"{result.bundle}"
              + ("" if args.no_catalog else " and added it to the catalog"))
    return 0
