"""Peak memory added by a block of code: resident set (sampled, and the kernel's high-water mark) and GPU.

Why both RSS measures: a sampling thread sees the resident size every few milliseconds but can
miss a short spike; `ru_maxrss` never misses one but only counts from process start. When the
high-water mark rose during the block, it is the block's peak; otherwise the sampled peak is.
"""

from __future__ import annotations

import resource
import sys
import threading
import time

import psutil

MB = 1024.0 * 1024.0


def _maxrss_bytes() -> int:
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value if sys.platform == "darwin" else value * 1024)  # KiB on Linux


class PeakMemory:
    """`with PeakMemory(device) as peak:` ... then `peak.added_rss_mb`, `peak.added_gpu_mb`."""

    def __init__(self, device=None, interval_s: float = 0.002) -> None:
        self.device = device
        self.interval_s = interval_s
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.base_rss = 0
        self.peak_rss = 0
        self.base_gpu = 0
        self.peak_gpu = 0
        self.peak_gpu_reserved = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)
            time.sleep(self.interval_s)

    def _cuda(self):
        if self.device is not None and getattr(self.device, "type", "") == "cuda":
            import torch

            return torch.cuda
        return None

    def __enter__(self) -> "PeakMemory":
        cuda = self._cuda()
        if cuda:
            cuda.synchronize(self.device)
            cuda.reset_peak_memory_stats(self.device)
            self.base_gpu = cuda.memory_allocated(self.device)
        self.base_rss = self._process.memory_info().rss
        self.peak_rss = self.base_rss
        self._maxrss_before = _maxrss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        cuda = self._cuda()
        if cuda:
            cuda.synchronize(self.device)
            self.peak_gpu = cuda.max_memory_allocated(self.device)
            self.peak_gpu_reserved = cuda.max_memory_reserved(self.device)
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)
        maxrss_after = _maxrss_bytes()
        if maxrss_after > self._maxrss_before:
            self.peak_rss = max(self.peak_rss, maxrss_after)

    @property
    def added_rss_mb(self) -> float:
        return (self.peak_rss - self.base_rss) / MB

    @property
    def base_rss_mb(self) -> float:
        return self.base_rss / MB

    @property
    def added_gpu_mb(self) -> float | None:
        return (self.peak_gpu - self.base_gpu) / MB if self._cuda() else None

    @property
    def peak_gpu_mb(self) -> float | None:
        return self.peak_gpu / MB if self._cuda() else None
