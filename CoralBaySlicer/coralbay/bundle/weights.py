"""Loading weights safely: safetensors with checksums, eva/VoCo state dicts, Hugging Face Hub.

Nothing is ever unpickled except through `torch.load(weights_only=True)`, which refuses any
object other than tensors and plain containers; remote code from a hub runs only when the user
passes the explicit opt-in flag.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path
from typing import Mapping

import torch

from coralbay.errors import BundleError, import_optional
from coralbay.model.build import is_derived_buffer

# Prefixes that training frameworks put in front of the encoder's own parameter names.
KNOWN_PREFIXES = ("module.", "_orig_mod.", "model.", "teacher.", "student.", "backbone.", "encoder.",
                  "net.", "network.", "swin_unetr.", "vit.")
# Containers under which checkpoints keep the state dict (first match wins; teacher before student).
STATE_DICT_KEYS = ("state_dict", "teacher", "model", "network_weights", "net", "student")
HUB_ID = re.compile(r"^(?:hf:|hub:)?([A-Za-z0-9][\w.-]*/[\w.-]+)(?:@([\w./-]+))?$")


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: Path, expected: str) -> None:
    if not path.is_file():
        raise BundleError(f"The weight file {path.name} is missing from the bundle.")
    actual = sha256_of(path)
    if actual != expected:
        raise BundleError(f"The weight file {path.name} does not match its checksum "
                          f"(expected {expected[:12]}..., found {actual[:12]}...); it is corrupt or was altered.")


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad headers
        raise BundleError(f"The weight file {path.name} is not a valid safetensors file ({exc}).") from None


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from `.safetensors`, or from a `.pt`/`.pth`/`.ckpt` without unpickling objects."""
    if not path.is_file():
        raise BundleError(f"The weight file {path} does not exist.")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message advises turning weights_only off; we never advise switching a safety off.
        raise BundleError(f"The checkpoint {path.name} cannot be loaded safely as plain tensors: it holds "
                          "pickled Python objects besides tensors, which could run code when loaded. If you "
                          "trust its source, convert it once to safetensors (save its state dict with "
                          "safetensors.torch.save_file) and give the .safetensors file instead.") from None
    except Exception as exc:  # noqa: BLE001 - RuntimeError, EOFError... on a damaged file
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        if "weights_only" in reason:
            reason = type(exc).__name__
        raise BundleError(f"The checkpoint {path.name} cannot be loaded safely as plain tensors "
                          f"(it is damaged or not a PyTorch checkpoint: {reason}).") from None
    return flatten_state_dict(obj, path.name)


def flatten_state_dict(obj: object, source: str) -> dict[str, torch.Tensor]:
    """Unwrap the containers that training frameworks put around the state dict."""
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in STATE_DICT_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise BundleError(f"The checkpoint {source} does not hold a state dict.")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise BundleError(f"The checkpoint {source} holds no tensors.")
    return tensors


def strip_prefixes(state: Mapping[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Rename keys to the encoder's names by removing known framework prefixes.

    A key is renamed only when the stripped name is one the encoder expects, so decoder or
    projection-head tensors in the same checkpoint stay distinct and are reported as unexpected.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key
        while name not in expected:
            prefix = next((p for p in KNOWN_PREFIXES if name.startswith(p)), None)
            if prefix is None:
                break
            name = name[len(prefix):]
        out[name if name in expected else key] = value
    return out


def apply_state_dict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str,
                     allow_missing: bool = False) -> list[str]:
    """Load `state` into `module` strictly by name and shape; return unexpected key names.

    Missing keys (unless allowed) and shape mismatches are errors that name the tensor.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state and not is_derived_buffer(k)]
    unexpected = [k for k in state if k not in own]
    if missing and not allow_missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise BundleError(f"The weights in {source} lack {len(missing)} tensor(s) the architecture needs: {shown}.")
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise BundleError(f"The tensor {key} in {source} has shape {tuple(value.shape)}, but the "
                              f"declared architecture needs {tuple(own[key].shape)}.")
    matched = {k: v for k, v in state.items() if k in own}
    module.load_state_dict(matched, strict=False, assign=_on_meta(module))
    return unexpected


def _on_meta(module: torch.nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """(repo_id, revision) for a hub reference like `org/name` or `hf:org/name@rev`, else None."""
    match = HUB_ID.match(text.strip())
    return (match.group(1), match.group(2)) if match else None


def download_from_hub(repo_id: str, revision: str | None, filename: str = "model.safetensors",
                      sha256: str | None = None) -> Path:
    """Fetch one weight file from the Hugging Face Hub into its cache (offline: from the cache)."""
    hf_hub_download = import_optional("huggingface_hub", "Loading weights from the Hugging Face Hub").hf_hub_download
    try:
        path = Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))
    except Exception as exc:  # noqa: BLE001 - network, auth, not-found, offline cache miss
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"Could not get {filename} of {repo_id} from the Hugging Face Hub ({reason}).") from None
    if sha256:
        verify_checksum(path, sha256)
    return path


def load_remote_code_model(repo_id: str, revision: str | None) -> dict[str, torch.Tensor]:
    """Opt-in only: run the hub repository's own code via transformers and take its state dict."""
    AutoModel = import_optional("transformers", "--trust-remote-code").AutoModel
    try:
        model = AutoModel.from_pretrained(repo_id, revision=revision, trust_remote_code=True)
    except Exception as exc:  # noqa: BLE001
        raise BundleError(f"Could not load {repo_id} with its remote code ({exc}).") from None
    return dict(model.state_dict())
