"""Automatic proposals from a segmentation bundle, e.g. one taught with `coralbay teach`.

Why: after Teach model, the next scan should start from what the model learned, and the user only
corrects it. When the session is given such a bundle (`coralbay interact --propose-with M`), a
structure started with a name in the bundle's label table begins with the bundle's segmentation
of that structure, entered as an existing segment to refine (the same prompt a user gives with a
segment of their own), so every later click corrects it. The scan is segmented once (all its
structures) and the label map kept for the scan in hand. The model's mask comes from its coarser
grid, so its border is first moved onto the scan's own edges by up to one model voxel
(`graphcut.refine_border`): on the development phantoms that took a taught model's proposals
from Dice 0.84 to 0.90 and the clicks to Dice 0.90 from 6.8 to 2.5 (docs/interactive.md).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from coralbay.interactive import graphcut as G
from coralbay.interactive import prompts as P
from coralbay.interactive.engine import LoadedBundle, UsageError, segment_image
from coralbay.interactive.messages import ProposedBy


class ModelProposals:
    def __init__(self, bundle: LoadedBundle, device: torch.device | str = "cpu") -> None:
        if not len(bundle.manifest.labels):
            raise UsageError(f"The model {bundle.manifest.name} does not segment structures; proposals need a "
                             "segmentation model.")
        self.bundle = bundle
        self.device = torch.device(device)
        self._scan: str | None = None
        self._labels: np.ndarray | None = None

    @property
    def border_mm(self) -> float:
        """How far the model's border may be from the structure's: one voxel of its grid."""
        return float(max(self.bundle.manifest.preprocessing.spacing_mm))

    @property
    def name(self) -> str:
        return self.bundle.manifest.name

    def knows(self, structure: str) -> bool:
        return self.bundle.manifest.labels.by_name(structure) is not None

    def mask(self, image: sitk.Image, scan_id: str, structure: str) -> np.ndarray | None:
        """The bundle's mask of `structure` on the scan's grid (z, y, x), or None if it has none there."""
        label = self.bundle.manifest.labels.by_name(structure)
        if label is None:
            return None
        if self._scan != scan_id or self._labels is None:
            result = segment_image(image, self.bundle, self.device)
            self._labels, self._scan = sitk.GetArrayFromImage(result.labels), scan_id
        mask = self._labels == label.value
        return mask if mask.any() else None


def first_answer(session, proposals: ModelProposals | None, name: str):
    """The answer a structure starts from, and where it came from: the --propose-with model's mask,
    its border refined, when the model knows the name and finds it on this scan (entered as a
    segment to refine, so every click corrects it), else the proposal from the accepted examples;
    (None, None) when neither has one. Why here: which proposal wins is the session's rule, not the protocol's."""
    if proposals is not None and proposals.knows(name):
        mask = proposals.mask(session.image, session.scan_id, name)
        if mask is not None:
            forbidden = session.accepted_input if session.accepted_input.any() else None
            mask = G.refine_border(session.hu, session.spacing_zyx, mask, proposals.border_mm, forbidden)
        if mask is not None and mask.any():
            return session.prompt(P.segment_from_array(session.image, mask.astype(np.uint8)), name), proposals.name
    answer = session.propose(name)
    return (answer, ProposedBy.EXAMPLES.value) if answer is not None else (None, None)
