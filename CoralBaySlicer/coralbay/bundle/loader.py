"""Build a ready-to-run network from a model bundle, and write bundles.

Loading order: build the declared architecture without allocating memory, attach the bundle's
backbone file (if it has one), then the model file, then a user-supplied `--backbone` that
replaces the encoder weights. Every file is checked against its sha256 before it is read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from coralbay.atomic import atomic_dir
from coralbay.bundle.catalog import resolve_model
from coralbay.bundle.manifest import MANIFEST_NAME, Manifest, read_manifest, validate_manifest
from coralbay.bundle.weights import (apply_state_dict, download_from_hub, load_checkpoint,
                                     load_remote_code_model, load_safetensors, parse_hub_id, sha256_of,
                                     strip_prefixes, verify_checksum)
from coralbay.errors import BundleError
from coralbay.model.build import ArchitectureSpec, build_network, is_derived_buffer, parameters_on_meta


@dataclass
class LoadedBundle:
    manifest: Manifest
    network: nn.Module
    notes: list[str] = field(default_factory=list)  # what the loader did (unexpected keys, backbone source)

    @property
    def spec(self) -> ArchitectureSpec:
        return architecture_of(self.manifest)


def architecture_of(manifest: Manifest) -> ArchitectureSpec:
    return ArchitectureSpec.from_manifest(manifest.task, manifest.data["architecture"], manifest.num_outputs)


def load_bundle(model: str | os.PathLike, backbone: str | None = None, trust_remote_code: bool = False,
                log: Callable[[str], None] | None = None) -> LoadedBundle:
    """Load a bundle by catalog name or folder, optionally replacing its encoder weights.

    `backbone` is a local `.safetensors`/`.pt`/`.ckpt` file or a hub id (`org/name[@revision]`).
    """
    manifest = read_manifest(resolve_model(str(model)))
    spec = architecture_of(manifest)
    with parameters_on_meta():
        network = build_network(spec)
    notes: list[str] = []
    files = {w["role"]: w for w in manifest.data["weights"]}
    if "backbone" in files:
        path = manifest.weight_path(files["backbone"])
        verify_checksum(path, files["backbone"]["sha256"])
        notes += _load_encoder(network, load_safetensors(path), path.name)
    elif "backbone_source" in manifest.data and not backbone:
        notes += _load_encoder(network, *_pinned_hub_backbone(manifest.data["backbone_source"]))
    path = manifest.weight_path(files["model"])
    verify_checksum(path, files["model"]["sha256"])
    state = load_safetensors(path)
    encoder_elsewhere = "backbone" in files or "backbone_source" in manifest.data
    unexpected = apply_state_dict(network, state, path.name, allow_missing=encoder_elsewhere)
    if unexpected:
        raise BundleError(f"The weight file {path.name} has tensors the architecture does not have: "
                          f"{', '.join(unexpected[:5])}.")
    if backbone:
        notes += _load_encoder(network, *_backbone_state(backbone, trust_remote_code))
    if any(p.is_meta for p in network.parameters()):
        missing = [n for n, p in network.named_parameters() if p.is_meta]
        raise BundleError(f"The bundle {manifest.name} leaves {len(missing)} tensor(s) without weights, "
                          f"e.g. {missing[0]}.")
    network.eval()
    for note in notes:
        if log:
            log(note)
    return LoadedBundle(manifest, network, notes)


def _pinned_hub_backbone(source: dict[str, str]) -> tuple[dict[str, torch.Tensor], str]:
    """The encoder a manifest names on the hub: always at its pinned revision, checksum verified."""
    filename = source.get("file", "model.safetensors")
    path = download_from_hub(source["hub_id"], source["revision"], filename, source.get("sha256"))
    return load_safetensors(path), f"{source['hub_id']}@{source['revision']}"


def _backbone_state(backbone: str, trust_remote_code: bool) -> tuple[dict[str, torch.Tensor], str]:
    path = Path(backbone).expanduser()
    if path.exists():
        return load_checkpoint(path), path.name
    hub = parse_hub_id(backbone)
    if hub is None:
        raise BundleError(f"The backbone {backbone} is neither an existing file nor a hub id like org/name@revision.")
    repo_id, revision = hub
    if revision is None:
        raise BundleError(f"Give the hub revision to pin, e.g. {repo_id}@<commit or tag> "
                          f"({repo_id}@main takes whatever is newest).")
    if trust_remote_code:
        return load_remote_code_model(repo_id, revision), f"{repo_id} (remote code)"
    return load_safetensors(download_from_hub(repo_id, revision)), f"{repo_id}@{revision or 'main'}"


def backbone_state(backbone: str, trust_remote_code: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """Encoder weights from a local file or a hub id, and a name for messages (public for training)."""
    return _backbone_state(backbone, trust_remote_code)


def load_encoder_state(network: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load eva/VoCo-named encoder weights into `network.encoder`; notes on what was loaded."""
    return _load_encoder(network, state, source)


def feature_size_of(state: dict[str, torch.Tensor]) -> int | None:
    """The encoder width (feature_size) of a state dict: the patch embedding's output channels."""
    key = next((k for k in state if k.endswith("patch_embed.proj.weight")), None)
    return int(state[key].shape[0]) if key else None


def _load_encoder(network: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load encoder weights (eva/VoCo/DINO naming) into `network.encoder`; report leftovers."""
    encoder = network.encoder
    expected = set(encoder.state_dict().keys())
    renamed = strip_prefixes(state, expected)
    encoder_state = {k: v for k, v in renamed.items() if k in expected}
    unexpected = sorted(k for k in renamed if k not in expected)
    apply_state_dict(encoder, encoder_state, source)
    notes = [f"Loaded {len(encoder_state)} encoder tensors from {source}."]
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        notes.append(f"Ignored {len(unexpected)} tensor(s) of {source} that are not part of the encoder: {shown}.")
    return notes


def save_bundle(folder: str | os.PathLike, manifest_fields: dict[str, Any], network: nn.Module,
                separate_backbone: bool = False, extra_files: dict[str, str] | None = None) -> Path:
    """Write a complete bundle atomically: weights as safetensors with sha256, then the manifest.

    With `separate_backbone`, encoder tensors go to `backbone.safetensors` (shareable between
    task bundles) and the rest to `model.safetensors`. `extra_files` (name -> text, e.g. a
    README.md) are written inside the same atomic folder.
    """
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in network.state_dict().items()
             if not is_derived_buffer(k)}
    parts = {"model": state}
    if separate_backbone:
        parts = {"backbone": {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")},
                 "model": {k: v for k, v in state.items() if not k.startswith("encoder.")}}
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        weights = []
        for role, tensors in parts.items():
            name = f"{role}.safetensors"
            save_file(tensors, str(tmp / name))
            weights.append({"file": name, "sha256": sha256_of(tmp / name), "role": role})
        data = {"schema_version": 1, **manifest_fields, "weights": weights}
        validate_manifest(data)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        (tmp / MANIFEST_NAME).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return folder
