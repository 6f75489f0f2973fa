"""What the commands share: the epilog, the --progress option and its Reporter, the model
options and the input/bundle steps of the model-running commands.

Why here and not in `cli`: `cli` imports the commands, so anything both need lives below them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable

from coralbay.device import DEVICE_CHOICES
from coralbay.progress import Reporter
from coralbay.vocabulary import Task


EPILOG = """\
Coordinates (--point, --roi) are physical positions in millimetres in the LPS convention of ITK
and DICOM (x grows to the patient's left, y to the posterior, z to the head); Slicer shows RAS,
so negate x and y of a point read in Slicer.
Exit codes: 0 success, 1 failure (one sentence on stderr), 2 usage error, 130 interrupted.
"""


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", choices=("bar", "jsonl", "none"), default="bar",
                        help="progress display: a bar on stderr (default), JSON lines on stdout "
                             "(for programs such as the Slicer module), or none")


def make_reporter(args: argparse.Namespace, stages: dict[str, float] | None = None):
    """The command's Reporter; warnings the engine logs (logger "coralbay.*") reach it as log events."""
    mode = getattr(args, "progress", "bar")
    if mode == "bar" and not sys.stderr.isatty():
        mode = "quiet"
    reporter = Reporter("quiet" if mode == "none" else mode, stages=stages)
    engine_logger = logging.getLogger("coralbay")
    engine_logger.handlers = [h for h in engine_logger.handlers if not isinstance(h, _ReporterHandler)]
    engine_logger.addHandler(_ReporterHandler(reporter))
    engine_logger.propagate = False
    return reporter


class _ReporterHandler(logging.Handler):
    """Forwards engine log records (warnings and above) to the command's Reporter."""

    def __init__(self, reporter) -> None:
        super().__init__(level=logging.WARNING)
        self.reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        self.reporter.log(record.getMessage(), level=record.levelname.lower())


def float_list(count: int, what: str) -> Callable[[str], list[float]]:
    """An argparse type for `count` comma-separated numbers (mm)."""
    def parse(text: str) -> list[float]:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be {count} numbers separated by commas") from None
        if len(values) != count:
            raise argparse.ArgumentTypeError(f"{what} must be {count} numbers separated by commas")
        return values
    return parse


def bounded(convert: Callable[[str], Any], accept: Callable[[Any], bool], not_a_number: str,
            out_of_range: str) -> Callable[[str], Any]:
    """An argparse type: `convert` the text, refuse it with `not_a_number` when that fails and
    with `out_of_range` when `accept` says no."""
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(not_a_number) from None
        if not accept(value):
            raise argparse.ArgumentTypeError(out_of_range)
        return value
    return parse


def one_or_three(convert: Callable[[str], Any], accept: Callable[[Any], bool], not_numbers: str,
                 out_of_range: str) -> Callable[[str], list]:
    """An argparse type for one value (used for all three axes) or three comma-separated ones."""
    def parse(text: str) -> list:
        try:
            values = [convert(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(not_numbers) from None
        if len(values) == 1:
            values *= 3
        if len(values) != 3 or not all(accept(v) for v in values):
            raise argparse.ArgumentTypeError(out_of_range)
        return values
    return parse


overlap_value = bounded(float, lambda v: 0.0 <= v <= 0.95, "overlap must be a number from 0 to 0.95",
                        "overlap must be from 0 to 0.95")
positive_int = bounded(int, lambda v: v >= 1, "must be a positive integer", "must be a positive integer")
positive_float = bounded(float, lambda v: v > 0, "must be a positive number", "must be a positive number")
probability = bounded(float, lambda v: 0.0 <= v <= 1.0, "must be a number from 0 to 1", "must be a number from 0 to 1")


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", required=True, metavar="M",
                   help="catalog name (see 'coralbay models') or a bundle folder")
    p.add_argument("--backbone", metavar="WEIGHTS",
                   help="replace the bundle's encoder weights: a .safetensors file, an eva/VoCo "
                        ".pt/.ckpt state dict, or a Hugging Face hub id org/name[@revision]")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow running code from the hub repository given in --backbone (off by default)")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                   help="compute device (default auto: CUDA, then Apple MPS, then CPU)")
    p.add_argument("--window-batch", type=positive_int, metavar="N",
                   help="windows evaluated at once (default from the bundle; lower it to save memory)")


def load_for_task(args: argparse.Namespace, task: Task, reporter):
    """Load the bundle named by --model (and --backbone) and check it does `task`."""
    from coralbay.bundle.loader import load_bundle
    from coralbay.errors import BundleError

    bundle = load_bundle(args.model, backbone=args.backbone, trust_remote_code=args.trust_remote_code,
                         log=lambda m: reporter.log(m))
    if bundle.manifest.task != task:
        raise BundleError(f"The model {bundle.manifest.name} is a {bundle.manifest.task} model; "
                          f"this command needs a {task} model.")
    return bundle


SERIES_HELP = ("which series of a DICOM study folder (a DICOMDIR, or series in subfolders) to read: its "
               "SeriesNumber or SeriesInstanceUID; without it the only regular CT volume is read and named "
               "on stderr ('coralbay info FOLDER' lists the series)")


def add_series_option(p: argparse.ArgumentParser, help: str = SERIES_HELP) -> None:
    p.add_argument("--series", metavar="N|UID", help=help)


def read_input(path: str, reporter, series: str | None = None):
    """Read the input volume (`series`: which series of a DICOM study) and warn (not fail) when it
    does not look like CT in HU."""
    from coralbay.io.volumes import ct_intensity_warning, read_volume

    image = read_volume(path, series)
    warning = ct_intensity_warning(image)
    if warning:
        reporter.log(warning, level="warning")
    return image
