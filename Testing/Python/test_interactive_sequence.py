"""Across scans: a structure accepted on one scan is proposed on the next from the examples kept
(the head trained on the earlier scan's feature rows), the answer before any prompt, which the
user's clicks then edit locally like any answer.

Two small phantoms (3 mm) stored in different orientations; the demo encoder, in process (no
subprocess: the session's own rules are tested).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from coralbay.bundle.loader import load_bundle
from coralbay.interactive import prompts as P
from coralbay.interactive import simulate as S
from coralbay.interactive.engine import UsageError
from coralbay.interactive.session import Session
from coralbay.phantom import generate_phantom

KIDNEY_LEFT = 3


def _scan(seed: int, direction: str) -> tuple[sitk.Image, np.ndarray]:
    ph = generate_phantom(seed, spacing=3.0, size_mm=(180, 150, 120), lesions=False, direction=direction)
    return ph.image, sitk.GetArrayFromImage(ph.labels)


@pytest.fixture(scope="module")
def session_after_one_scan(tmp_path_factory) -> tuple[Session, sitk.Image, np.ndarray]:
    """A session that accepted the left kidney (as drawn by the reference) on a first scan, then opened a second."""
    session = Session(load_bundle("demo-phantom-seg"), cache_dir=tmp_path_factory.mktemp("cache"))
    image, labels = _scan(10007, "LPS")
    session.open_scan(image, "first")
    session.start("kidney_left", KIDNEY_LEFT)
    session.prompt(P.segment_from_array(image, (labels == KIDNEY_LEFT).astype(np.uint8)))
    session.accept("kidney_left")
    second, second_labels = _scan(10008, "RAI")                 # other organs' sizes, another orientation
    session.open_scan(second, "second")
    return session, second, second_labels


def test_a_known_structure_is_proposed_and_edited_locally(session_after_one_scan):
    session, image, labels = session_after_one_scan
    spacing = tuple(image.GetSpacing()[::-1])
    structure = session.start("kidney_left", KIDNEY_LEFT)
    proposal = session.propose("kidney_left")
    assert proposal is not None and proposal.mask.any()
    assert not structure.prompts and structure.proposal and structure.before_prompts is not None
    reference = labels == KIDNEY_LEFT
    assert S.dice(proposal.mask, reference) > 0.2    # it found the kidney's tissue, not an empty or random mask
    # a negative click in the largest false part removes only the part it points at
    extra = proposal.mask & ~reference
    if extra.any():
        click = S.deepest_point(extra, spacing)
        lps = image.TransformIndexToPhysicalPoint([int(v) for v in click[::-1]])
        edited = session.prompt(P.point(image, lps, False)).mask
        assert not (edited & ~proposal.mask).any()            # a negative click never adds
        assert not edited[click]
        session.undo()
    # a positive click in the largest missed part adds, never removes
    missed = reference & ~proposal.mask
    click = S.deepest_point(missed, spacing)
    lps = image.TransformIndexToPhysicalPoint([int(v) for v in click[::-1]])
    edited = session.prompt(P.point(image, lps, True)).mask
    assert not (proposal.mask & ~edited).any() and edited[click]
    # undo: back to the proposal, which no prompt made (nothing more to undo)
    assert np.array_equal(session.undo().mask, proposal.mask)
    with pytest.raises(UsageError):
        session.undo()


def test_an_unknown_structure_gets_no_proposal(session_after_one_scan):
    session, _, _ = session_after_one_scan
    session.start("spleen-never-accepted", 40)
    assert session.propose("spleen-never-accepted") is None
