"""Bundle manifests: read, validate against `manifest.schema.json`, and describe a model bundle.

Standard library only, so Slicer can list and describe models before PyTorch is installed.
A bundle is a folder holding `manifest.json` beside its `.safetensors` weight files.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from coralbay.bundle.schema_check import first_error
from coralbay.errors import BundleError, CoralBayError
from coralbay.grid.windows import WindowSettings
from coralbay.io.labels import LabelTable
from coralbay.jsonio import read_json
from coralbay.vocabulary import BlendMode, Task

MANIFEST_NAME = "manifest.json"
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")

DEFAULT_PREPROCESSING = {"crop_foreground": True, "antialias": True, "foreground_threshold_hu": -500.0,
                         "foreground_margin_mm": 10.0}
DEFAULT_INFERENCE = {"overlap": 0.5, "blend": "gaussian", "sigma_scale": 0.125,
                     "window_batch_size": 2}


class _Section:
    """A typed manifest section. Read it by attribute; `section["key"]` and `.get` also work, for
    code and tools written against the manifest's JSON form (the names are the JSON keys)."""

    def __getitem__(self, key: str) -> Any:
        if key not in {f.name for f in fields(self)}:  # type: ignore[arg-type]
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in {f.name for f in fields(self)} else default  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, BlendMode) else v)
                for k, v in asdict(self).items() if v is not None}  # type: ignore[call-overload]


@dataclass(frozen=True)
class PreprocessingSettings(_Section):
    """The manifest's `preprocessing`: what the network's input looks like."""

    spacing_mm: tuple[float, float, float]
    intensity_window_hu: tuple[float, float]
    crop_foreground: bool = True            # drop the air around the body (threshold box)
    antialias: bool = True                  # Gaussian pre-filter when downsampling
    foreground_threshold_hu: float = -500.0
    foreground_margin_mm: float = 10.0

    @classmethod
    def parse(cls, value: PreprocessingSettings | Mapping[str, Any]) -> PreprocessingSettings:
        """From a manifest section (a dict, defaults filled in) or as is."""
        if isinstance(value, cls):
            return value
        data = {**DEFAULT_PREPROCESSING, **value}
        return cls(spacing_mm=tuple(float(v) for v in data["spacing_mm"]),  # type: ignore[arg-type]
                   intensity_window_hu=tuple(float(v) for v in data["intensity_window_hu"]),  # type: ignore[arg-type]
                   crop_foreground=bool(data["crop_foreground"]), antialias=bool(data["antialias"]),
                   foreground_threshold_hu=float(data["foreground_threshold_hu"]),
                   foreground_margin_mm=float(data["foreground_margin_mm"]))


@dataclass(frozen=True)
class InferenceSettings(_Section):
    """The manifest's `inference`: how the sliding windows run."""

    window_size: tuple[int, int, int]
    overlap: float = 0.5
    blend: BlendMode = BlendMode.GAUSSIAN
    sigma_scale: float = 0.125
    window_batch_size: int = 2
    point_region_mm: Optional[tuple[float, float, float]] = None  # classification around a point

    @classmethod
    def parse(cls, value: InferenceSettings | Mapping[str, Any],
              spacing_mm: Sequence[float] | None = None) -> InferenceSettings:
        """From a manifest section; `point_region_mm` defaults to one window at `spacing_mm`."""
        if isinstance(value, cls):
            return value
        data = {**DEFAULT_INFERENCE, **value}
        region = data.get("point_region_mm")
        if region is None and spacing_mm is not None:
            region = [w * s for w, s in zip(data["window_size"], spacing_mm)]
        return cls(window_size=tuple(int(v) for v in data["window_size"]),  # type: ignore[arg-type]
                   overlap=float(data["overlap"]), blend=BlendMode(data["blend"]),
                   sigma_scale=float(data["sigma_scale"]), window_batch_size=int(data["window_batch_size"]),
                   point_region_mm=tuple(float(v) for v in region) if region is not None else None)  # type: ignore[arg-type]

    def windows(self, overlap: float | None = None, batch_size: int | None = None) -> WindowSettings:
        """The sliding-window settings, with a command's overrides (None: the bundle's)."""
        return WindowSettings(self.window_size, overlap=self.overlap if overlap is None else overlap,
                              blend=self.blend, sigma_scale=self.sigma_scale,
                              batch_size=self.window_batch_size if batch_size is None else batch_size)


@lru_cache(maxsize=1)
def manifest_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Manifest:
    """A validated manifest, with defaults filled in; `folder` is the bundle folder."""

    folder: Path
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def title(self) -> str:
        return self.data.get("title", self.name)

    @property
    def task(self) -> Task:
        return Task(self.data["task"])

    @property
    def labels(self) -> LabelTable:
        return LabelTable.from_dict(self.data.get("labels", []))

    @property
    def classes(self) -> list[str]:
        return list(self.data.get("classes", []))

    @property
    def num_outputs(self) -> int:
        """Output channels: background + labels for segmentation, classes for classification."""
        return len(self.labels) + 1 if self.task == Task.SEGMENTATION else len(self.classes)

    @property
    def preprocessing(self) -> PreprocessingSettings:
        return PreprocessingSettings.parse(self.data["preprocessing"])

    @property
    def inference(self) -> InferenceSettings:
        return InferenceSettings.parse(self.data["inference"], self.preprocessing.spacing_mm)

    def weight_path(self, entry: dict[str, Any]) -> Path:
        """The file of a weights entry, refused if it would leave the bundle folder."""
        path = (self.folder / entry["file"]).resolve()
        if self.folder.resolve() not in path.parents:
            raise BundleError(f"The bundle {self.name} names a weight file outside its folder.")
        return path

    def summary(self) -> dict[str, Any]:
        """What `coralbay models --json` and the Slicer model list show."""
        out = {"name": self.name, "title": self.title, "version": self.data["version"],
               "task": str(self.task), "path": str(self.folder),
               "description": self.data.get("description", "")}
        if self.task == Task.SEGMENTATION:
            out["labels"] = [lab.name for lab in self.labels]
        else:
            out["classes"] = self.classes
        return out


def validate_manifest(data: Any) -> None:
    """Raise BundleError naming the first problem; also checks what a schema cannot express."""
    error = first_error(data, manifest_schema())
    if error:
        raise BundleError(f"The bundle manifest is invalid: {error}.")
    if data["task"] == "segmentation" and "labels" not in data:
        raise BundleError("The bundle manifest is invalid: a segmentation bundle needs labels.")
    if data["task"] == "classification" and "classes" not in data:
        raise BundleError("The bundle manifest is invalid: a classification bundle needs classes.")
    try:
        LabelTable.from_dict(data.get("labels", []))
    except CoralBayError as exc:
        raise BundleError(f"The bundle manifest is invalid: {exc}") from None
    lo, hi = data["preprocessing"]["intensity_window_hu"]
    if hi <= lo:
        raise BundleError("The bundle manifest is invalid: the intensity window is empty.")
    roles = [w["role"] for w in data["weights"]]
    if roles.count("model") != 1 or roles.count("backbone") > 1:
        raise BundleError("The bundle manifest is invalid: it needs one model weight file and at most one backbone file.")


def read_manifest(folder: str | os.PathLike) -> Manifest:
    """Read and validate `folder/manifest.json`."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise BundleError(f"The model bundle folder {folder} does not exist.")
    if not path.is_file():
        raise BundleError(f"The folder {folder} is not a model bundle (no {MANIFEST_NAME}).")
    data = read_json(path, "bundle manifest", BundleError)
    validate_manifest(data)
    return Manifest(folder.resolve(), data)
