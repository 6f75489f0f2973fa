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
    """`with PeakMemory(device) as peak:` ... then `peak.added_rss_mb`, `peak.added_gpu_mb`.

    Inside the block, `peak.stage(name)` starts a named stage; `added_rss_mb_by_stage` then gives
    each stage's own peak above the block's baseline (the block's peak is the largest of them).
    """

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
        self._stage: str | None = None
        self._stage_peak = 0
        self._stage_maxrss = 0
        self.stage_peaks: dict[str, int] = {}
        self.stage_gpu_peaks: dict[str, int] = {}

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = self._process.memory_info().rss
            self.peak_rss = max(self.peak_rss, rss)
            self._stage_peak = max(self._stage_peak, rss)
            time.sleep(self.interval_s)

    def stage(self, name: str | None) -> None:
        """Close the current stage (its sampled peak, or the high-water mark if that rose) and start `name`."""
        rss = self._process.memory_info().rss
        cuda = self._cuda()
        if self._stage is not None:
            peak = max(self._stage_peak, rss)
            maxrss = _maxrss_bytes()
            if maxrss > self._stage_maxrss:
                peak = max(peak, maxrss)
            self.stage_peaks[self._stage] = max(self.stage_peaks.get(self._stage, 0), peak)
            if cuda:
                cuda.synchronize(self.device)
                self.stage_gpu_peaks[self._stage] = max(self.stage_gpu_peaks.get(self._stage, 0),
                                                        cuda.max_memory_allocated(self.device))
        if cuda and name is not None:
            cuda.reset_peak_memory_stats(self.device)
        self._stage, self._stage_peak, self._stage_maxrss = name, rss, _maxrss_bytes()

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
        self.stage(None)
        cuda = self._cuda()
        if cuda:
            cuda.synchronize(self.device)
            self.peak_gpu = max([cuda.max_memory_allocated(self.device), *self.stage_gpu_peaks.values()])
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
    def added_rss_mb_by_stage(self) -> dict[str, float]:
        return {name: round((peak - self.base_rss) / MB, 1) for name, peak in self.stage_peaks.items()}

    @property
    def added_gpu_mb_by_stage(self) -> dict[str, float] | None:
        if not self._cuda():
            return None
        return {name: round((peak - self.base_gpu) / MB, 1) for name, peak in self.stage_gpu_peaks.items()}

    @property
    def base_rss_mb(self) -> float:
        return self.base_rss / MB

    @property
    def added_gpu_mb(self) -> float | None:
        return (self.peak_gpu - self.base_gpu) / MB if self._cuda() else None

    @property
    def peak_gpu_mb(self) -> float | None:
        return self.peak_gpu / MB if self._cuda() else None
