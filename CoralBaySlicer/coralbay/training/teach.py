"""Teach a model from the structures a user accepted: `teach_bundle(TeachRequest)`.

What it trains: the Swin-UNETR decoder on the starting bundle's encoder, which stays frozen and
unchanged (the examples' features came from it, and the taught bundle's features stay the same as
the interactive session's, so its feature cache still applies). The frozen encoder's outputs are
computed once for a pool of augmented crops per scan (`feature_cache`), the cheapest way to train
on a CPU, and kept in a crop store under $CORALBAY_HOME/cache/teach-crops between teaches, so a
teach on one more scan runs the encoder on that scan only. The decoder's blocks start from the starting bundle's decoder when it has one (they turn
encoder features into boundaries whatever the structures) and its output layer, one channel per
structure, starts as a class-balanced linear probe of the features it reads: the user's
structures need not be the ones the bundle knew. Every block trains, the full-resolution one too
(once steps ran channels-last it cost little more, and on the development phantoms it lifted the
small structures: docs/interactive.md). `fresh_decoder` starts every decoder block afresh instead
(for a bundle without a decoder, or to measure what the examples alone teach), which needs many
more steps.

Every structure is reached: the crop pool centres crops on each structure of a scan in turn, so a
small one (an aorta, a lesion) gets as many crops as the liver. No crop is mirrored or turned (the
model grid is always RAS, so the next scan never shows mirrored anatomy; on the development
phantoms the flipped crops cost 0.02 Dice: docs/interactive.md). When to stop comes from the
examples themselves: held-out crops of every scan (never trained on) are scored every few steps,
training stops once they no longer improve and keeps the best weights; `minutes` caps the time.
A warning says when the result is unlikely to be useful (a structure with few voxels, a loss that
does not fall, a structure the held-out crops do not find).

Incremental: `start_from` names a model taught earlier on the same encoder (from the examples of
scans 1..N); a teach on scans 1..N+1 starts from it, with all its weights (its output layer too
when the structures are the same), and is given a fraction of the steps of a first teach. The
bundle's metrics record which examples (scan ids and structures) it saw.

The bundle is written atomically by the training API and then added to the user's catalog, so the
Slicer module's model selector and `coralbay segment --model NAME` find it. Everything that can be
refused is checked before training starts (no examples, examples of another encoder, a name or
folder already taken), so a refused teach costs nothing and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coralbay.bundle.catalog import add_model, list_models, user_home
from coralbay.bundle.loader import load_bundle
from coralbay.bundle.manifest import MANIFEST_NAME
from coralbay.errors import InputError, UsageError
from coralbay.io.examples import read_examples
from coralbay.model.digest import encoder_digest
from coralbay.progress import Reporter
from coralbay.training.api import SEG_STAGES, train_segmentation_bundle
from coralbay.training.config import SegmentationTraining, TrainingResult
from coralbay.training.data import example_label_table
from coralbay.training.output import bundle_name

TEACH_STEPS = 200          # most decoder steps (batch 2), unless the held-out crops stop it sooner (docs/interactive.md)
INCREMENTAL_SHARE = 0.3    # an incremental teach's most steps and learning rate, as a share of a first teach's
                           # (the first test run, at the full rate without warm-up, lost Dice: docs)
CROPS_PER_SCAN = 4         # augmented crops per scan whose frozen encoder outputs are computed once
HOLDOUT_CROPS = 1          # more crops per scan, never trained on, for the stopping rule
CHECK_EVERY = 10           # steps between scores of the held-out crops
PATIENCE = 4               # scores without improvement before stopping
TEACH_LR = 1e-2            # peak learning rate (AdamW, warm-up then cosine): 1e-3 left the fresh output layer untrained in 150 steps (docs)


@dataclass
class TeachRequest:
    examples: Path                 # the --examples folder of interactive sessions
    base: str                      # the bundle whose encoder the examples were accepted on
    name: str                      # the taught bundle's catalog name
    output: Path | None = None     # default: $CORALBAY_HOME/models/<name>
    steps: int | None = None       # most steps (default TEACH_STEPS, a share of it when incremental)
    minutes: float | None = None   # time budget of the training loop
    start_from: str | None = None  # a model taught before on the same encoder: an incremental teach
    crops_per_scan: int = CROPS_PER_SCAN
    fresh_decoder: bool = False    # every decoder block from random weights (not only the output layer)
    lr: float = TEACH_LR
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    add_to_catalog: bool = True


def taught_output(request: TeachRequest) -> Path:
    return Path(request.output) if request.output else user_home() / "models" / bundle_name(request.name)


def check_teach(request: TeachRequest) -> tuple[Path, int]:
    """Refuse what cannot be taught, before any work: the output folder and the number of scans."""
    name = bundle_name(request.name)
    if name != request.name.strip():
        raise UsageError(f"The model name {request.name!r} may hold only lower-case letters, digits, '.', '_' "
                         f"and '-' (for example {name}).")
    for existing in list_models():
        if existing.name == name:
            raise InputError(f"A model named {name} is already in the catalog ({existing.folder}); "
                             "choose another --name.")
    output = taught_output(request)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UsageError(f"The output {output} already exists; choose another --output or --name "
                         "(a taught model never replaces another).")
    if not Path(request.examples).is_dir():
        raise InputError(f"The examples folder {request.examples} does not exist.")
    scans = [scan for scan in read_examples(request.examples) if scan.structures]
    if not scans:
        raise InputError(f"The folder {request.examples} holds no accepted structures; accept structures in "
                         "an interactive session (Slicer's Interactive section, or coralbay interact --examples) first.")
    base = load_bundle(request.base)
    digest = encoder_digest(base.network)
    if request.start_from is not None:
        earlier = load_bundle(request.start_from)
        if earlier.manifest.task != "segmentation" or encoder_digest(earlier.network) != digest:
            raise InputError(f"The model {earlier.manifest.name} to continue from was not taught on the encoder of "
                             f"{base.manifest.name}; continue from a model taught from {base.manifest.name}.")
    for scan in scans:
        if scan.encoder_sha256 is not None and scan.encoder_sha256 != digest:
            raise InputError(f"The examples in {scan.folder} were accepted with the model "
                             f"{scan.model_name or 'of another encoder'}, whose encoder differs from that of "
                             f"{base.manifest.name}; teach from the model they were accepted with.")
    return output, len(scans)


def same_structures(request: TeachRequest) -> bool:
    """Whether the examples name exactly the structures of the model continued from, in its order
    (then its output layer is kept; otherwise it starts again as a linear probe)."""
    earlier = load_bundle(request.start_from).manifest.labels
    scans = [scan for scan in read_examples(request.examples) if scan.structures]
    return [lab.name for lab in example_label_table(scans, earlier)] == [lab.name for lab in earlier]


def teach_training(request: TeachRequest, output: Path, scans: int, continued: bool) -> SegmentationTraining:
    """The training run of a teach: the frozen encoder, the balanced crop pool, the stopping rule."""
    steps = request.steps or (max(CHECK_EVERY * PATIENCE, round(TEACH_STEPS * INCREMENTAL_SHARE))
                              if request.start_from else TEACH_STEPS)
    return SegmentationTraining(
        output=output, examples=str(request.examples), init_from=request.start_from or request.base,
        init_parts="encoder" if request.fresh_decoder else ("all" if continued else "all-but-output"),
        encoder="frozen", feature_cache=request.crops_per_scan, steps=steps, batch_size=2,
        lr=request.lr * (INCREMENTAL_SHARE if continued else 1.0),
        # No mirrored or turned crops: the model grid is always RAS, so the user's next scan never shows
        # mirrored anatomy, and in a pool of a few crops per scan each flipped one is a crop of no use
        # (about a third of them at train-seg's 0.1 per axis; docs/interactive.md, third round).
        flip_prob=0.0, rotate_prob=0.0,
        class_weights="inverse-sqrt", balanced_pool=True, holdout_crops=HOLDOUT_CROPS, check_every=CHECK_EVERY,
        patience=PATIENCE, minutes=request.minutes, probe_init=not continued,
        warmup=min(20, steps), val_fraction=0.0, val_every=steps + 1,
        checkpoint_every=max(50, steps // 4), name=request.name, crop_store=user_home() / "cache" / "teach-crops",
        title=f"{request.name} (taught from accepted structures)",
        description=(f"Taught with coralbay teach from the structures a user accepted on {scans} scan(s): a "
                     f"Swin-UNETR decoder on the frozen encoder of {request.base}, "
                     + ("trained from random weights" if request.fresh_decoder else
                        f"continued from {request.start_from}" if request.start_from else
                        "its blocks started from that bundle's decoder, its output layer afresh")),
        seed=request.seed, device=request.device, threads=request.threads,
        reproduce=lambda _: (f"coralbay teach {request.examples} --model {request.base} --name {request.name} "
                             f"--steps {steps} --lr {request.lr:g} --seed {request.seed}"
                             + (f" --minutes {request.minutes:g}" if request.minutes else "")
                             + (f" --from {request.start_from}" if request.start_from else "")
                             + (" --fresh-decoder" if request.fresh_decoder else "")))


def teach_bundle(request: TeachRequest, reporter: Reporter | None = None) -> TrainingResult:
    """Train a decoder from the accepted examples on the base bundle's frozen encoder; add it to the catalog."""
    reporter = reporter or Reporter("quiet", stages=SEG_STAGES)
    output, scans = check_teach(request)
    output.parent.mkdir(parents=True, exist_ok=True)
    continued = same_structures(request) if request.start_from else False
    reporter.log(f"Teaching {request.name} from the structures accepted on {scans} scan(s), on the encoder "
                 f"of {request.base}" + (f", starting from {request.start_from}" if request.start_from else "") + ".")
    result = train_segmentation_bundle(teach_training(request, output, scans, continued), reporter)
    if request.add_to_catalog and (result.bundle / MANIFEST_NAME).is_file():
        add_model(result.bundle)
    return result
