"""What a training run is asked to do: the configuration of `train_segmentation_bundle` and
`train_classification_bundle`, as plain dataclasses (the command line builds them from its
options; a script builds them directly).

Fields left None take the starting bundle's value (`init_from`), else the defaults of
`training.start`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

# Called with the resolved model settings (`ModelSettings`); returns the command line that
# recreates the bundle, stored in the manifest's `reproduce`.
ReproduceText = Callable[["ModelSettings"], str]


@dataclass(frozen=True)
class ModelSettings:
    """The model and preprocessing a run uses, every default resolved."""

    name: str
    feature_size: int
    spacing_mm: tuple[float, float, float]
    window_hu: tuple[float, float]
    window_size: tuple[int, int, int]
    overlap: float
    antialias: bool


@dataclass
class BundleTraining:
    """What every training run shares: the bundle written, the starting weights, the model
    grid, and how the run goes."""

    output: Path                              # bundle folder, replaced as a whole on success only
    phantoms: Optional[str] = None            # train on generated phantoms, e.g. "0-39"
    val_phantoms: Optional[str] = None
    val_fraction: Optional[float] = None      # share of the training data kept for validation
    test_phantoms: Optional[str] = None       # held-out phantoms through the full inference path
    name: Optional[str] = None                # catalog name (default: the output folder's name)
    title: Optional[str] = None
    description: Optional[str] = None
    intended_use: Optional[str] = None
    backbone: Optional[str] = None            # encoder weights: file or hub id
    trust_remote_code: bool = False
    init_from: Optional[str] = None           # an existing bundle: its weights and preprocessing
    init_parts: str = "all"                   # what init_from gives: all | encoder | all-but-output
    feature_size: Optional[int] = None
    spacing_mm: Optional[Sequence[float]] = None
    window_hu: Optional[Sequence[float]] = None
    window_size: Optional[Sequence[int]] = None
    overlap: Optional[float] = None
    antialias: Optional[bool] = None
    seed: int = 0
    device: str = "auto"
    threads: Optional[int] = None             # CPU threads for PyTorch
    reproduce: Optional[ReproduceText] = None


@dataclass
class SegmentationTraining(BundleTraining):
    """`train_segmentation_bundle`: a Swin-UNETR decoder on the CoralBay encoder."""

    data: Optional[str] = None                # folder of image/label pairs (or use `phantoms`)
    examples: Optional[str] = None            # folder of accepted interactive structures (io.examples)
    val_data: Optional[str] = None
    labels: Optional[str] = None              # label table file
    merge: Optional[str] = None               # "SRC=DST,..." labels trained as others
    encoder: str = "auto"                     # auto | finetune | convs | frozen
    feature_cache: int = 0
    steps: int = 1000
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup: int = 20
    class_weights: str = "none"               # none | inverse-sqrt
    foreground_prob: float = 0.9
    flip_prob: float = 0.1
    rotate_prob: float = 0.1
    scale_prob: float = 0.1
    shift_prob: float = 0.5
    val_every: int = 100
    checkpoint_dir: Optional[Path] = None     # default: BUNDLE.checkpoints, removed after success
    checkpoint_every: int = 50
    keep_checkpoints: bool = False
    resume: Optional[Path] = None             # a last.pt checkpoint of the same run
    minutes: Optional[float] = None           # time budget of the training loop (None: steps only)
    balanced_pool: bool = False               # feature-cache crops centred on each structure in turn
    holdout_crops: int = 0                    # more crops per case for the stopping rule (no validation cases)
    patience: int = 0                         # checks without held-out improvement before stopping (0: never)
    check_every: int = 10
    frozen_modules: Sequence[str] = ()        # besides the encoder, e.g. ("decoder.decoder1",)
    probe_init: bool = False                  # output layer started as a linear probe of the crop pool
    crop_store: Optional[Path] = None         # folder keeping each case's crops and frozen features between runs


@dataclass
class ClassificationTraining(BundleTraining):
    """`train_classification_bundle`: a linear probe on pooled CoralBay encoder features."""

    csv: Optional[str] = None                 # image,label[,x,y,z] (or use `phantoms`)
    val_csv: Optional[str] = None
    lesion_points: bool = False               # phantom mode per point instead of whole scans
    classes: Optional[Sequence[str]] = None   # output order (default: sorted)
    pooling: str = "multiscale"               # multiscale | head
    weight_decay: Union[float, str] = "auto"  # L2 of the probe, or "auto" (validation picks)


@dataclass
class TrainingResult:
    bundle: Path
    metrics: dict
