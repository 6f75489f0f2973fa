"""The warm interactive session: one model, one scan at a time, several structures, learning across scans.

State: the loaded bundle (once per process), the scan and its cached features, the structures of
the scan (each with its prompt history, undo/redo stacks and current mask), and the examples kept
from accepted structures (feature rows of the structure and of its surroundings, by structure
name). Why rows and not masks: the head learns across scans from them without recomputing any
scan's features, and a later scan's first answer for a known structure is an automatic proposal
(the head trained on those rows; the user's clicks then edit it as any answer).
How an answer is made: `graphcut` (an exact energy minimum in a working region; the prompts are
hard constraints and a click edits the previous answer locally), see docs/interactive.md.
Features are projected with one projection per encoder (see `features`), so rows of different
scans live in the same space. Accepted structures are also written, if an examples folder is
given, as labelled examples: `<folder>/<scan id>/<structure>.nii.gz` beside `example.json`
(scan path, structure, value), atomically.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from coralbay.interactive import graphcut as G
from coralbay.interactive import head as heads
from coralbay.interactive import prompts as P
from coralbay.interactive.accepted import accepted_on_scan, earlier_example_rows, example_rows
from coralbay.interactive.draws import keyed_rng
from coralbay.interactive.engine import LoadedBundle, UsageError, encoder_digest, write_accepted
from coralbay.interactive.features import FeatureVolume, LazyFeatures, open_features
from coralbay.interactive.refine import Answer, full_resolution_mask, uncertainty_and_next_click
from coralbay.interactive.scan_grids import ScanGrids

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.()-]{0,63}")


@dataclass
class Structure:
    name: str
    value: int
    prompts: list[P.Prompt] = field(default_factory=list)
    history: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)   # (mask, logits) after each prompt
    before_prompts: tuple[np.ndarray, np.ndarray] | None = None   # the answer shown before any prompt (a proposal)
    undone: list[tuple[P.Prompt, tuple[np.ndarray, np.ndarray]]] = field(default_factory=list)
    mask: np.ndarray | None = None          # bool, input grid (z, y, x)
    logits: np.ndarray | None = None        # model grid (X, Y, Z)
    accepted: bool = False
    proposal: bool = False                  # the mask came from the examples alone

    def previous_mask(self) -> np.ndarray | None:
        """The answer before the last prompt (the proposal before the first one), or None."""
        if len(self.prompts) >= 2 and len(self.history) >= len(self.prompts) - 1:
            return self.history[len(self.prompts) - 2][0]
        return self.before_prompts[0] if self.before_prompts is not None else None


@dataclass
class Examples:
    """Feature rows learned from accepted structures, by structure name and scan.

    Why per scan, read in scan-id order: a restarted engine reloads them from disk scan by scan,
    so a live session and a restarted one must hold the same rows in the same order whatever order
    they were accepted in (the head's fit depends on the order of its rows); a structure accepted
    again on a scan replaces its rows there, as its mask on disk is replaced."""

    rows: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)

    def add(self, name: str, scan_id: str, positive: np.ndarray, negative: np.ndarray) -> None:
        self.rows.setdefault(name, {})[scan_id] = (positive, negative)

    def knows(self, name: str) -> bool:
        return bool(self.rows.get(name))

    def names(self) -> list[str]:
        return sorted(self.rows)

    def positive(self, name: str) -> list[np.ndarray]:
        return [self.rows[name][scan][0] for scan in sorted(self.rows[name])]

    def negative(self, name: str) -> list[np.ndarray]:
        return [self.rows[name][scan][1] for scan in sorted(self.rows[name])]


class Session:
    """Answers prompts on one scan at a time; keeps the model and the learned examples."""

    def __init__(self, bundle: LoadedBundle, cache_dir: str | Path | None = None,
                 examples_dir: str | Path | None = None, device: str = "cpu", hidden: int = 0,
                 seed: int = 0, lazy: bool = True) -> None:
        self.bundle = bundle
        self.lazy = lazy
        self.cache_dir = cache_dir
        self.examples_dir = Path(examples_dir) if examples_dir else None
        self.device = device
        self.hidden = hidden
        self.seed = seed       # every random draw is keyed by it and by what it is about (`draws`)
        self.examples = Examples()
        self._examples_restored = False
        self._encoder_sha256: str | None = None
        self.image: sitk.Image | None = None
        self.scan_id = ""
        self.scan_path = ""
        self.structures: dict[str, Structure] = {}
        self.current: str | None = None
        # per scan, set by open_scan
        self.features: LazyFeatures | None = None
        self.volume: FeatureVolume | None = None
        self.hu = np.zeros((0, 0, 0), np.float32)
        self.spacing_zyx = np.ones(3)
        self.accepted_input = np.zeros((0, 0, 0), bool)
        self.accepted_model = np.zeros((0, 0, 0), bool)
        self.background = np.zeros(0, np.int64)
        self.grids: ScanGrids | None = None
        self._table: heads.FeatureTable | None = None
        self._table_key: str | None = None
        # Set by a front end: windows computed for an answer report progress and stop when cancelled.
        self.feature_progress: Callable[[float, str], None] | None = None
        self.cancelled: Callable[[], bool] | None = None

    # ---------------------------------------------------------------- scan
    def open_scan(self, image: sitk.Image, scan_path: str = "",
                  progress: Callable[[float, str], None] | None = None,
                  cancelled: Callable[[], bool] | None = None) -> FeatureVolume:
        """Make `image` the scan; structures start afresh.

        Features come from the cache when complete there; else (lazy) none is computed yet: each
        answer needs none (`graphcut` works on the scan's intensities); a proposal or an accept
        computes all of them, `compute_features` the rest between requests. Not lazy: every window now, as before.
        """
        self.features = open_features(image, self.bundle, self.cache_dir, self.device)
        if not self.lazy:
            self.features.finish(progress, cancelled)
        volume = self.features.volume
        self._table = None
        self.image = image
        self.scan_path = scan_path
        self.scan_id = volume.key[:16]
        self.volume = volume
        self.hu = sitk.GetArrayFromImage(image).astype(np.float32)
        self.spacing_zyx = np.asarray(image.GetSpacing()[::-1], float)
        self.structures = {}
        self.current = None
        self.accepted_input = np.zeros(self.hu.shape, bool)
        self.accepted_model = np.zeros(volume.shape, bool)
        # One draw of weak negatives per scan (for the head of a proposal), keyed by the scan: the
        # same after a restart, whatever happened before (`draws`).
        self.background = heads.random_background(volume.shape, keyed_rng(self.seed, "background", volume.key),
                                                  np.zeros(0, np.int64), 2 * heads.BACKGROUND_SAMPLES)
        self.grids = ScanGrids(image, volume.grid, volume.shape)
        if self.examples_dir is not None:
            self._restore_accepted()
        return volume

    @property
    def table(self) -> heads.FeatureTable:
        """The head's feature table over the whole scan (its features completed first), standardised
        over all of it: a function of the scan, not of the windows computed so far (issue 25)."""
        self.features.finish(self.feature_progress, self.cancelled)
        if self._table is None or self._table_key != self.volume.key:
            self._table = heads.FeatureTable(self.volume, None)
            self._table_key = self.volume.key
        return self._table

    @property
    def features_pending(self) -> bool:
        return self.image is not None and not self.features.complete

    def compute_features(self, windows: int | None = None, progress: Callable[[float, str], None] | None = None,
                         cancelled: Callable[[], bool] | None = None) -> bool:
        """Compute `windows` more pending windows (all when None); True while some remain.
        The cache file is written when the last one is in."""
        self._need_scan()
        if windows is None:
            self.features.finish(progress, cancelled)
            return False
        return self.features.step(windows, progress, cancelled)

    def _restore_accepted(self) -> None:
        """Structures accepted on this scan by an earlier process come back accepted (not re-kept)."""
        for found in accepted_on_scan(self.examples_dir, self.scan_id, self.hu.shape, self.encoder_sha256):
            if found.name in self.structures or found.value in {s.value for s in self.structures.values()}:
                continue
            structure = Structure(found.name, found.value, mask=found.mask, accepted=True)
            self.structures[found.name] = structure
            self.mark_accepted(structure)

    def _need_scan(self) -> None:
        if self.image is None:
            raise UsageError("Open a scan first.")

    # ---------------------------------------------------------------- structures
    def start(self, name: str, value: int | None = None) -> Structure:
        """Begin a structure; a name already used on this scan is refused (never overwritten)."""
        self._need_scan()
        name = str(name).strip()
        if not name:
            raise UsageError("A structure needs a name.")
        if not NAME_PATTERN.fullmatch(name):
            raise UsageError(f"The structure name {name!r} may hold only letters, digits, spaces, '_', '-', '.' "
                             "and parentheses (it names the mask files).")
        if name in self.structures:
            state = "accepted" if self.structures[name].accepted else "in progress"
            raise UsageError(f"A structure named {name} is already {state} on this scan; choose another name.")
        used = {s.value for s in self.structures.values()}
        if value is None:
            value = next(v for v in range(1, 65536) if v not in used)
        elif value in used:
            raise UsageError(f"The label value {value} is already used by another structure on this scan.")
        structure = Structure(name, int(value))
        self.structures[name] = structure
        self.current = name
        return structure

    def structure(self, name: str | None = None) -> Structure:
        self._need_scan()
        name = name or self.current
        if name is None or name not in self.structures:
            raise UsageError(f"No structure named {name} on this scan; start it first." if name
                             else "Start a structure first.")
        return self.structures[name]

    def prompt(self, prompt: P.Prompt, name: str | None = None) -> Answer:
        structure = self.structure(name)
        if structure.accepted:
            raise UsageError(f"The structure {structure.name} is accepted; start a new one to change it.")
        if isinstance(prompt, P.Point) and prompt.positive:
            self._refuse_point_on_accepted(prompt)
        structure.prompts.append(prompt)
        try:
            answer = self.answer(structure)
        except InterruptedError:      # cancelled while computing feature windows: as if never given
            structure.prompts.pop()
            raise
        structure.undone.clear()
        return answer

    def _refuse_point_on_accepted(self, point: P.Point) -> None:
        """A positive point on an accepted structure could change nothing (an accepted structure is
        never overwritten): say so instead of answering with the same mask."""
        voxel = self.grids.input_voxel(point.lps)
        if not self.accepted_input[voxel]:
            return
        owner = next((s.name for s in self.structures.values()
                      if s.accepted and s.mask is not None and s.mask[voxel]), "an accepted structure")
        raise UsageError(f"That point belongs to the accepted structure {owner}, which is never overwritten; "
                         "point at voxels outside it.")

    def undo(self, name: str | None = None) -> Answer:
        """Back to the answer before the last prompt (kept, not recomputed: undo restores what was seen)."""
        structure = self.structure(name)
        if structure.accepted or not structure.prompts:
            raise UsageError("Nothing to undo.")
        structure.undone.append((structure.prompts.pop(), structure.history.pop()))
        if structure.history:
            structure.mask, structure.logits = structure.history[-1]
        elif structure.before_prompts is not None:   # back to the proposal the structure started from
            structure.mask, structure.logits = structure.before_prompts
        else:
            structure.mask, structure.logits = np.zeros(self.hu.shape, bool), np.full(self.volume.shape, -10.0, np.float32)
        return self._shown(structure)

    def redo(self, name: str | None = None) -> Answer:
        structure = self.structure(name)
        if structure.accepted or not structure.undone:
            raise UsageError("Nothing to redo.")
        prompt, state = structure.undone.pop()
        structure.prompts.append(prompt)
        structure.history.append(state)
        structure.mask, structure.logits = state
        return self._shown(structure)

    def _shown(self, structure: Structure) -> Answer:
        uncertainty, click, positive = uncertainty_and_next_click(structure.logits, self.volume.grid)
        return Answer(structure.mask, uncertainty, click, positive)

    def propose(self, name: str | None = None) -> Answer | None:
        """An automatic proposal from the examples of earlier scans, or None (a new name, or
        nothing the head trained on them finds).

        The head trained on the earlier scans' rows answers over the whole scan; its largest
        component is the structure's answer before any prompt (`before_prompts`): the user's clicks
        then edit it locally as any answer, and undo of the first click comes back to it.
        """
        structure = self.structure(name)
        if not self.examples.knows(structure.name) or structure.prompts:
            return None
        self.features.finish(self.feature_progress, self.cancelled)   # the head on the examples answers everywhere
        logits, anchors = self._head_logits(structure)
        mask = full_resolution_mask(logits, self.volume.grid, self.image, self.hu, anchors,
                                    self.accepted_input if self.accepted_input.any() else None)
        if not mask.any():
            return None
        structure.proposal = True
        logits = self.grids.mask_logits(mask)
        structure.mask, structure.logits = mask, logits
        structure.before_prompts = (mask, logits)
        uncertainty, click_lps, positive = uncertainty_and_next_click(logits, self.volume.grid)
        return Answer(mask, uncertainty, click_lps, positive)

    def accept(self, name: str | None = None) -> Structure:
        """Freeze the structure: it becomes negative evidence for the others and an example."""
        structure = self.structure(name)
        if structure.mask is None or not structure.mask.any():
            raise UsageError(f"The structure {structure.name} has no mask to accept yet.")
        self.features.finish(self.feature_progress, self.cancelled)   # example rows from the complete features
        self._keep_example(structure, self.mark_accepted(structure))
        if self.current == structure.name:
            self.current = None
        return structure

    def mark_accepted(self, structure: Structure) -> np.ndarray:
        """Freeze the structure's mask as finished (negative evidence for the others); its model-grid mask."""
        structure.accepted = True
        self.accepted_input |= structure.mask
        model_mask = self.grids.model_mask(structure.mask)
        self.accepted_model |= model_mask
        if self.current == structure.name:
            self.current = None
        return model_mask

    def labels(self) -> sitk.Image:
        """The accepted structures as one label map on the input grid."""
        self._need_scan()
        out = np.zeros(self.hu.shape, np.uint16)
        for s in self.structures.values():
            if s.accepted and s.mask is not None:
                out[s.mask] = s.value
        image = sitk.GetImageFromArray(out)
        image.CopyInformation(self.image)
        return image

    # ---------------------------------------------------------------- the answer
    def _head_logits(self, structure: Structure) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """The online head's logits on the model grid (all features computed), trained on the
        structure's examples from earlier scans and its point prompts; and the positive clicks."""
        # This answer's draws are keyed by the scan and the prompt count, not drawn from a generator
        # shared with everything before: a replay draws the same, and so do equal prompts (`draws`).
        rng = keyed_rng(self.seed, "answer", self.scan_id, len(structure.prompts))
        ev, positive_model, negative_model, anchors = heads.evidence_from_prompts(
            structure.prompts, self.grids, self.accepted_model, self.background, rng)
        extra = None
        if self.examples.knows(structure.name):   # rows of other scans lie far from this scan's prompts
            extra = tuple(heads.far_from_prompts(np.concatenate(rows)) for rows in
                          (self.examples.positive(structure.name), self.examples.negative(structure.name)))
        stack = lambda parts: np.concatenate(parts) if parts else np.zeros((0, 3), int)  # noqa: E731
        table = self.table.with_distances(stack(positive_model), stack(negative_model),
                                          tuple(self.volume.grid.GetSpacing()))
        head = heads.fit_head(table, ev, hidden=self.hidden, extra=extra)
        return heads.predict(table, head, self.volume.shape), anchors

    def answer(self, structure: Structure) -> Answer:
        """The structure's mask after its last prompt (`graphcut`): a click edits the previous
        answer near it; a box or scribble answers afresh; a segment to refine is the answer."""
        forbidden = self.accepted_input if self.accepted_input.any() else None
        last = structure.prompts[-1] if structure.prompts else None
        previous = structure.previous_mask()
        if isinstance(last, P.Segment):
            mask = np.zeros(self.hu.shape, bool)
            mask[tuple(last.voxels.T)] = True
            if forbidden is not None:
                mask &= ~forbidden
        else:
            prompts = graph_prompts(structure.prompts, self.grids)
            click = prompts.clicks[-1] if isinstance(last, P.Point) else None
            if click is None:
                previous = None
                segments = [p for p in structure.prompts if isinstance(p, P.Segment)]
                if segments:         # a box or scribble after a segment: start from the segment
                    previous = np.zeros(self.hu.shape, bool)
                    previous[tuple(segments[-1].voxels.T)] = True
            mask = G.solve(self.hu, self.spacing_zyx, prompts, previous, forbidden, last=click)
        logits = self.grids.mask_logits(mask)
        structure.mask, structure.logits = mask, logits
        if structure.prompts:
            del structure.history[len(structure.prompts) - 1:]
            structure.history.append((mask, logits))
        else:   # an answer without prompts (a proposal): what undo of the first prompt returns to
            structure.before_prompts = (mask, logits)
        uncertainty, click_lps, positive = uncertainty_and_next_click(logits, self.volume.grid)
        return Answer(mask, uncertainty, click_lps, positive)

    # ---------------------------------------------------------------- learning from the user
    def _keep_example(self, structure: Structure, model_mask: np.ndarray) -> None:
        rows = example_rows(self.table, model_mask, keyed_rng(self.seed, "examples", self.scan_id, structure.name))
        if rows is None:
            return
        self.examples.add(structure.name, self.scan_id, *rows)
        if self.examples_dir is not None:
            write_accepted(self.examples_dir, self.scan_id, self.scan_path, structure.name, structure.value,
                           structure.mask, self.image, self.bundle.manifest.name, self.encoder_sha256)

    @property
    def encoder_sha256(self) -> str:
        """The encoder's digest (recorded with each example, so other encoders' examples are refused)."""
        if self._encoder_sha256 is None:
            self._encoder_sha256 = encoder_digest(self.bundle.network)
        return self._encoder_sha256

    def restore_examples(self, progress: Callable[[float, str], None] | None = None,
                         cancelled: Callable[[], bool] | None = None) -> int:
        """Reload the examples accepted by earlier processes (once per process; see `accepted`)."""
        if self.examples_dir is None or self._examples_restored:
            return 0
        count = 0
        for name, scan_id, positive, negative in earlier_example_rows(self.examples_dir, self.bundle, self.cache_dir,
                                                             self.device, self.encoder_sha256, self.seed,
                                                             progress, cancelled):
            self.examples.add(name, scan_id, positive, negative)
            count += 1
        self._examples_restored = True
        return count


def graph_prompts(prompts: list[P.Prompt], grids: ScanGrids) -> G.Prompts:
    """A structure's prompts on the input grid (z, y, x), as the graph cut takes them."""
    out = G.Prompts()
    positive, negative = [], []
    for p in prompts:
        if isinstance(p, P.Point):
            out.clicks.append(G.Click(grids.input_voxel(p.lps), p.positive))
        elif isinstance(p, P.Box):
            out.box = (np.asarray(p.lower[::-1]), np.asarray(p.upper[::-1]))
        elif isinstance(p, P.Scribble):
            positive.append(p.positive)
            negative.append(p.negative)
    if positive:
        out.positive_voxels = np.concatenate(positive).reshape(-1, 3)
        out.negative_voxels = np.concatenate(negative).reshape(-1, 3)
    return out
