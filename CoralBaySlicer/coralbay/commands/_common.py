"""Options and steps shared by the model-running commands (segment, classify, bench)."""

from __future__ import annotations

import argparse
from typing import Callable

from coralbay.device import DEVICE_CHOICES


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


def overlap_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("overlap must be a number from 0 to 0.95") from None
    if not 0.0 <= value <= 0.95:
        raise argparse.ArgumentTypeError("overlap must be from 0 to 0.95")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


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


def load_for_task(args: argparse.Namespace, task: str, reporter):
    """Load the bundle named by --model (and --backbone) and check it does `task`."""
    from coralbay.bundle.loader import load_bundle
    from coralbay.errors import BundleError

    bundle = load_bundle(args.model, backbone=args.backbone, trust_remote_code=args.trust_remote_code,
                         log=lambda m: reporter.log(m))
    if bundle.manifest.task != task:
        raise BundleError(f"The model {bundle.manifest.name} is a {bundle.manifest.task} model; "
                          f"this command needs a {task} model.")
    return bundle


def read_input(path: str, reporter):
    """Read the input volume and warn (not fail) when it does not look like CT in HU."""
    from coralbay.io.volumes import ct_intensity_warning, read_volume

    image = read_volume(path)
    warning = ct_intensity_warning(image)
    if warning:
        reporter.log(warning, level="warning")
    return image
