"""Creating bundles: manifest fields for a new model, and randomly initialised bundles.

Why random bundles exist: tests, the benchmark and training need real bundles of the CoralBay
architecture at small widths without weights from the network; `train-seg`/`train-cls` start
from one and save the trained result with `loader.save_bundle`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from coralbay.bundle.loader import save_bundle
from coralbay.io.labels import LabelTable
from coralbay.model.build import ArchitectureSpec, build_network

DEMO_NOTICE = ("Demonstration model trained on synthetic phantoms: not for any clinical or research "
               "conclusion.")


def manifest_fields(name: str, task: str, *, feature_size: int, labels: LabelTable | None = None,
                    classes: Sequence[str] | None = None, spacing_mm: Sequence[float] = (1.5, 1.5, 1.5),
                    window_hu: Sequence[float] = (-175.0, 250.0), window_size: Sequence[int] = (96, 96, 96),
                    overlap: float = 0.5, project_dims: Sequence[int] | None = None,
                    pooling: str = "multiscale", title: str | None = None, description: str = "",
                    license: str = "Apache-2.0", citation: str = "CoralBay CT foundation model (kaiko.ai).",
                    version: str = "0.1.0", reproduce: str | None = None, window_batch_size: int = 2) -> dict:
    """Everything a manifest needs except the weights list (filled in by `save_bundle`)."""
    spec = ArchitectureSpec(task=task, feature_size=feature_size, project_dims=tuple(project_dims) if project_dims else None,
                            pooling=pooling)
    fields: dict = {
        "name": name, "title": title or name, "version": version, "task": task,
        "description": description, "license": license, "citation": citation,
        "architecture": spec.to_manifest(),
        "preprocessing": {"spacing_mm": [float(s) for s in spacing_mm],
                          "intensity_window_hu": [float(w) for w in window_hu],
                          "crop_foreground": True, "foreground_threshold_hu": -500.0,
                          "foreground_margin_mm": 10.0},
        "inference": {"window_size": [int(w) for w in window_size], "overlap": overlap,
                      "blend": "gaussian", "sigma_scale": 0.125, "window_batch_size": window_batch_size},
    }
    if task == "segmentation":
        fields["labels"] = (labels or LabelTable()).to_dict()["labels"]
    else:
        fields["classes"] = list(classes or [])
    if reproduce:
        fields["reproduce"] = reproduce
    return fields


def create_random_bundle(folder: str | os.PathLike, fields: dict, seed: int = 0,
                         separate_backbone: bool = False) -> Path:
    """A bundle with freshly initialised weights (deterministic for a seed)."""
    outputs = len(fields["labels"]) + 1 if fields["task"] == "segmentation" else len(fields["classes"])
    spec = ArchitectureSpec.from_manifest(fields["task"], fields["architecture"], outputs)
    torch.manual_seed(seed)
    network = build_network(spec)
    return save_bundle(folder, fields, network, separate_backbone=separate_backbone)
