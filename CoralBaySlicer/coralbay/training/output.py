"""Writing a trained head as a bundle: manifest fields, a README.md inside the bundle, one atomic folder.

Why the README is generated from the manifest: what a bundle claims (intended use, metrics, the
command that reproduces it) then cannot drift from what its manifest says.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from torch import nn

from coralbay.bundle.loader import save_bundle
from coralbay.bundle.manifest import MANIFEST_NAME
from coralbay.errors import UsageError


def bundle_name(text: str) -> str:
    """A manifest name (lower case, digits, . _ -) from a folder name or user text."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.strip().lower()).strip("-._")[:64]
    return name or "trained-model"


def check_output_folder(folder: str | os.PathLike) -> Path:
    """Refuse an output whose parent is missing, or an existing folder that is not a bundle
    (it would be replaced as a whole)."""
    folder = Path(folder)
    if not folder.parent.is_dir():
        raise UsageError(f"The output folder {folder.parent} does not exist.")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"The output {folder} is a file; give a folder name for the bundle.")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MANIFEST_NAME).is_file():
        raise UsageError(f"The output folder {folder} exists and is not a model bundle; choose a new folder name.")
    return folder


def bundle_readme(fields: dict) -> str:
    """README.md text for a bundle, from its manifest fields."""
    pre, infer, arch = fields["preprocessing"], fields["inference"], fields["architecture"]
    lines = [f"# {fields.get('title') or fields['name']}", "", fields.get("description", "").strip(), ""]
    if fields.get("intended_use"):
        lines += ["## Intended use", "", fields["intended_use"], ""]
    lines += ["## What it does", ""]
    if fields["task"] == "segmentation":
        names = ", ".join(f"{lab['value']} {lab['name']}" for lab in fields["labels"])
        lines += [f"Segmentation into: {names}.", ""]
    else:
        lines += [f"Classification into: {', '.join(fields['classes'])}.", ""]
    lines += [f"CoralBay encoder of feature size {arch['feature_size']}; input resampled to "
              f"{' x '.join(f'{s:g}' for s in pre['spacing_mm'])} mm (RAS), HU window "
              f"{pre['intensity_window_hu'][0]:g}..{pre['intensity_window_hu'][1]:g}, sliding windows of "
              f"{' x '.join(map(str, infer['window_size']))} voxels with overlap {infer['overlap']:g}.", ""]
    use = (f"coralbay segment CT.nii.gz --model {fields['name']} --output labels.nii.gz"
           if fields["task"] == "segmentation" else
           f"coralbay classify CT.nii.gz --model {fields['name']} --output report.json")
    if fields["task"] == "classification" and infer.get("point_region_mm"):
        region = " x ".join(f"{r:g}" for r in infer["point_region_mm"])
        use += (f"\ncoralbay classify CT.nii.gz --model {fields['name']} --point X,Y,Z --output report.json"
                f"  # the {region} mm region around a point (LPS mm)")
    lines += ["## Use", "", "```", use, "```", ""]
    if fields.get("metrics"):
        lines += ["## Metrics", "", "```json", json.dumps(fields["metrics"], indent=2), "```", ""]
    if fields.get("reproduce"):
        lines += ["## Reproduce", "", "From the repository root:", "", "```", fields["reproduce"], "```", ""]
    lines += ["## Files", "", f"`{MANIFEST_NAME}` (labels, preprocessing, checksums) and the weights "
              "in `.safetensors` format.", ""]
    return "\n".join(lines)


def write_trained_bundle(folder: str | os.PathLike, fields: dict, network: nn.Module) -> Path:
    """The bundle folder with weights, manifest and README.md, written atomically."""
    return save_bundle(folder, fields, network, extra_files={"README.md": bundle_readme(fields)})
