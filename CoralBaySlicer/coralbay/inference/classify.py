"""Scan- and point-level classification: pool per-window encoder features, then a linear head.

A scan is covered by sliding windows; the feature vectors of windows that hold anything but air
are averaged into one scan vector (as CoralBay's scan-level benchmarks pool over windows) and
the head turns it into class probabilities. With a point (e.g. a nodule centre in LPS mm), only
the region of `point_region_mm` around it is used, as the seed's nodule benchmarks crop around
the nodule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from coralbay.bundle.loader import LoadedBundle
from coralbay.bundle.manifest import Manifest
from coralbay.errors import ConfirmationNeeded, CoralBayError, InputError
from coralbay.inference.fast_swin import enable_fast_swin
from coralbay.inference.preprocess import Prepared, prepare
from coralbay.inference.sliding_window import sliding_window_embeddings

Progress = Callable[[str, float, str], None]
LONG_RUN_S = 60.0  # a run estimated longer than this is refused unless confirmed (allow_long_run)


@dataclass(frozen=True)
class RunEstimate:
    """How long a classification will take: its windows times the pace of its own windows on the device."""

    windows: int
    window_size: tuple[int, int, int]
    seconds_per_window: float
    device: str

    @property
    def seconds(self) -> float:
        return self.windows * self.seconds_per_window

    def describe(self) -> str:
        minutes = self.seconds / 60
        duration = f"about {minutes:.0f} min" if minutes >= 2 else f"about {self.seconds:.0f} s"
        size = "x".join(map(str, self.window_size))
        return f"up to {self.windows:,} windows of {size} voxels, {duration} on {self.device}"

    def to_dict(self) -> dict:
        return {"windows": self.windows, "window_size": list(self.window_size),
                "seconds_per_window": round(self.seconds_per_window, 4), "seconds": round(self.seconds, 1),
                "device": self.device, "long": self.seconds > LONG_RUN_S}


class RunPace:
    """A classification's estimate from its own first windows: the `watch` of
    `sliding_window_embeddings`, so that no network forward is computed only to be timed.

    Timing real windows (not a FLOP guess) makes the estimate hold on any device. The first window
    (the loop runs the first two alone) carries the first call's set-up (kernels, caches) and so
    over-states the pace: when even it projects the run within LONG_RUN_S, that settles the
    estimate; otherwise the second window gives the pace. A run of one window is not timed: the
    run is that window.
    """

    def __init__(self, window_size: Sequence[int], device: torch.device) -> None:
        self.window_size = tuple(int(v) for v in window_size)
        self.device = str(device)
        self.estimate: RunEstimate | None = None  # set once settled
        self._start = time.perf_counter()
        self._first: tuple[int, float] | None = None  # windows done and seconds after the first batch

    def __call__(self, done: int, total: int) -> bool:
        """Called before the first window (0) and after each batch; True once the estimate is settled."""
        if self.estimate is not None:
            return True
        if done == 0:
            self._start = time.perf_counter()
            if total <= 1:
                self.estimate = RunEstimate(total, self.window_size, 0.0, self.device)  # type: ignore[arg-type]
            return self.estimate is not None
        elapsed = time.perf_counter() - self._start
        if self._first is None and (done >= total or elapsed / done * total <= LONG_RUN_S):
            per_window = elapsed / done
        elif self._first is None:
            self._first = (done, elapsed)
            return False
        else:
            per_window = (elapsed - self._first[1]) / (done - self._first[0])
        self.estimate = RunEstimate(total, self.window_size, per_window, self.device)  # type: ignore[arg-type]
        return True


def estimate_classification(prepared: Prepared, bundle: LoadedBundle, device: torch.device, *,
                            overlap: float | None = None, window_batch_size: int | None = None) -> RunEstimate:
    """How long classifying a prepared scan takes on `device`: its first windows run and timed
    (`RunPace`), then the run stops.

    Why: a bundle made for the region around a point, run over a whole scan at its fine spacing,
    is thousands of windows (20+ minutes on a CPU); the user should know before, not after.
    """
    settings = bundle.manifest.inference.windows(overlap=overlap, batch_size=window_batch_size)
    pace = RunPace(settings.size, device)
    network = bundle.network.to(device)
    enable_fast_swin(network)
    sliding_window_embeddings(prepared.array, network.embed, settings, device=device, watch=pace)
    assert pace.estimate is not None  # the run either settled its pace or ran to its end
    return pace.estimate


def refuse_long_run(estimate: RunEstimate, point_lps: Sequence[float] | None, manifest: Manifest) -> None:
    """One sentence refusing a run longer than LONG_RUN_S that the user has not confirmed."""
    region = manifest.inference.point_region_mm
    hint = (f"; the model {manifest.name} is made for the {' x '.join(f'{r:g}' for r in region)} mm region around "
            "a point, which --point classifies" if point_lps is None and region else "")
    raise ConfirmationNeeded(f"This classification needs {estimate.describe()}{hint}; confirm a run that long "
                        "with --allow-long-run.")


def point_roi(image: sitk.Image, point_lps: Sequence[float], region_mm: Sequence[float]) -> list[float]:
    """An LPS box of `region_mm` centred on `point_lps`; the point must lie inside the volume."""
    index = image.TransformPhysicalPointToContinuousIndex([float(v) for v in point_lps])
    if any(i < -0.5 or i > s - 0.5 for i, s in zip(index, image.GetSize())):
        raise InputError(f"The point {tuple(round(v, 1) for v in point_lps)} mm (LPS) lies outside the volume.")
    half = np.asarray(region_mm, float) / 2
    p = np.asarray(point_lps, float)
    return [*(p - half), *(p + half)]


def prepare_classification(image: sitk.Image, manifest: Manifest,
                           point_lps: Sequence[float] | None = None) -> Prepared:
    """The CPU part of classification: the scan (or the region around a point) on the model grid,
    intensities windowed; what `prepared_embedding` and `classify_prepared` take."""
    preprocessing = manifest.preprocessing
    roi = None
    if point_lps is not None:
        roi = point_roi(image, point_lps, manifest.inference.point_region_mm)
        preprocessing = replace(preprocessing, crop_foreground=False)  # the point's neighbourhood as is
    return prepare(image, preprocessing, roi)


def prepared_embedding(prepared: Prepared, manifest: Manifest, embed: Callable[[torch.Tensor], torch.Tensor],
                       device: torch.device, *, overlap: float | None = None,
                       window_batch_size: int | None = None,
                       progress: Progress = lambda s, f, m="": None,
                       watch: Callable[[int, int], bool] | None = None) -> tuple[torch.Tensor, dict]:
    """The pooled feature vector (1, D) of a prepared scan (`prepare_classification`)."""
    vectors, stats = sliding_window_embeddings(
        prepared.array, embed, manifest.inference.windows(overlap=overlap, batch_size=window_batch_size),
        device=device, progress=lambda f, m: progress("inference", f, m), watch=watch)
    return vectors.mean(dim=0, keepdim=True), stats


def scan_embedding(image: sitk.Image, manifest: Manifest, embed: Callable[[torch.Tensor], torch.Tensor],
                   device: torch.device, *, point_lps: Sequence[float] | None = None,
                   overlap: float | None = None, window_batch_size: int | None = None,
                   progress: Progress = lambda s, f, m="": None) -> tuple[torch.Tensor, dict]:
    """The pooled feature vector (1, D) of a scan, or of the region around a point: what the
    head sees. Training a head (`coralbay train-cls`) uses this same function."""
    progress("preprocess", 0.0, "cropping and resampling")
    prepared = prepare_classification(image, manifest, point_lps)
    progress("preprocess", 1.0, "")
    return prepared_embedding(prepared, manifest, embed, device, overlap=overlap,
                              window_batch_size=window_batch_size, progress=progress)


def classify_image(image: sitk.Image, bundle: LoadedBundle, device: torch.device, *,
                   point_lps: Sequence[float] | None = None, overlap: float | None = None,
                   window_batch_size: int | None = None, allow_long_run: bool = True,
                   progress: Progress = lambda s, f, m="": None) -> dict:
    """Class probabilities for a scan (or the region around a point) with a classification bundle.

    Without `allow_long_run`, the run's own first windows are timed (`RunPace`) and the run is
    refused (one sentence with the estimate) as soon as they project it longer than LONG_RUN_S;
    the report then carries the estimate.
    """
    start = time.perf_counter()
    progress("preprocess", 0.0, "cropping and resampling")
    prepared = prepare_classification(image, bundle.manifest, point_lps)
    progress("preprocess", 1.0, "")
    pace = None if allow_long_run else RunPace(bundle.manifest.inference.windows(overlap=overlap).size, device)

    def refuse_when_long(done: int, total: int) -> bool:
        """Refuse the run as soon as its own first windows project it over LONG_RUN_S (never once
        they are the whole run: it is done)."""
        assert pace is not None
        if pace.estimate is None and pace(done, total) and done < total and pace.estimate.seconds > LONG_RUN_S:
            refuse_long_run(pace.estimate, point_lps, bundle.manifest)
        return False

    report = classify_prepared(prepared, bundle, device, point_lps=point_lps, overlap=overlap,
                               window_batch_size=window_batch_size, progress=progress,
                               watch=None if pace is None else refuse_when_long)
    report["seconds"] = round(time.perf_counter() - start, 3)
    if pace is not None and pace.estimate is not None:
        report["estimate"] = pace.estimate.to_dict()
    return report


def classify_prepared(prepared: Prepared, bundle: LoadedBundle, device: torch.device, *,
                      point_lps: Sequence[float] | None = None, overlap: float | None = None,
                      window_batch_size: int | None = None,
                      progress: Progress = lambda s, f, m="": None,
                      watch: Callable[[int, int], bool] | None = None) -> dict:
    """`classify_image`'s report for a scan `prepare_classification` made (with the same point);
    its `seconds` count the network and head only. `watch`: as `sliding_window_embeddings`'."""
    manifest = bundle.manifest
    start = time.perf_counter()
    network = bundle.network.to(device)
    enable_fast_swin(network)
    scan_vector, stats = prepared_embedding(prepared, manifest, network.embed, device, overlap=overlap,
                                            window_batch_size=window_batch_size, progress=progress, watch=watch)
    with torch.inference_mode():
        probs = torch.softmax(network.head(scan_vector.to(device)).float(), dim=1)[0].cpu().numpy()
    classes = manifest.classes
    best = int(np.argmax(probs))
    return {"model": manifest.name, "classes": classes,
            "probabilities": {c: float(p) for c, p in zip(classes, probs)},
            "prediction": classes[best], "confidence": float(probs[best]),
            "point_lps": list(map(float, point_lps)) if point_lps is not None else None,
            "windows": stats["windows_evaluated"], "seconds": round(time.perf_counter() - start, 3)}
