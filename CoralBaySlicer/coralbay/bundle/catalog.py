"""The model catalog: bundles shipped under Resources/Models and bundles the user added.

Standard library only (the Slicer module lists models before PyTorch is installed). User
additions are remembered in `$CORALBAY_HOME/models.json` (default `~/.coralbay`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from coralbay.atomic import write_text_atomic
from coralbay.bundle.manifest import MANIFEST_NAME, Manifest, read_manifest
from coralbay.errors import BundleError, CoralBayError


def resources_dir() -> Path:
    """The Resources folder holding Models/: inside the package in a wheel (setup.py copies it
    there), beside the package in Slicer, at the repository root in a checkout."""
    package = Path(__file__).resolve().parent.parent
    candidates = (package / "Resources", package.parent / "Resources", package.parent.parent / "Resources")
    return next((c for c in candidates if (c / "Models").is_dir()), candidates[-1])


def builtin_models_dir() -> Path:
    return Path(os.environ.get("CORALBAY_BUILTIN_MODELS", resources_dir() / "Models"))


def user_home() -> Path:
    return Path(os.environ.get("CORALBAY_HOME", Path.home() / ".coralbay"))


def _registry_path() -> Path:
    return user_home() / "models.json"


def _user_paths() -> list[Path]:
    path = _registry_path()
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        return [Path(p) for p in entries if isinstance(p, str)]
    except (OSError, json.JSONDecodeError):
        return []


def list_models(include_broken: bool = False) -> list[Manifest]:
    """Every bundle the catalog knows, built-in first; broken user entries are skipped."""
    found: list[Manifest] = []
    builtin = builtin_models_dir()
    folders = sorted(p.parent for p in builtin.glob(f"*/{MANIFEST_NAME}")) if builtin.is_dir() else []
    for folder in folders + _user_paths():
        try:
            manifest = read_manifest(folder)
        except CoralBayError:
            if include_broken:
                raise
            continue
        if all(m.name != manifest.name for m in found):
            found.append(manifest)
    return found


def resolve_model(model: str) -> Path:
    """A bundle folder from a catalog name or a folder path."""
    path = Path(model).expanduser()
    if path.is_dir() or os.sep in model or model.startswith("."):
        return path
    for manifest in list_models():
        if manifest.name == model:
            return manifest.folder
    known = ", ".join(m.name for m in list_models()) or "none"
    raise BundleError(f"No model named {model!r} in the catalog (known: {known}); give a bundle folder or add one with 'coralbay models --add'.")


def add_model(folder: str | os.PathLike) -> Manifest:
    """Validate a bundle folder and remember it in the user's catalog."""
    manifest = read_manifest(folder)
    for existing in list_models():
        if existing.name == manifest.name and existing.folder != manifest.folder:
            raise BundleError(f"A model named {manifest.name!r} is already in the catalog ({existing.folder}).")
    paths = [p for p in _user_paths() if p.resolve() != manifest.folder]
    paths.append(manifest.folder)
    user_home().mkdir(parents=True, exist_ok=True)
    write_text_atomic(_registry_path(), json.dumps([str(p) for p in paths], indent=2))
    return manifest


def remove_model(name: str) -> None:
    """Forget a user-added bundle (its files stay where they are)."""
    paths = _user_paths()
    keep = []
    for p in paths:
        try:
            if read_manifest(p).name == name:
                continue
        except CoralBayError:
            pass
        keep.append(p)
    if len(keep) == len(paths):
        raise BundleError(f"No user-added model named {name!r}.")
    write_text_atomic(_registry_path(), json.dumps([str(p) for p in keep], indent=2))
