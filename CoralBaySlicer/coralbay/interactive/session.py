"""The warm interactive session: one model, one scan at a time, several structures, learning across scans.

State: the loaded bundle (once per process), the scan and its cached features, the structures of
the scan (each with its prompt history, undo/redo stacks and current mask), and the examples kept
from accepted structures (feature rows of the structure and of its surroundings, by structure
name). Why rows and not masks: the head learns across scans from them without recomputing any
scan's features, and a later scan's first answer for a known structure is an automatic proposal,
seeded where the structure lay on the earlier scans and in its HU band (`priors`).
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
from scipy import ndimage

from coralbay.interactive import head as heads
from coralbay.interactive import priors as PR
from coralbay.interactive import prompts as P
from coralbay.interactive import region
from coralbay.interactive.accepted import accepted_on_scan, earlier_example_rows, example_rows, model_mask_on
from coralbay.interactive.draws import keyed_rng
from coralbay.interactive.engine import LoadedBundle, UsageError, encoder_digest, write_accepted
from coralbay.interactive.features import FeatureVolume, LazyFeatures, WorkingRegion, open_features
from coralbay.interactive.refine import (CANDIDATE_LOGIT, Answer, full_resolution_mask, local_edit, resample_logits,
                                        uncertainty_and_next_click)

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.()-]{0,63}")
SEED_DROP_MM = 10.0    # see Session._drop_seeds


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
    seeds: list[PR.Seed] = field(default_factory=list)   # the proposal's own clicks (see `priors`)
    dropped: dict[int, int] = field(default_factory=dict)  # seed index -> prompt count when a click dropped it

    def active_seeds(self) -> list[PR.Seed]:
        """The proposal's seeds not dropped by the prompts given so far."""
        n = len(self.prompts)
        return [s for i, s in enumerate(self.seeds) if self.dropped.get(i, n + 1) > n]


@dataclass
class Examples:
    """Feature rows learned from accepted structures, by structure name."""

    positive: dict[str, list[np.ndarray]] = field(default_factory=dict)
    negative: dict[str, list[np.ndarray]] = field(default_factory=dict)
    priors: dict[str, list[PR.Prior]] = field(default_factory=dict)   # newest first

    def add(self, name: str, positive: np.ndarray, negative: np.ndarray, prior: PR.Prior | None = None) -> None:
        self.positive.setdefault(name, []).append(positive)
        self.negative.setdefault(name, []).append(negative)
        if prior is not None:
            self.priors.setdefault(name, []).insert(0, prior)

    def knows(self, name: str) -> bool:
        return bool(self.positive.get(name))


class Session:
    """Answers prompts on one scan at a time; keeps the model and the learned examples."""

    def __init__(self, bundle: LoadedBundle, cache_dir: str | Path | None = None,
                 examples_dir: str | Path | None = None, device: str = "cpu", hidden: int = 0,
                 seed: int = 0, local_edits: bool = False, lazy: bool = True) -> None:
        self.bundle = bundle
        self.lazy = lazy
        self.cache_dir = cache_dir
        self.examples_dir = Path(examples_dir) if examples_dir else None
        self.device = device
        self.hidden = hidden
        self.local_edits = local_edits
        self.seed = seed
        self.rng = np.random.default_rng(seed)   # re-keyed per answer (see `evidence`)
        self.examples = Examples()
        self.image: sitk.Image | None = None
        self.scan_id = ""
        self.scan_path = ""
        self.structures: dict[str, Structure] = {}
        self.current: str | None = None
        # Set by a front end: windows computed for an answer report progress and stop when cancelled.
        self.feature_progress: Callable[[float, str], None] | None = None
        self.cancelled: Callable[[], bool] | None = None

    # ---------------------------------------------------------------- scan
    def open_scan(self, image: sitk.Image, scan_path: str = "",
                  progress: Callable[[float, str], None] | None = None,
                  cancelled: Callable[[], bool] | None = None) -> FeatureVolume:
        """Make `image` the scan; structures start afresh.

        Features come from the cache when complete there; else (lazy) none is computed yet: each
        answer computes the windows it needs (`_features_for`), `compute_features` the rest between
        requests. Not lazy: every window now, as before.
        """
        self.features: LazyFeatures = open_features(image, self.bundle, self.cache_dir, self.device)
        if not self.lazy:
            self.features.finish(progress, cancelled)
        volume = self.features.volume
        self.image = image
        self.scan_path = scan_path
        self.scan_id = volume.key[:16]
        self.volume = volume
        self.hu = sitk.GetArrayFromImage(image).astype(np.float32)
        self.hu_smooth = region.smoothed_hu(self.hu, tuple(image.GetSpacing()[::-1]))
        self.click_regions: dict[str, dict] = {}   # per structure: click -> its grown region
        self.structures = {}
        self.current = None
        self.accepted_input = np.zeros(self.hu.shape, bool)
        self.accepted_model = np.zeros(volume.shape, bool)
        # One draw of weak negatives per scan: redrawing them at every click moved the answer
        # for no reason the user gave (see docs/interactive.md).
        # Keyed by the scan, not drawn from a shared generator: the same after a restart (`draws`).
        self.background = heads.random_background(volume.shape, keyed_rng(self.seed, "background", volume.key),
                                                  np.zeros(0, np.int64), 2 * heads.BACKGROUND_SAMPLES)
        # index -> physical -> model index, one matrix each way (affine grids)
        self._input_to_model = _index_map(image, volume.grid)
        if self.examples_dir is not None:
            self._restore_accepted()
        return volume

    @property
    def table(self) -> heads.FeatureTable:
        """The head's feature table over the whole scan (its features completed first)."""
        return self._table_on(None)

    def _table_on(self, region: WorkingRegion | None) -> heads.FeatureTable:
        """The head's feature table standardised over an answer's working region (None: the whole
        scan), rebuilt only when the region changed: a function of the region, not of the windows
        computed meanwhile (issue 25)."""
        key = None if region is None or region.everything else region.key
        if key is None:
            self.features.finish(self.feature_progress, self.cancelled)
        if getattr(self, "_table_key", None) != (self.volume.key, key):
            self._table = heads.FeatureTable(self.volume, None if key is None else region.mask)
            self._table_key = (self.volume.key, key)
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
        structure.prompts.append(prompt)
        self._drop_seeds(structure, prompt)
        try:
            answer = self.answer(structure)
        except InterruptedError:      # cancelled while computing feature windows: as if never given
            structure.prompts.pop()
            raise
        structure.undone.clear()
        return answer

    def _drop_seeds(self, structure: Structure, prompt: P.Prompt) -> None:
        """A click that says the proposal is in the wrong place removes the proposal's seeds there.

        Negative, in the answer, near a seed (within its depth plus SEED_DROP_MM) and at least 3/4 as
        deep in the answer as the seed was in its candidate region: that seed's part is
        wrong (a user, like the simulated one, clicks the middle of a wrong part; a click on a
        border sliver or a thin leak is shallow and leaves the seed to the region step's split).
        Positive, farther than SEED_DROP_MM from the answer, for a structure that had one part on
        every earlier scan: the proposal found the wrong organ (a neighbour, the other side), so
        all its seeds go and the click starts the structure afresh.
        """
        n = len(structure.prompts)
        for i in [i for i in list(structure.dropped) if structure.dropped[i] >= n]:
            del structure.dropped[i]          # drops of prompts undone and replaced
        if not isinstance(prompt, P.Point) or structure.mask is None or not structure.active_seeds():
            return
        v = np.asarray(self.input_voxel(prompt.lps))
        spacing = np.asarray(self.image.GetSpacing()[::-1])
        live = [i for i, s in enumerate(structure.seeds) if structure.dropped.get(i, n + 1) > n - 1]
        if not prompt.positive:
            if not structure.mask[tuple(v)]:
                return
            reach_mm = max(structure.seeds[i].depth_mm for i in live)
            depth = _depth_at(structure.mask, tuple(int(c) for c in v), spacing, reach_mm)
            for i in live:
                seed = structure.seeds[i]
                if (depth >= 0.75 * seed.depth_mm
                        and np.linalg.norm((v - seed.voxel) * spacing) <= seed.depth_mm + SEED_DROP_MM):
                    structure.dropped[i] = n
            return
        priors = self.examples.priors.get(structure.name, [])
        if not priors or max(p.parts for p in priors) > 1 or structure.mask[tuple(v)]:
            return
        reach = np.ceil(SEED_DROP_MM / spacing).astype(int)
        near = tuple(slice(max(0, int(c - r)), int(c + r + 1)) for c, r in zip(v, reach))
        if not structure.mask[near].any():
            for i in live:
                structure.dropped[i] = n

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
        """An automatic proposal from the examples of earlier scans, or None: a new name, or nothing
        confident where the structure lay before.

        The head trained on the earlier scans' rows says what looks like the structure; the priors
        (where its parts lay in the body, its HU band) pick where: one seed per part (`priors`),
        each then answered as a click would be. A structure too spread in HU for one band (the
        vertebrae's cortical bone and marrow) gets no proposal: the head's alone (Dice 0.70-0.84)
        cost more clicks than none (docs/interactive.md). Examples restored without priors fall
        back to the head's largest component, entered as a segment to refine.
        """
        structure = self.structure(name)
        if not self.examples.knows(structure.name):
            return None
        self.features.finish(self.feature_progress, self.cancelled)   # the head on the examples answers everywhere
        structure.proposal = True
        known = self.examples.priors.get(structure.name, [])
        priors = [p for p in known if PR.growable(p)]
        if known and not priors:
            return None
        if not priors:
            answer = self.answer(structure)
            if structure.prompts or not answer.mask.any():
                return answer
            # Entered as a segment to refine (as a --propose-with model's proposal is): the user's
            # clicks then correct it instead of the head starting over from a negative click alone.
            # That segment is the proposal; undoing it goes back to nothing, not to the head's answer.
            structure.before_prompts = None
            return self.prompt(P.Segment(np.argwhere(answer.mask)), structure.name)
        self.answer(structure)                       # the head on the examples alone
        box = self.volume_box()
        head = resample_logits(structure.logits, self.volume.grid, self.image, np.zeros(3, int),
                               np.asarray(self.image.GetSize()))
        forbidden = self.accepted_input if self.accepted_input.any() else None
        structure.seeds = PR.find_seeds(priors, head, self.hu_smooth, self.image, box, forbidden)
        structure.dropped = {}
        if not structure.seeds:
            structure.proposal = False
            structure.mask, structure.logits = None, None
            structure.history.clear()
            structure.before_prompts = None
            return None
        return self.answer(structure)

    def volume_box(self) -> tuple[np.ndarray, np.ndarray]:
        """The body's bounding box on this scan (LPS), computed once per scan."""
        if getattr(self, "_body_box_of", None) != self.scan_id:
            self._body_box = PR.body_box(self.hu_smooth, self.image)
            self._body_box_of = self.scan_id
        return self._body_box

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
        model_mask = self.model_mask(structure.mask)
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
    def model_mask(self, mask_zyx: np.ndarray) -> np.ndarray:
        """An input-grid mask on the model grid (a model voxel is in when most of it is)."""
        return model_mask_on(mask_zyx, self.image, self.volume.grid)

    def model_voxels(self, input_zyx: np.ndarray) -> np.ndarray:
        """Model-grid voxels (X, Y, Z) nearest to input voxels (z, y, x)."""
        xyz1 = np.c_[np.asarray(input_zyx)[:, ::-1], np.ones(len(input_zyx))]
        idx = np.round(xyz1 @ self._input_to_model.T).astype(int)
        return np.clip(idx, 0, np.asarray(self.volume.shape) - 1)

    def input_voxel(self, lps) -> tuple[int, int, int]:
        x, y, z = P.inside_index(self.image, lps)
        return (z, y, x)

    def evidence(self, structure: Structure) -> tuple[heads.Evidence, list[tuple[int, int, int]], tuple | None]:
        shape = self.volume.shape
        # This answer's draws are keyed by the scan and the prompt count, not drawn from a generator
        # shared with everything before: a replay draws the same, and so do equal prompts (`draws`).
        self.rng = keyed_rng(self.seed, "answer", self.scan_id, len(structure.prompts))
        ev = heads.Evidence()
        self._positive_model, self._negative_model = [], []
        anchors: list[tuple[int, int, int]] = []
        negative_model: list[np.ndarray] = []
        box = None
        n_positive_clicks = 0
        for seed in structure.active_seeds():   # the proposal's own clicks count as positive clicks
            m = self.model_voxels(np.asarray([seed.voxel]))
            ev.add(heads.ball_indices(shape, m), 1, 1.0)
            self._positive_model.append(m)
            anchors.append(seed.voxel)
            n_positive_clicks += 1
        for p in structure.prompts:
            if isinstance(p, P.Point):
                v = self.input_voxel(p.lps)
                m = self.model_voxels(np.asarray([v]))
                ev.add(heads.ball_indices(shape, m), int(p.positive), 1.0)
                (self._positive_model if p.positive else self._negative_model).append(m)
                if p.positive:
                    anchors.append(v)
                    n_positive_clicks += 1
                else:
                    negative_model.append(m)
            elif isinstance(p, P.Scribble):
                if len(p.positive):
                    ev.add(np.ravel_multi_index(self.model_voxels(p.positive).T, shape), 1, 2.0)
                    anchors += [tuple(int(c) for c in v) for v in p.positive[:: max(1, len(p.positive) // 20)]]
                    self._positive_model.append(self.model_voxels(p.positive))
                if len(p.negative):
                    m = self.model_voxels(p.negative)
                    self._negative_model.append(m)
                    ev.add(np.ravel_multi_index(m.T, shape), 0, 2.0)
                    negative_model.append(m)
            elif isinstance(p, P.Segment):
                m = np.unique(np.ravel_multi_index(self.model_voxels(p.voxels).T, shape))
                ev.add(self.rng.choice(m, size=min(len(m), 3000), replace=False), 1, 2.0)
                anchors += [tuple(int(c) for c in v) for v in p.voxels[:: max(1, len(p.voxels) // 20)]]
            elif isinstance(p, P.Box):
                box = (np.asarray(p.lower), np.asarray(p.upper))
                inside = np.zeros(shape, bool)
                corners = np.asarray([[x, y, z] for x in (box[0][0], box[1][0] - 1) for y in (box[0][1], box[1][1] - 1)
                                      for z in (box[0][2], box[1][2] - 1)])
                m = self.model_voxels(corners[:, ::-1])
                lo, hi = m.min(0), m.max(0) + 1
                inside[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
                outside = np.flatnonzero(~inside.ravel())
                if outside.size:
                    ev.add(self.rng.choice(outside, size=min(outside.size, 4000), replace=False), 0, 1.0)
                centre = (lo + hi) // 2
                if not any(isinstance(q, P.Point) and q.positive for q in structure.prompts):
                    ev.add(heads.ball_indices(shape, centre[None]), 1, 0.5)
        if self.accepted_model.any():
            finished = np.flatnonzero(self.accepted_model.ravel())
            ev.add(self.rng.choice(finished, size=min(finished.size, heads.FINISHED_SAMPLES), replace=False), 0, 1.0)
        previous = structure.logits
        if previous is not None and structure.mask is not None and heads.PREVIOUS_WEIGHT > 0:
            keep = previous > 0
            for m in negative_model:
                near = np.zeros(shape, bool)
                near[tuple(m.T)] = True
                keep &= ~ndimage.binary_dilation(near, iterations=3)
            idx = np.flatnonzero(keep.ravel())
            if idx.size:
                ev.add(self.rng.choice(idx, size=min(idx.size, heads.PREVIOUS_SAMPLES), replace=False), 1,
                       heads.PREVIOUS_WEIGHT * max(1, n_positive_clicks))
        exclude = np.concatenate(ev.index) if ev.index else np.zeros(0, np.int64)
        total_positive = sum(float(w.sum()) for w, lab in zip(ev.weight, ev.label) if lab[0] == 1)
        background = self.background[~np.isin(self.background, exclude)][:heads.BACKGROUND_SAMPLES]
        ev.add(background, 0, heads.BACKGROUND_WEIGHT * max(total_positive, 1.0))
        return ev, anchors, box

    def answer(self, structure: Structure) -> Answer:
        """Train the head on the structure's evidence (and learned examples) and sharpen its answer."""
        region = self._working_region(structure)
        ev, anchors, box = self.evidence(structure)
        extra = None
        if self.examples.knows(structure.name):
            pos = np.concatenate(self.examples.positive[structure.name])
            neg = np.concatenate(self.examples.negative[structure.name])
            extra = (pos, neg)
        if not ev.has(1) and extra is None:
            structure.mask = np.zeros(self.hu.shape, bool)
            structure.logits = np.full(self.volume.shape, -10.0, np.float32)
            return Answer(structure.mask, np.zeros(self.volume.shape, np.float32), None, None)
        stack = lambda parts: np.concatenate(parts) if parts else np.zeros((0, 3), int)  # noqa: E731
        if extra is not None:  # rows of other scans lie far from this scan's prompts
            extra = tuple(heads.far_from_prompts(rows) for rows in extra)
        while True:
            table = self._table_on(region).with_distances(stack(self._positive_model), stack(self._negative_model),
                                                          tuple(self.volume.grid.GetSpacing()))
            head = heads.fit_head(table, ev.within(region.mask), hidden=self.hidden, extra=extra)
            logits = heads.predict(table, head, self.volume.shape)
            if region.everything:
                break
            logits[~region.mask] = -10.0
            # The head's answer reaching the region's edge: add the windows there and answer again,
            # so the answer is never cut off where the region ends (whatever was computed meanwhile).
            edge = self._edge_of_answer(logits, region.mask)
            if not len(edge) or not region.grow(edge):
                break
        mask = full_resolution_mask(logits, self.volume.grid, self.image, self.hu, anchors,
                                    self.accepted_input if self.accepted_input.any() else None,
                                    allowed_box=box)
        mask = self._combined(structure, mask, box)
        last = structure.prompts[-1] if structure.prompts else None
        previous = structure.history[len(structure.prompts) - 2][0] if len(structure.prompts) >= 2 else None
        if self.local_edits and isinstance(last, P.Point) and previous is not None:
            mask = local_edit(previous, mask, self.input_voxel(last.lps), last.positive)
        structure.mask, structure.logits = mask, logits
        if structure.prompts:
            del structure.history[len(structure.prompts) - 1:]
            structure.history.append((mask, logits))
        else:   # an answer without prompts (a proposal): what undo of the first prompt returns to
            structure.before_prompts = (mask, logits)
        uncertainty, click, positive = uncertainty_and_next_click(logits, self.volume.grid)
        return Answer(mask, uncertainty, click, positive)

    def _working_region(self, structure: Structure) -> WorkingRegion:
        """The model voxels the answer may use: settled by the windows holding the structure's prompts
        (computed now if lazy), the same set whether other windows are in or not (`features`);
        the whole scan for an answer without prompts or seeds (a proposal from examples alone)."""
        voxels = [self.model_voxels(np.asarray([s.voxel])) for s in structure.active_seeds()]
        for p in structure.prompts:
            if isinstance(p, P.Point):
                voxels.append(self.model_voxels(np.asarray([self.input_voxel(p.lps)])))
            elif isinstance(p, P.Scribble):
                voxels += [self.model_voxels(v) for v in (p.positive, p.negative) if len(v)]
            elif isinstance(p, P.Segment):
                voxels.append(self.model_voxels(p.voxels))
            elif isinstance(p, P.Box):
                lower, upper = np.asarray(p.lower), np.asarray(p.upper) - 1
                corners = np.asarray([[x, y, z] for x in (lower[0], upper[0]) for y in (lower[1], upper[1])
                                      for z in (lower[2], upper[2])])
                m = self.model_voxels(corners[:, ::-1])
                axes = [np.linspace(a, b, max(2, (b - a) // 16 + 2)).round().astype(int)
                        for a, b in zip(m.min(0), m.max(0))]
                voxels.append(np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3))
        return self.features.working_region(np.concatenate(voxels) if voxels else None,
                                            self.feature_progress, self.cancelled)

    def _edge_of_answer(self, logits: np.ndarray, within: np.ndarray | None = None) -> np.ndarray:
        """Model voxels outside `within` (default: without features) next to the head's candidate
        region (the part the full-resolution step would keep: components at the positive prompts)."""
        candidates = logits > CANDIDATE_LOGIT
        labelled, count = ndimage.label(candidates)
        if count == 0:
            return np.zeros((0, 3), int)
        positives = [m for m in self._positive_model if len(m)]
        keep = np.unique(labelled[tuple(np.concatenate(positives).T)]) if positives else np.arange(1, count + 1)
        keep = keep[keep > 0]
        if not keep.size:
            return np.zeros((0, 3), int)
        region = np.isin(labelled, keep)
        outside = ~(self.features.covered if within is None else within)
        edge = ndimage.binary_dilation(region, iterations=2) & outside
        return np.argwhere(edge)

    def _combined(self, structure: Structure, head_mask: np.ndarray, box: tuple | None) -> np.ndarray:
        """The head's answer united with the clicks' grown regions (`region.combined`)."""
        points = [p for p in structure.prompts if isinstance(p, P.Point)]
        positives = [self.input_voxel(p.lps) for p in points if p.positive]
        negatives = [self.input_voxel(p.lps) for p in points if not p.positive]
        forbidden = self.accepted_input if self.accepted_input.any() else None
        spacing = tuple(self.image.GetSpacing()[::-1])
        priors = [p for p in self.examples.priors.get(structure.name, []) if PR.growable(p)]
        if priors:   # a known structure: a border click grows from the structure's tissue beside it
            positives = [PR.snapped(v, priors[0], self.hu_smooth, spacing, forbidden) for v in positives]
            head_mask = head_mask & PR.in_span(self.hu_smooth, priors[0])
        positives = [s.voxel for s in structure.active_seeds()] + positives
        for name in [n for n, s in self.structures.items() if s.accepted and n in self.click_regions]:
            del self.click_regions[name]   # a full-grid mask per click: keep them only while in use
        cache = self.click_regions.setdefault(structure.name, {})
        previous = structure.history[len(structure.prompts) - 2][0] if len(structure.prompts) >= 2 else None
        pieces = region.first_shell(self.hu_smooth, spacing, cache, positives, forbidden)
        if box is not None and pieces is not None:
            pieces = pieces.copy()
            pieces[~_box_mask(pieces.shape, box)] = 0
        grown = region.grown_answer(self.hu_smooth, spacing, cache, positives, negatives,
                                    forbidden, previous, pieces, head_mask)
        if box is not None:
            grown &= _box_mask(grown.shape, box)
        out = region.combined(head_mask, grown, self.hu_smooth, spacing, positives, negatives, pieces is not None)
        return out & ~forbidden if forbidden is not None else out   # accepted work is never overwritten

    # ---------------------------------------------------------------- learning from the user
    def _keep_example(self, structure: Structure, model_mask: np.ndarray) -> None:
        rows = example_rows(self.table, model_mask, keyed_rng(self.seed, "examples", self.scan_id, structure.name))
        if rows is None:
            return
        self.examples.add(structure.name, *rows, PR.prior_of(structure.mask, self.hu_smooth, self.image,
                                                             self.volume_box()))
        if self.examples_dir is not None:
            write_accepted(self.examples_dir, self.scan_id, self.scan_path, structure.name, structure.value,
                           structure.mask, self.image, self.bundle.manifest.name, self.encoder_sha256)

    @property
    def encoder_sha256(self) -> str:
        """The encoder's digest (recorded with each example, so other encoders' examples are refused)."""
        if not hasattr(self, "_encoder_sha256"):
            self._encoder_sha256 = encoder_digest(self.bundle.network)
        return self._encoder_sha256

    def restore_examples(self, progress: Callable[[float, str], None] | None = None,
                         cancelled: Callable[[], bool] | None = None) -> int:
        """Reload the examples accepted by earlier processes (once per process; see `accepted`)."""
        if self.examples_dir is None or self._examples_restored:
            return 0
        count = 0
        for name, positive, negative, prior in earlier_example_rows(self.examples_dir, self.bundle, self.cache_dir,
                                                             self.device, self.encoder_sha256, self.seed,
                                                             progress, cancelled):
            self.examples.add(name, positive, negative, prior)
            count += 1
        self._examples_restored = True
        return count

    _examples_restored = False


def _depth_at(mask: np.ndarray, voxel: tuple[int, int, int], spacing: np.ndarray, reach_mm: float) -> float:
    """How deep (mm) `voxel` lies in `mask`, measured up to `reach_mm` (a box around it, not the whole grid)."""
    reach = np.ceil(reach_mm / spacing).astype(int) + 1
    box = tuple(slice(max(0, c - r), c + r + 1) for c, r in zip(voxel, reach))
    local = mask[box]
    if local.all():
        return float(reach_mm)
    depth = ndimage.distance_transform_edt(local, sampling=spacing)
    return float(min(depth[tuple(c - b.start for c, b in zip(voxel, box))], reach_mm))


def _box_mask(shape: tuple[int, ...], box: tuple) -> np.ndarray:
    """The box prompt's voxels (input grid, z y x) as a mask."""
    inside = np.zeros(shape, bool)
    inside[tuple(slice(int(a), int(b)) for a, b in zip(box[0][::-1], box[1][::-1]))] = True
    return inside


def _index_map(image: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """3x4 matrix taking an input voxel index (x, y, z, 1) to a model-grid continuous index."""
    def affine(img: sitk.Image) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
        m[:3, 3] = img.GetOrigin()
        return m
    return (np.linalg.inv(affine(grid)) @ affine(image))[:3]


