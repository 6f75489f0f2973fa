"""A linear probe on pooled encoder features: the classification head of a bundle.

Each example becomes one feature vector through `inference.classify.scan_embedding`, the same
function `coralbay classify` uses, so the head is fitted on exactly the vectors it will see.
The probe is fitted on standardised features (one scale for every feature makes the fit well
conditioned and the weight decay fair), and the standardisation is then folded into the
`nn.Linear` weights, so the bundle needs no extra preprocessing step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from coralbay.bundle.manifest import Manifest
from coralbay.errors import InputError
from coralbay.inference.classify import scan_embedding
from coralbay.training.data import ClassificationItem
from coralbay.training.metrics import auroc

Progress = Callable[[float, str], None]


@dataclass
class Embedded:
    names: list[str]
    labels: list[str]
    features: np.ndarray  # (N, D) float32


def embed_items(items: Sequence[ClassificationItem], manifest: Manifest, embed: Callable, device: torch.device,
                progress: Progress | None = None) -> Embedded:
    """Pooled feature vectors of each example (images are loaded one at a time)."""
    names, labels, vectors = [], [], []
    for i, item in enumerate(items):
        for example in item.examples():
            vector, _ = scan_embedding(example.image, manifest, embed, device, point_lps=example.point_lps)
            names.append(example.name)
            labels.append(example.label)
            vectors.append(vector[0].numpy())
        if progress:
            progress((i + 1) / len(items), item.name)
    if not vectors:
        raise InputError("There are no training examples.")
    return Embedded(names, labels, np.stack(vectors).astype(np.float32))


def fit_linear_probe(features: np.ndarray, targets: np.ndarray, num_classes: int, weight_decay: float = 1e-3,
                     iterations: int = 200) -> nn.Linear:
    """Class-balanced, L2-regularised multinomial logistic regression (full-batch L-BFGS,
    deterministic); returns a Linear layer that takes raw (unstandardised) features."""
    x = torch.from_numpy(features).double()
    y = torch.from_numpy(targets).long()
    counts = torch.bincount(y, minlength=num_classes).double()
    if int((counts > 0).sum()) < 2:
        raise InputError("The training examples hold only one class; a classifier needs two or more.")
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    z = (x - mean) / std
    class_weight = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp_min(1)), torch.zeros_like(counts))
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(z @ weight.T + bias, y, weight=class_weight)
        loss = loss + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    head = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        folded = weight.detach() / std
        head.weight.copy_(folded.float())
        head.bias.copy_((bias.detach() - folded @ mean).float())
    return head


def evaluate_probe(head: nn.Linear, data: Embedded, classes: Sequence[str]) -> dict:
    """Accuracy and AUROC (binary: of the second class; more classes: mean one-vs-rest)."""
    with torch.no_grad():
        probs = torch.softmax(head(torch.from_numpy(data.features)), dim=1).numpy()
    truth = np.array([classes.index(label) for label in data.labels])
    aucs = [auroc(probs[:, c], truth == c) for c in range(len(classes))]
    if len(classes) == 2:
        area = aucs[1]
    else:
        present = [a for a in aucs if a is not None]
        area = float(np.mean(present)) if present else None
    return {"cases": len(truth), "accuracy": round(float(np.mean(probs.argmax(axis=1) == truth)), 4),
            "auroc": round(area, 4) if area is not None else None,
            "class_counts": {c: int(np.sum(truth == i)) for i, c in enumerate(classes)}}
