"""The online head: a small classifier trained on the prompted voxels' features, per interaction.

Inputs per model-grid voxel: the cached encoder components, the intensity and its local mean.
Training voxels (all on the model grid):
- positive: around positive clicks, positive scribbles, the segment to refine;
- negative: around negative clicks, negative scribbles, outside the box, every finished structure
  (mutual exclusion: finished work is evidence of what this structure is not);
- weak negative: random voxels of the scan at a low weight. Why: with one click there is no
  negative evidence at all; most of any scan is not the structure, so random voxels are right
  far more often than wrong, and a low weight lets the clicks override them;
- weak positive: the previous answer away from the negative clicks, at a low weight. Why: a
  correction should move the boundary where the user clicked, not forget what was right.
The head is a one-hidden-layer MLP (a logistic regression when hidden=0) fitted by full-batch
L-BFGS: deterministic, no learning rate to tune, and ~0.1-0.3 s for 20k voxels on one core.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from coralbay.interactive import prompts as P
from coralbay.interactive.features import FeatureVolume
from coralbay.interactive.scan_grids import ScanGrids

BACKGROUND_SAMPLES = 6000
BACKGROUND_WEIGHT = 0.5     # total weight of the weak negatives, relative to the positives
PREVIOUS_SAMPLES = 3000
PREVIOUS_WEIGHT = 0.0        # total weight of the weak positives, relative to the click positives (0: off, see docs)
FINISHED_SAMPLES = 3000
INTENSITY_BANDS = 16
DISTANCE_SCALES_MM = (15.0, 50.0)
CLICK_RADIUS = 1             # model voxels around a click taken as its label


@dataclass
class Evidence:
    """Labelled voxels on the model grid: flat indices with labels (1 structure, 0 not) and weights."""

    index: list[np.ndarray] = field(default_factory=list)
    label: list[np.ndarray] = field(default_factory=list)
    weight: list[np.ndarray] = field(default_factory=list)

    def add(self, index: np.ndarray, label: int, total_weight: float) -> None:
        index = np.unique(np.asarray(index, dtype=np.int64))
        if index.size == 0 or total_weight <= 0:
            return
        self.index.append(index)
        self.label.append(np.full(index.size, label, np.float32))
        self.weight.append(np.full(index.size, total_weight / index.size, np.float32))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.concatenate(self.index), np.concatenate(self.label), np.concatenate(self.weight)

    def within(self, keep: np.ndarray) -> "Evidence":
        """Only the voxels where `keep` (bool, the grid) holds, each with its weight: the voxels
        whose features exist while a scan's windows are still being computed."""
        if keep.all():
            return self
        flat = keep.ravel()
        out = Evidence()
        for index, label, weight in zip(self.index, self.label, self.weight):
            inside = flat[index]
            if inside.any():
                out.index.append(index[inside])
                out.label.append(label[inside])
                out.weight.append(weight[inside])
        return out

    def has(self, label: int) -> bool:
        return any(lab.size and lab[0] == label for lab in self.label)


def ball_indices(shape: tuple[int, int, int], voxels: np.ndarray, radius: int = CLICK_RADIUS) -> np.ndarray:
    """Flat indices of the cube of `radius` around each voxel (N, 3), clipped to the grid."""
    if len(voxels) == 0:
        return np.zeros(0, np.int64)
    offsets = np.stack(np.meshgrid(*[np.arange(-radius, radius + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pts = (np.asarray(voxels)[:, None, :] + offsets[None]).reshape(-1, 3)
    pts = np.clip(pts, 0, np.asarray(shape) - 1)
    return np.ravel_multi_index(pts.T, shape)


class FeatureTable:
    """The per-voxel input of the head for one scan: (N voxels, D) float32, standardised."""

    def __init__(self, volume: FeatureVolume, covered: np.ndarray | None = None) -> None:
        """`covered`: the voxels with features while they are computed lazily (the standardisation
        comes from them alone; None: every voxel)."""
        k = volume.features.shape[0]
        local_mean = ndimage.uniform_filter(volume.intensity, size=3)
        columns = [volume.features.reshape(k, -1).astype(np.float32),
                   volume.intensity.reshape(1, -1), local_mean.reshape(1, -1)]
        # Intensity bands as Gaussian bumps: an organ is an intensity *band* (kidney 150-190 HU),
        # which a linear head cannot cut out of one intensity column.
        centres = np.linspace(0.0, 1.0, INTENSITY_BANDS)
        width = 1.0 / (INTENSITY_BANDS - 1)
        columns += [np.exp(-0.5 * ((local_mean.reshape(1, -1) - c) / width) ** 2) for c in centres]
        table = np.concatenate(columns, axis=0).T
        sample = table if covered is None else table[covered.ravel()]
        self.mean = sample.mean(axis=0)
        self.std = sample.std(axis=0) + 1e-6
        self.table = torch.from_numpy(np.ascontiguousarray((table - self.mean) / self.std, dtype=np.float32))
        self.shape = volume.shape

    @property
    def dims(self) -> int:
        return int(self.table.shape[1])

    def with_distances(self, positive: np.ndarray, negative: np.ndarray, spacing: tuple[float, ...]) -> torch.Tensor:
        """The table plus closeness to the nearest positive and negative prompt (model voxels (N, 3)).

        Why: features alone generalise over the whole scan (a click on one kidney lights up both,
        and every similar organ); closeness lets the head learn how far the clicked structure
        reaches, so one click does not flood and one negative click does not erase.
        """
        columns = []
        for voxels in (positive, negative):
            if len(voxels) == 0:
                columns += [np.zeros(int(np.prod(self.shape)), np.float32)] * len(DISTANCE_SCALES_MM)
                continue
            seeds = np.ones(self.shape, bool)
            seeds[tuple(np.asarray(voxels).T)] = False
            distance = ndimage.distance_transform_edt(seeds, sampling=spacing).ravel().astype(np.float32)
            columns += [np.exp(-distance / scale) for scale in DISTANCE_SCALES_MM]
        extra = torch.from_numpy(np.stack(columns, axis=1)) * 2.0 - 1.0
        return torch.cat([self.table, extra], dim=1)


class OnlineHead(torch.nn.Module):
    """Logistic regression or a small MLP on the feature table."""

    def __init__(self, dims: int, hidden: int = 16, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        if hidden:
            self.net = torch.nn.Sequential(torch.nn.Linear(dims, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
        else:
            self.net = torch.nn.Sequential(torch.nn.Linear(dims, 1))
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 0]


EXAMPLE_WEIGHT = 2.0  # total weight of the rows learned on earlier scans, per class


def fit_head(table: torch.Tensor, evidence: Evidence, hidden: int = 16, l2: float = 1e-3,
             iterations: int = 25, extra: tuple[np.ndarray, np.ndarray] | None = None) -> OnlineHead:
    """Weighted cross-entropy with L2, minimised by L-BFGS on all labelled voxels at once.

    `extra` = (positive rows, negative rows) of feature-table rows from earlier scans.
    """
    if evidence.index:
        index, label, weight = evidence.arrays()
        x = table[torch.from_numpy(index)]
        y, w = torch.from_numpy(label), torch.from_numpy(weight)
    else:
        x, y, w = torch.zeros((0, table.shape[1])), torch.zeros(0), torch.zeros(0)
    if extra is not None:
        pos, neg = (torch.from_numpy(np.asarray(r, np.float32)) for r in extra)
        x = torch.cat([x, pos, neg])
        y = torch.cat([y, torch.ones(len(pos)), torch.zeros(len(neg))])
        w = torch.cat([w, torch.full((len(pos),), EXAMPLE_WEIGHT / max(1, len(pos))),
                       torch.full((len(neg),), EXAMPLE_WEIGHT / max(1, len(neg)))])
    w = w / w.sum()
    head = OnlineHead(int(table.shape[1]), hidden)
    optimiser = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=iterations, history_size=10,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(head(x), y, reduction="none") * w).sum()
        loss = loss + l2 * sum((p ** 2).sum() for n, p in head.named_parameters() if "weight" in n)
        loss.backward()
        return loss

    optimiser.step(closure)
    return head


def predict(table: torch.Tensor, head: OnlineHead, shape: tuple[int, int, int], chunk: int = 262_144) -> np.ndarray:
    """Logits of every model-grid voxel, (X, Y, Z) float32."""
    out = np.empty(table.shape[0], np.float32)
    with torch.inference_mode():
        for start in range(0, out.size, chunk):
            out[start:start + chunk] = head(table[start:start + chunk]).numpy()
    return out.reshape(shape)


def far_from_prompts(rows: np.ndarray) -> np.ndarray:
    """Rows of the plain table extended with the closeness columns of a voxel far from every prompt."""
    far = np.full((len(rows), 2 * len(DISTANCE_SCALES_MM)), -1.0, np.float32)
    return np.concatenate([rows, far], axis=1)


def random_background(shape: tuple[int, int, int], rng: np.random.Generator, exclude: np.ndarray,
                      count: int = BACKGROUND_SAMPLES) -> np.ndarray:
    """Random flat indices of the grid not in `exclude` (the weak negatives)."""
    total = int(np.prod(shape))
    picks = rng.choice(total, size=min(count * 2, total), replace=False)  # a 3-slice scan has few voxels
    return picks[~np.isin(picks, exclude)][:count]


def evidence_from_prompts(prompts: list[P.Prompt], grids: ScanGrids, accepted_model: np.ndarray, background: np.ndarray,
                          rng: np.random.Generator) -> tuple[Evidence, list[np.ndarray], list[np.ndarray],
                                                             list[tuple[int, int, int]]]:
    """The head's labelled model voxels from a structure's prompts (its points): a ball per click,
    a sample of the accepted structures as negatives and the scan's background draw; with the
    positive and negative model voxels and the positive input voxels (the anchors a proposal's
    components must hold)."""
    ev = Evidence()
    positive_model: list[np.ndarray] = []
    negative_model: list[np.ndarray] = []
    anchors: list[tuple[int, int, int]] = []
    for p in prompts:
        if isinstance(p, P.Point):
            v = grids.input_voxel(p.lps)
            m = grids.model_voxels(np.asarray([v]))
            ev.add(ball_indices(grids.shape, m), int(p.positive), 1.0)
            (positive_model if p.positive else negative_model).append(m)
            if p.positive:
                anchors.append(v)
    if accepted_model.any():
        finished = np.flatnonzero(accepted_model.ravel())
        ev.add(rng.choice(finished, size=min(finished.size, FINISHED_SAMPLES), replace=False), 0, 1.0)
    exclude = np.concatenate(ev.index) if ev.index else np.zeros(0, np.int64)
    total_positive = sum(float(w.sum()) for w, lab in zip(ev.weight, ev.label) if lab[0] == 1)
    kept = background[~np.isin(background, exclude)][:BACKGROUND_SAMPLES]
    ev.add(kept, 0, BACKGROUND_WEIGHT * max(total_positive, 1.0))
    return ev, positive_model, negative_model, anchors
