"""Model bundles: a folder with `manifest.json` and `.safetensors` weights.

`manifest` and `schema_check` use only the standard library; `loader` and `weights` need torch
and are imported lazily by callers that run models.
"""

from coralbay.bundle.manifest import MANIFEST_NAME, Manifest, read_manifest, validate_manifest

__all__ = ["MANIFEST_NAME", "Manifest", "read_manifest", "validate_manifest"]
