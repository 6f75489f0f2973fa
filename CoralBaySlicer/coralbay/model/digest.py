"""The identity of an encoder's weights: one sha256 over its tensors.

Why one home: the feature cache keys on it, accepted examples record it, and `coralbay teach`
refuses examples accepted on another encoder; all three must compute the same digest.
"""

from __future__ import annotations

import hashlib

import torch


def encoder_digest(network: torch.nn.Module) -> str:
    """sha256 of the encoder's tensors: the same weights give the same key wherever they came from."""
    h = hashlib.sha256()
    for name, tensor in sorted(network.encoder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()
