"""Bundle manifests: read, validate against `manifest.schema.json`, and describe a model bundle.

Standard library only, so Slicer can list and describe models before PyTorch is installed.
A bundle is a folder holding `manifest.json` beside its `.safetensors` weight files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from coralbay.bundle.schema_check import first_error
from coralbay.errors import BundleError, CoralBayError
from coralbay.io.labels import LabelTable
from coralbay.jsonio import read_json

MANIFEST_NAME = "manifest.json"
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")

DEFAULT_PREPROCESSING = {"crop_foreground": True, "antialias": True, "foreground_threshold_hu": -500.0,
                         "foreground_margin_mm": 10.0}
DEFAULT_INFERENCE = {"overlap": 0.5, "blend": "gaussian", "sigma_scale": 0.125,
                     "window_batch_size": 2}


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
    def task(self) -> str:
        return self.data["task"]

    @property
    def labels(self) -> LabelTable:
        return LabelTable.from_dict(self.data.get("labels", []))

    @property
    def classes(self) -> list[str]:
        return list(self.data.get("classes", []))

    @property
    def num_outputs(self) -> int:
        """Output channels: background + labels for segmentation, classes for classification."""
        return len(self.labels) + 1 if self.task == "segmentation" else len(self.classes)

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {**DEFAULT_PREPROCESSING, **self.data["preprocessing"]}

    @property
    def inference(self) -> dict[str, Any]:
        defaults = {**DEFAULT_INFERENCE, "point_region_mm": [
            w * s for w, s in zip(self.data["inference"]["window_size"], self.preprocessing["spacing_mm"])]}
        return {**defaults, **self.data["inference"]}

    def weight_path(self, entry: dict[str, Any]) -> Path:
        """The file of a weights entry, refused if it would leave the bundle folder."""
        path = (self.folder / entry["file"]).resolve()
        if self.folder.resolve() not in path.parents:
            raise BundleError(f"The bundle {self.name} names a weight file outside its folder.")
        return path

    def summary(self) -> dict[str, Any]:
        """What `coralbay models --json` and the Slicer model list show."""
        out = {"name": self.name, "title": self.title, "version": self.data["version"],
               "task": self.task, "path": str(self.folder),
               "description": self.data.get("description", "")}
        if self.task == "segmentation":
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
