"""The interactive method's core (`graphcut.solve`) on small synthetic volumes with CT-like noise:
the required behaviour holds by construction and is checked here voxel for voxel (a positive click
never removes, a negative click never adds, edits stay near the click, the box is hard, the same
prompts give the same mask), and a box alone finds a blob its intensity and edges set apart.
"""

from __future__ import annotations

import numpy as np
import pytest

from coralbay.interactive import graphcut as G
from coralbay.interactive import simulate as S

SPACING = (3.0, 1.0, 1.0)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def scan() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Muscle-like background (40 HU), an ellipsoid 'tumour' (70 HU) touching a same-HU neighbour
    blob, fat (-100 HU) in a corner, noise SD 12 HU."""
    z, y, x = np.mgrid[0:20, 0:64, 0:64]
    tumour = ((z - 10) * 3.0) ** 2 / 18 ** 2 + (y - 30) ** 2 / 14 ** 2 + (x - 28) ** 2 / 12 ** 2 <= 1
    neighbour = ((z - 10) * 3.0) ** 2 / 15 ** 2 + (y - 30) ** 2 / 8 ** 2 + (x - 48) ** 2 / 8 ** 2 <= 1
    hu = np.full(z.shape, 40.0)
    hu[y > 56] = -100.0
    hu[tumour | neighbour] = 70.0
    hu += np.random.default_rng(3).normal(0, 12, hu.shape)
    return hu.astype(np.float32), tumour, neighbour


def _box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    where = np.argwhere(mask)
    return where.min(0), where.max(0) + 1


def test_a_box_alone_finds_the_blob_and_stays_inside_the_box(scan):
    hu, tumour, _ = scan
    box = _box(tumour)
    mask = G.solve(hu, SPACING, G.Prompts(box=box))
    assert _dice(mask, tumour) > 0.85
    inside = np.zeros(mask.shape, bool)
    inside[tuple(slice(a, b) for a, b in zip(*box))] = True
    assert not (mask & ~inside).any()                      # the box is a hard constraint


def test_clicks_only_add_or_only_remove_and_stay_local(scan):
    hu, tumour, neighbour = scan
    prompts = G.Prompts(clicks=[G.Click((10, 30, 28), True)])
    first = G.solve(hu, SPACING, prompts)
    assert first[10, 30, 28] and _dice(first, tumour) > 0.5
    previous = first
    for _ in range(4):   # the simulated user's clicks on the largest error
        error = (tumour & ~previous) | (previous & ~tumour)
        if not error.any():
            break
        click_zyx = S.deepest_point(_largest(error), SPACING)
        click = G.Click(click_zyx, bool(tumour[click_zyx]))
        prompts.clicks.append(click)
        answer = G.solve(hu, SPACING, prompts, previous, last=click)
        if click.positive:
            assert not (previous & ~answer).any() and answer[click_zyx]
        else:
            assert not (answer & ~previous).any() and not answer[click_zyx]
        changed = np.argwhere(answer != previous)
        if len(changed):   # only inside the click's window
            distance = G.distance_to_border(previous, click_zyx, np.asarray(SPACING), G.DEPTH_CAP_MM)
            window = G.click_window(hu.shape, np.asarray(SPACING), click, distance)
            assert all(all(s.start <= c < s.stop for c, s in zip(v, window)) for v in changed)
        # the same prompts and previous answer give the same mask
        assert np.array_equal(answer, G.solve(hu, SPACING, prompts, previous, last=click))
        previous = answer
    assert _dice(previous, tumour) >= _dice(first, tumour) - 0.02


def test_accepted_structures_are_never_taken(scan):
    hu, tumour, neighbour = scan
    mask = G.solve(hu, SPACING, G.Prompts(box=_box(tumour | neighbour)), forbidden=neighbour)
    assert mask.any() and not (mask & neighbour).any()


def test_no_positive_prompt_gives_nothing(scan):
    hu, _, _ = scan
    assert not G.solve(hu, SPACING, G.Prompts(clicks=[G.Click((5, 5, 5), False)])).any()


def _largest(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage
    labelled, count = ndimage.label(mask)
    return labelled == 1 + int(np.argmax(np.bincount(labelled.ravel())[1:]))


def test_a_large_region_is_cut_coarse_then_exactly_in_a_band_with_the_same_answer(scan, monkeypatch):
    """Above COARSE_ABOVE_VOXELS a fresh answer is solved on block means, then exactly in a band
    around that border (the clinical-size first answer): the box stays hard, accepted structures
    stay untouched, and the answer agrees with the single full-resolution cut."""
    hu, tumour, neighbour = scan
    box = _box(tumour | neighbour)
    full = G.solve(hu, SPACING, G.Prompts(box=_box(tumour)), forbidden=neighbour)
    monkeypatch.setattr(G, "COARSE_ABOVE_VOXELS", 5_000)
    monkeypatch.setattr(G, "COARSE_VOXELS", 2_000)
    called = []
    band_cut = G._band_cut
    monkeypatch.setattr(G, "_band_cut", lambda *a, **k: called.append(1) or band_cut(*a, **k))
    banded = G.solve(hu, SPACING, G.Prompts(box=_box(tumour)), forbidden=neighbour)
    assert called, "the coarse path did not run"
    assert _dice(banded, full) > 0.95 and _dice(banded, tumour) > 0.85
    inside = np.zeros(hu.shape, bool)
    inside[tuple(slice(a, b) for a, b in zip(*_box(tumour)))] = True
    assert not (banded & ~inside).any() and not (banded & neighbour).any()
    clicked = G.solve(hu, SPACING, G.Prompts(box=box, clicks=[G.Click((10, 30, 48), False)]))
    assert not clicked[10, 30, 48]                          # a negative click stays background


def test_a_model_mask_s_border_moves_onto_the_scan_s_edges_within_its_band(scan):
    """`refine_border` (a taught model's proposal): a blocky mask from a coarse grid, shifted by a
    voxel, comes closer to the structure; no voxel farther than the band from the mask's border
    changes; accepted structures stay untouched; the same mask gives the same answer."""
    hu, tumour, neighbour = scan
    coarse = tumour[::1, ::4, ::4].repeat(4, 1).repeat(4, 2)[:, :64, :64]   # a 4 mm grid's staircase
    blocky = np.roll(coarse, 1, axis=2)
    band_mm = 4.0
    refined = G.refine_border(hu, SPACING, blocky, band_mm, forbidden=neighbour)
    assert _dice(refined, tumour) > _dice(blocky, tumour) + 0.03
    from scipy import ndimage
    depth = ndimage.distance_transform_edt(blocky, sampling=SPACING)
    distance = ndimage.distance_transform_edt(~blocky, sampling=SPACING)
    assert refined[depth > band_mm].all() and not refined[distance > band_mm].any()
    assert not (refined & neighbour).any()
    assert np.array_equal(refined, G.refine_border(hu, SPACING, blocky, band_mm, forbidden=neighbour))
    assert not G.refine_border(hu, SPACING, np.zeros_like(blocky), band_mm).any()


def test_a_refinement_that_replaces_the_structure_keeps_the_model_s_mask(scan, monkeypatch):
    """Below REFINE_AGREEMENT (Dice with the model's mask) the cut found another structure rather
    than moved a border: the model's mask is kept, still never taking an accepted structure."""
    hu, tumour, neighbour = scan
    blocky = np.roll(tumour[:, ::4, ::4].repeat(4, 1).repeat(4, 2)[:, :64, :64], 1, axis=2)
    moved = G.refine_border(hu, SPACING, blocky, 4.0, forbidden=neighbour)
    agreement = _dice(moved, blocky)
    assert 0.5 < agreement < 1.0              # the default keeps this border move
    monkeypatch.setattr(G, "REFINE_AGREEMENT", agreement + 0.01)
    kept = G.refine_border(hu, SPACING, blocky, 4.0, forbidden=neighbour)
    assert np.array_equal(kept, blocky & ~neighbour)
