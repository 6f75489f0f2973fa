"""Choosing the compute device: auto prefers CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

from coralbay.errors import DeviceError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def select_device(name: str = "auto") -> "torch.device":
    """The torch device for `name`; an explicitly requested, unavailable device is an error."""
    import torch

    name = (name or "auto").lower()
    if name not in DEVICE_CHOICES and not name.startswith("cuda:"):
        raise DeviceError(f"Unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}.")
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name.startswith("cuda") and not cuda:
        raise DeviceError("CUDA was requested but no CUDA GPU is available to PyTorch; use --device cpu.")
    if name.startswith("cuda:") and int(name.split(":")[1]) >= torch.cuda.device_count():
        raise DeviceError(f"{name} was requested but only {torch.cuda.device_count()} CUDA device(s) exist.")
    if name == "mps" and not mps:
        raise DeviceError("Apple MPS was requested but is not available; use --device cpu.")
    return torch.device(name)


def describe(device: "torch.device") -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type
