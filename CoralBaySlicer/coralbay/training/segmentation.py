"""The segmentation training loop: AdamW, warm-up + cosine schedule, validation Dice, checkpoints.

Why each step draws its random numbers from `default_rng([seed, step])`: the crops and
augmentations of step k are then the same whether a run went straight through or was resumed
from a checkpoint, so a resumed run repeats an uninterrupted one, and two runs with the same
seed, data and settings give the same weights (on the same machine and thread count).

Three ways to treat the encoder: "finetune" trains everything; "convs" freezes the Swin
transformer and trains the encoder's convolutional skip blocks with the decoder; "frozen" trains
the decoder alone (the usual way to put a head on real CoralBay weights). When part of the
encoder is frozen, its outputs can be computed once for a fixed pool of augmented crops and reused
every step (`feature_cache` crops per case), as eva precomputes embeddings for frozen backbones;
on a CPU this makes training several times faster, because the transformer's window attention
is most of the cost of a step.

Validation runs the engine's own sliding-window inference (`sliding_window_logits`) on the
validation cases' model grids, so the Dice it reports is the Dice of the way the bundle will run.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from coralbay.atomic import atomic_file
from coralbay.errors import InputError
from coralbay.grid.windows import WindowSettings
from coralbay.inference.fast_swin import enable_fast_swin
from coralbay.inference.sliding_window import sliding_window_logits
from coralbay.io.labels import LabelTable
from coralbay.model.digest import encoder_digest
from coralbay.review.metrics import dice_per_structure, mean_dice
from coralbay.training.augment import (AugmentSettings, CropSampler, augment, mirror_lookup, pool_crop_structure,
                                       sample_batch)
from coralbay.training.data import Case
from coralbay.training.loss import inverse_sqrt_weights, segmentation_loss

CHECKPOINT_FORMAT = "coralbay-train-seg-checkpoint-1"
CHECKPOINT_NAME = "last.pt"

Progress = Callable[[float, str], None]
Log = Callable[[str], None]


@dataclass(frozen=True)
class SegmentationSettings:
    augment: AugmentSettings
    steps: int = 1000
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_steps: int = 20
    min_lr_ratio: float = 0.01     # the cosine ends at lr * min_lr_ratio
    max_grad_norm: float = 1.0
    encoder_mode: str = "finetune"  # "finetune", "convs" (Swin transformer frozen) or "frozen"
    feature_cache: int = 0          # crops per case whose frozen-part outputs are computed once
    class_weights: str = "none"     # "none" or "inverse-sqrt" (of each class's voxel share)
    val_every: int = 100
    val_overlap: float = 0.5
    checkpoint_every: int = 50
    seed: int = 0
    # The pool's crops centred on each structure of a case in turn (`augment.pool_crop_structure`)
    # instead of at random: a small structure gets as many crops as the liver.
    balanced_pool: bool = False
    # A stopping rule from the training data itself (teach): `holdout_crops` more crops per case,
    # never trained on, scored every `check_every` steps; training stops once their mean Dice has
    # not improved for `patience` checks (0: never), and the best-scoring weights are kept.
    holdout_crops: int = 0
    check_every: int = 10
    patience: int = 0
    time_budget_s: float | None = None   # stop when spent; the learning-rate schedule runs on time then
    # Modules kept as they start besides the encoder (e.g. "decoder.decoder1": on a CPU the weight
    # gradients of its full-resolution convolutions cost about three quarters of a decoder step).
    frozen_modules: tuple[str, ...] = ()
    # Start the output layer as a class-balanced linear probe of the features it reads, fitted on
    # the crop pool (linear probing before fine-tuning), instead of from random weights.
    probe_init: bool = False
    # Train the decoder in the channels-last layout when it reads cached features (several times
    # faster on a CPU; off only to measure that: benchmarks/interactive/teach_speed.py).
    channels_last: bool = True


@dataclass
class SegmentationResult:
    network: nn.Module                     # holds the chosen weights (best validation, else last)
    history: list[dict] = field(default_factory=list)
    validation: dict | None = None         # per-structure Dice of the chosen weights
    chosen_step: int = 0
    steps_done: int = 0
    seconds: float = 0.0
    stopped: str = "steps"                 # why training ended: steps, no-improvement or time budget
    holdout: dict | None = None            # per-structure Dice of the chosen weights on the held-out crops


def lr_factor(step: int, settings: SegmentationSettings, elapsed_s: float = 0.0) -> float:
    """Linear warm-up, then a cosine from 1 down to `min_lr_ratio` at the last step, or at the end
    of the time budget when that comes first (so a budgeted run still ends on a small rate)."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    span = max(1, settings.steps - settings.warmup_steps)
    progress = min(1.0, (step - settings.warmup_steps) / span)
    if settings.time_budget_s:
        progress = max(progress, min(1.0, elapsed_s / settings.time_budget_s))
    return settings.min_lr_ratio + (1 - settings.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


ENCODER_MODES = ("finetune", "convs", "frozen")


def set_trainable(network: nn.Module, mode: str, also_frozen: tuple[str, ...] = ()) -> list[nn.Parameter]:
    """Freeze the parts `mode` keeps fixed, and the modules named in `also_frozen`; the parameters left to train."""
    if mode not in ENCODER_MODES:
        raise ValueError(f"unknown encoder mode {mode!r}")
    frozen = {"finetune": None, "convs": network.encoder.swinViT, "frozen": network.encoder}[mode]
    for p in network.parameters():
        p.requires_grad_(True)
    if frozen is not None:
        for p in frozen.parameters():
            p.requires_grad_(False)
    for name in also_frozen:
        for p in network.get_submodule(name).parameters():
            p.requires_grad_(False)
    return [p for p in network.parameters() if p.requires_grad]


def frozen_outputs(network: nn.Module, inputs: torch.Tensor, mode: str) -> list[torch.Tensor] | None:
    """What the frozen part computes from `inputs` (None when nothing is frozen)."""
    if mode == "finetune":
        return None
    with torch.no_grad():
        return network.encoder.swinViT(inputs) if mode == "convs" else network.encoder(inputs)


def forward_logits(network: nn.Module, inputs: torch.Tensor, mode: str,
                   cached: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The network's logits, reusing the frozen part's outputs when they are given."""
    if mode == "finetune":
        return network(inputs)
    fixed = cached if cached is not None else frozen_outputs(network, inputs, mode)
    features = network.encoder.skip_features(inputs, fixed) if mode == "convs" else fixed
    return network.decoder(features)


@dataclass
class CropPool:
    """A fixed set of augmented crops with the frozen part's outputs, built once."""

    inputs: torch.Tensor                 # (N, 1, X, Y, Z) float
    targets: torch.Tensor                # (N, 1, X, Y, Z) uint8 class indices
    cached: list[torch.Tensor]           # per feature level, (N, C, ...)

    def channels_last(self) -> "CropPool":
        """The same pool with its feature maps in the channels-last layout the training step uses."""
        return CropPool(self.inputs, self.targets, [c.contiguous(memory_format=torch.channels_last_3d)
                                                    if c.dim() == 5 else c for c in self.cached])

    def batch(self, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        index = torch.from_numpy(rng.integers(len(self.inputs), size=size))
        return self.inputs[index], self.targets[index].long(), [c[index] for c in self.cached]

    def save(self, path: Path, key: dict) -> None:
        with atomic_file(path) as tmp:
            torch.save({"key": key, "inputs": self.inputs, "targets": self.targets, "cached": self.cached}, str(tmp))

    @classmethod
    def load(cls, path: Path, key: dict) -> "CropPool | None":
        """The pool saved at `path` if it was built for the same key (cases, settings, seed)."""
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a missing or damaged cache is rebuilt
            return None
        if not isinstance(state, dict) or state.get("key") != key:
            return None
        return cls(state["inputs"], state["targets"], list(state["cached"]))


def case_number(name: str) -> int:
    """A number of its own for each case, from its name: a case's crops (random numbers, the
    structure each crop is centred on) are then the same whichever other cases are trained with it,
    so an incremental teach finds the crops of its earlier scans in the `CropStore`."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:12], 16)


class CropStore:
    """Crops of a case with the frozen part's outputs, kept on disk between runs (teach: an
    incremental teach on scans 1..N+1 computes the encoder only for scan N+1). A file is keyed by
    everything its crops depend on: the frozen weights (`encoder` digest), the case's voxels and
    targets, the crop and augmentation settings, the seed and the random stream; a missing,
    damaged or foreign file is computed again."""

    def __init__(self, folder: Path, encoder: str, settings: dict) -> None:
        self.folder, self.encoder, self.settings = Path(folder), encoder, settings

    def key(self, sampler: CropSampler, crops: int, stream: int) -> dict:
        data = hashlib.sha256(np.ascontiguousarray(sampler.image).tobytes())
        data.update(np.ascontiguousarray(sampler.target).tobytes())
        return {"format": 1, "encoder": self.encoder, "case": sampler.name, "voxels": data.hexdigest(),
                "settings": self.settings, "crops": crops, "stream": stream}

    def path(self, key: dict) -> Path:
        text = json.dumps(key, sort_keys=True)
        return self.folder / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.pt"

    def load(self, key: dict) -> "CropPool | None":
        path = self.path(key)
        return CropPool.load(path, key) if path.is_file() else None

    def save(self, key: dict, pool: "CropPool") -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        pool.save(self.path(key), key)


def build_crop_pool(network: nn.Module, samplers: list[CropSampler], settings: SegmentationSettings,
                    mirror: np.ndarray | None, device: torch.device, progress: Progress | None = None,
                    crops: int | None = None, stream: int = 1_000_003, store: CropStore | None = None,
                    log: Log | None = None) -> CropPool:
    """`crops` (default `feature_cache`) augmented crops per case with the frozen part's outputs;
    `stream` keeps the held-out crops' random numbers apart from the training crops'. Cases whose
    crops `store` holds are read from it, the others computed and added to it."""
    count = settings.feature_cache if crops is None else crops
    parts, reused = [], 0
    for i, sampler in enumerate(samplers):
        key = store.key(sampler, count, stream) if store is not None else None
        part = store.load(key) if store is not None else None
        if part is not None:
            reused += 1
        else:
            part = _case_crops(network, sampler, settings, mirror, device, count, stream)
            if store is not None:
                store.save(key, part)
        parts.append(part)
        if progress:
            progress((i + 1) / len(samplers), f"caching frozen features of {sampler.name}")
    if store is not None and log and reused:
        log(f"Reused the frozen features of {reused} of {len(samplers)} scans' crops from {store.folder}.")
    return CropPool(torch.cat([p.inputs for p in parts]), torch.cat([p.targets for p in parts]),
                    [torch.cat(level) for level in zip(*(p.cached for p in parts))])


def _case_crops(network: nn.Module, sampler: CropSampler, settings: SegmentationSettings,
                mirror: np.ndarray | None, device: torch.device, crops: int, stream: int) -> CropPool:
    inputs, targets, cached = [], [], []
    number = case_number(sampler.name)
    for k in range(crops):
        rng = np.random.default_rng([settings.seed, stream, number, k])  # a stream of its own
        if settings.balanced_pool:
            image, target = sampler.sample(rng, 0.0, pool_crop_structure(sampler, k + number))
            image, target = augment(image, target, settings.augment, rng, mirror)
            x, y = torch.from_numpy(image)[None, None], torch.from_numpy(target)[None, None]
        else:
            x, y = sample_batch([sampler], settings.augment, rng, 1, mirror)
        outputs = frozen_outputs(network, x.to(device), settings.encoder_mode)
        inputs.append(x)
        targets.append(y.to(torch.uint8))
        cached.append([o.cpu().contiguous() for o in outputs])
    return CropPool(torch.cat(inputs), torch.cat(targets), [torch.cat(level) for level in zip(*cached)])


PROBE_VOXELS_PER_CLASS = 4000


def fit_output_layer(network: nn.Module, pool: CropPool, mode: str, num_classes: int, device: torch.device,
                     seed: int) -> None:
    """Set the 1x1x1 output layer to a class-balanced multinomial logistic regression on the features
    it reads (up to `PROBE_VOXELS_PER_CLASS` voxels of each class from the pool's crops, each class
    weighted equally): the fresh layer then starts where a few hundred steps would bring it, and
    the blocks below are fine-tuned from a head that already separates every structure it can."""
    rng = np.random.default_rng([seed, 3_000_017])
    layer = network.decoder.out.conv.conv
    seen: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].detach().cpu()))
    rows, labels = [], []
    network.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(pool.inputs), 2):
                part = slice(start, start + 2)
                seen.clear()
                forward_logits(network, pool.inputs[part].to(device), mode, [c[part].to(device) for c in pool.cached])
                features = seen[0].movedim(1, -1).reshape(-1, seen[0].shape[1])
                truth = pool.targets[part].reshape(-1).long()
                for c in range(num_classes):
                    where = torch.nonzero(truth == c).ravel().numpy()
                    take = where if len(where) <= PROBE_VOXELS_PER_CLASS // 4 else rng.choice(
                        where, PROBE_VOXELS_PER_CLASS // 4, replace=False)
                    rows.append(features[take])
                    labels.append(torch.full((len(take),), c))
    finally:
        hook.remove()
    x, y = torch.cat(rows), torch.cat(labels)
    counts = torch.bincount(y, minlength=num_classes).float()
    weights = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.zeros(()))
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    w = torch.zeros(num_classes, x.shape[1], requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], lr=1, max_iter=200, line_search_fn="strong_wolfe")
    standard = (x - mean) / std

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(standard @ w.T + b, y, weight=weights) + 1e-4 * (w ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():  # undo the standardisation: logits = W (x - mean) / std + b
        scaled = w / std
        layer.weight.copy_(scaled.reshape(layer.weight.shape).to(layer.weight.device))
        layer.bias.copy_((b - scaled @ mean).to(layer.bias.device))


def holdout_dice(network: nn.Module, pool: CropPool, mode: str, num_classes: int,
                 device: torch.device) -> dict[int, float]:
    """Dice per class (index -> Dice) over all held-out crops together, for classes they contain."""
    network.eval()
    overlap, predicted, present = (np.zeros(num_classes) for _ in range(3))
    with torch.no_grad():
        for start in range(0, len(pool.inputs), 2):
            part = slice(start, start + 2)
            logits = forward_logits(network, pool.inputs[part].to(device), mode,
                                    [c[part].to(device) for c in pool.cached])
            guess = logits.argmax(dim=1).cpu().numpy().ravel()
            truth = pool.targets[part].numpy().ravel().astype(np.int64)
            overlap += np.bincount(truth[guess == truth], minlength=num_classes)[:num_classes]
            predicted += np.bincount(guess, minlength=num_classes)[:num_classes]
            present += np.bincount(truth, minlength=num_classes)[:num_classes]
    return {c: float(2 * overlap[c] / (predicted[c] + present[c])) for c in range(1, num_classes) if present[c]}


def validate(network: nn.Module, cases: list[Case], table: LabelTable, windows: WindowSettings,
             device: torch.device) -> dict:
    """Mean Dice per structure over the validation cases (structures absent from a case skipped)."""
    network.eval()
    per_case = []
    for case in cases:
        logits, _ = sliding_window_logits(case.image, network, len(table) + 1, windows, device=device)
        prediction = logits.argmax(dim=0).numpy()
        per_case.append(dice_per_structure(prediction, case.target, table, range(1, len(table) + 1)))
    dice = {}
    for lab in table:
        scores = [c[lab.name] for c in per_case if c[lab.name] is not None]
        dice[lab.name] = round(float(np.mean(scores)), 4) if scores else None
    mean = mean_dice(dice)
    return {"dice": dice, "mean_dice": round(mean, 4) if mean is not None else None,
            "cases": [c.name for c in cases]}


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_file(path) as tmp:
        torch.save(state, str(tmp))


def load_checkpoint_state(path: str | Path) -> dict:
    """A training checkpoint, read without unpickling anything but tensors and plain values."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"The checkpoint {path} does not exist.") from None
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign files raise many types
        raise InputError(f"The checkpoint {path} cannot be read ({type(exc).__name__}).") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"The file {path} is not a train-seg checkpoint.")
    return state


def train_segmentation(network: nn.Module, cases: list[Case], val_cases: list[Case], table: LabelTable,
                       settings: SegmentationSettings, device: torch.device, *,
                       checkpoint_dir: Path | None = None, resume: dict | None = None,
                       progress: Progress | None = None, log: Log | None = None,
                       data_key: dict | None = None, crop_store: Path | None = None) -> SegmentationResult:
    """Train `network` (encoder + decoder) on crops of `cases`; returns the chosen weights.

    `data_key` says where the cases came from (source, preprocessing); a saved feature cache is
    reused only for the same key. `crop_store` is a folder where each case's crops with their frozen
    features are kept for later runs (`CropStore`).
    """
    if not cases:
        raise InputError("There are no training cases.")
    started = time.perf_counter()
    network.to(device)
    enable_fast_swin(network)  # only the no-grad passes use it (feature cache, validation)
    mode = settings.encoder_mode
    trainable = set_trainable(network, mode, settings.frozen_modules)
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, settings, time.perf_counter() - started))
    weights = (inverse_sqrt_weights([c.target for c in cases], len(table) + 1)
               if settings.class_weights == "inverse-sqrt" else None)
    loss_fn = segmentation_loss(weights.to(device) if weights is not None else None)
    if weights is not None and log:
        log("Class weights: " + ", ".join(f"{n} {w:.2f}" for n, w in zip(["background"] + [lab.name for lab in table],
                                                                        weights.tolist())) + ".")
    samplers = [CropSampler(c, settings.augment.window) for c in cases]
    mirror = mirror_lookup(table)

    step, history = 0, []
    best_score, best_step, best_state, validation = -1.0, 0, None, None
    if resume is not None:
        network.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        step, history = int(resume["step"]), list(resume["history"])
        best_score, best_step = float(resume["best_score"]), int(resume["best_step"])
        best_state, validation = resume.get("best_model"), resume.get("validation")
        if log:
            log(f"Resumed from step {step}.")

    def checkpoint() -> None:
        if checkpoint_dir is None:
            return
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(checkpoint_dir / CHECKPOINT_NAME, {
            "format": CHECKPOINT_FORMAT, "step": step, "model": network.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "history": history,
            "best_score": best_score, "best_step": best_step, "best_model": best_state,
            "validation": validation, "settings": _plain(asdict(settings))})

    pool, store = None, None
    if crop_store is not None and settings.feature_cache and mode != "finetune":
        store = CropStore(crop_store, encoder_digest(network) + f"/{mode}", _crop_settings(settings))
    if settings.feature_cache and mode != "finetune" and step < settings.steps:
        # Saved beside the checkpoints, so a resumed run does not compute the frozen part again.
        key = {"cases": [c.name for c in cases], "data": _plain(data_key or {}),
               "settings": _plain(asdict(settings)), "pool": 1}
        for name in ("steps", "val_every", "checkpoint_every", "lr", "weight_decay", "warmup_steps",
                     "min_lr_ratio", "batch_size", "class_weights", "max_grad_norm", "val_overlap",
                     "holdout_crops", "check_every", "patience", "time_budget_s"):
            key["settings"].pop(name)
        pool_file = checkpoint_dir / "feature-cache.pt" if checkpoint_dir is not None else None
        pool = CropPool.load(pool_file, key) if pool_file is not None and pool_file.is_file() else None
        if pool is None:
            pool = build_crop_pool(network, samplers, settings, mirror, device,
                                   (lambda f, m: progress(0.0, m)) if progress else None, store=store, log=log)
            if pool_file is not None:
                checkpoint_dir.mkdir(parents=True, exist_ok=True)
                pool.save(pool_file, key)
        elif log:
            log(f"Reused the feature cache {pool_file}.")
    if pool is not None and settings.probe_init and resume is None:
        fit_output_layer(network, pool, mode, len(table) + 1, device, settings.seed)
        if log:
            log("Started the output layer as a linear probe of the decoder's features on the crop pool.")
    held_out = (build_crop_pool(network, samplers, settings, mirror, device, crops=settings.holdout_crops,
                                stream=2_000_003, store=store)
                if pool is not None and settings.holdout_crops and not val_cases else None)
    if pool is not None and settings.channels_last:
        # Channels-last: PyTorch's CPU convolutions of few channels compute their weight gradients
        # several times faster in this layout (docs/interactive.md, Teach model: the cost of a step).
        network.decoder.to(memory_format=torch.channels_last_3d)
        pool = pool.channels_last()
        held_out = held_out.channels_last() if held_out is not None else None
    stopped, stale, holdout = "steps", 0, None
    names = [lab.name for lab in table]

    def score_holdout() -> float:
        """Score the held-out crops; keep the weights if they are the best so far. The mean Dice."""
        nonlocal best_score, best_step, best_state, holdout, stale
        scores = holdout_dice(network, held_out, mode, len(table) + 1, device)
        score = float(np.mean(list(scores.values()))) if scores else 0.0
        if score > best_score + 1e-3:
            best_score, best_step, stale = score, step, 0
            holdout = {names[c - 1]: round(d, 4) for c, d in scores.items()}
            best_state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
        else:
            stale += 1
        return score

    if held_out is not None and step == 0:
        score_holdout()  # where it starts: training never returns weights that score worse than that
        stale = 0
    while step < settings.steps:
        network.train()
        rng = np.random.default_rng([settings.seed, step])
        cached = None
        if pool is not None:
            inputs, targets, cached = pool.batch(rng, settings.batch_size)
            cached = [c.to(device) for c in cached]
        else:
            inputs, targets = sample_batch(samplers, settings.augment, rng, settings.batch_size, mirror)
        inputs, targets = inputs.to(device), targets.to(device)
        logits = forward_logits(network, inputs, mode, cached)
        loss = loss_fn(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.max_grad_norm:
            nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        step += 1
        record = {"step": step, "loss": round(float(loss.detach()), 5), "lr": optimizer.param_groups[0]["lr"]}
        if val_cases and (step % settings.val_every == 0 or step == settings.steps):
            result = validate(network, val_cases, table,
                              WindowSettings(settings.augment.window, overlap=settings.val_overlap), device)
            record["val_mean_dice"] = result["mean_dice"]
            score = result["mean_dice"] if result["mean_dice"] is not None else 0.0
            if score > best_score:
                best_score, best_step, validation = score, step, result
                best_state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
            if log:
                log(f"step {step}: validation mean Dice {score:.3f} "
                    f"({', '.join(f'{k} {v:.2f}' for k, v in result['dice'].items() if v is not None)})")
        elapsed = time.perf_counter() - started
        out_of_time = bool(settings.time_budget_s) and elapsed >= settings.time_budget_s
        if held_out is not None and (step % settings.check_every == 0 or step == settings.steps or out_of_time):
            record["holdout_mean_dice"] = round(score_holdout(), 4)
            if settings.patience and stale >= settings.patience:
                stopped = "no-improvement"
        history.append(record)
        if progress:
            recent = np.mean([h["loss"] for h in history[-20:]])
            fraction = step / settings.steps
            if settings.time_budget_s:
                fraction = max(fraction, min(1.0, elapsed / settings.time_budget_s))
            progress(fraction if stopped == "steps" else 1.0, f"step {step}/{settings.steps} loss {recent:.3f}"
                     + (f", held-out Dice {record['holdout_mean_dice']:.3f}" if "holdout_mean_dice" in record else ""))
        if out_of_time and stopped == "steps":
            stopped = "time budget"
        if step % settings.checkpoint_every == 0 or step == settings.steps or stopped != "steps":
            checkpoint()
        if stopped != "steps":
            if log:
                log(f"Stopped at step {step}: " + ("the held-out crops' Dice has not improved for "
                                                   f"{settings.patience * settings.check_every} steps."
                                                   if stopped == "no-improvement" else "the time budget is spent."))
            break

    if best_state is not None:
        network.load_state_dict(best_state)
    network.decoder.to(memory_format=torch.contiguous_format)
    network.eval()
    return SegmentationResult(network, history, validation, best_step if best_state is not None else step,
                              step, time.perf_counter() - started, stopped, holdout)


def _crop_settings(settings: SegmentationSettings) -> dict:
    """The settings a case's crops depend on (what `CropStore` keys them by)."""
    return {"augment": _plain(asdict(settings.augment)), "seed": settings.seed, "balanced": settings.balanced_pool,
            "mode": settings.encoder_mode}


def _plain(obj):
    """Settings as plain lists/dicts/numbers (checkpoints are read with weights_only=True)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
