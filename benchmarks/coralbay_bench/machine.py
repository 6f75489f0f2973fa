"""What a benchmark ran on: CPU, cores, load, memory, library versions, GPU and its peak bf16 rate."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import psutil

# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s from NVIDIA's data sheets, matched against
# torch.cuda.get_device_name() in this order (first match wins). See docs/benchmarks.md.
PEAK_BF16_TFLOPS = (
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),   # SXM5 ("NVIDIA H100 80GB HBM3")
    ("GH200", 989.0),
    ("A100", 312.0),   # SXM4 and PCIe alike
    ("L40S", 362.0),
    ("L4", 121.0),
)


def peak_bf16_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of a GPU named `device_name`, or None when not in the table."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops * 1e12
    return None


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def describe_machine(device_name: str | None = None) -> dict:
    """The machine's description for the benchmark JSON (GPU fields when a CUDA device is used)."""
    import monai
    import SimpleITK as sitk
    import torch

    info = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 1024 ** 3, 1),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average": load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "simpleitk": sitk.Version_VersionString(),
        "gpu": None,
    }
    if device_name:
        peak = peak_bf16_flops(device_name)
        info["gpu"] = {"name": device_name, "peak_bf16_flops": peak,
                       "cuda": torch.version.cuda}
    return info
