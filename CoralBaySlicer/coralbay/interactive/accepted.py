"""Accepted structures outlive the engine process: the feature rows they teach, and their restore.

Why: the Slicer module restarts a session whose process died, and a user expects the structures
they accepted to still be there and still to count. The masks are on disk (`coralbay.io.examples`);
this module turns them back into what a live session holds: the accepted masks of the scan being
opened (finished structures, negative evidence for the next), and the feature rows of every earlier
scan's accepted structures (cross-scan examples; the scan's features come from the feature cache
keyed by scan content, recomputed when missing). Examples of another encoder are skipped with a
warning: their feature rows would live in another space.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from scipy import ndimage

from coralbay.interactive import head as heads
from coralbay.interactive.draws import keyed_rng
from coralbay.interactive.engine import CoralBayError, LoadedBundle, read_volume
from coralbay.interactive.features import scan_features
from coralbay.interactive.scan_grids import model_mask_on
from coralbay.io.example_masks import read_mask
from coralbay.io.examples import ExampleScan, read_example_scan, read_examples

log = logging.getLogger("coralbay.interactive")

EXAMPLE_ROWS = 4000      # positive rows kept per accepted structure (and as many negatives)


@dataclass(frozen=True)
class RestoredStructure:
    name: str
    value: int
    mask: np.ndarray      # bool (z, y, x) on the scan's grid


def example_rows(table: heads.FeatureTable, model_mask: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """Feature rows of a structure (inside) and of its surroundings (a ring around it and far voxels)."""
    inside = np.flatnonzero(model_mask.ravel())
    if inside.size == 0:
        return None
    ring = ndimage.binary_dilation(model_mask, iterations=3) & ~model_mask
    around = np.flatnonzero(ring.ravel())
    far = heads.random_background(model_mask.shape, rng, inside, EXAMPLE_ROWS)
    pick = rng.choice(inside, size=min(inside.size, EXAMPLE_ROWS), replace=False)
    near = rng.choice(around, size=min(around.size, EXAMPLE_ROWS // 2), replace=False) if around.size else around
    rows = table.table.numpy()
    return rows[pick].copy(), rows[np.concatenate([near, far[:EXAMPLE_ROWS // 2]])].copy()


def _same_encoder(scan: ExampleScan, encoder_sha256: str) -> bool:
    if scan.encoder_sha256 is None or scan.encoder_sha256 == encoder_sha256:
        return True
    log.warning("Skipped the examples in %s: they were accepted with another encoder (model %s).",
                scan.folder, scan.model_name or "unknown")
    return False


def accepted_on_scan(examples_dir: str | os.PathLike, scan_id: str, shape_zyx: tuple[int, ...],
                     encoder_sha256: str) -> list[RestoredStructure]:
    """The structures accepted earlier on the scan `scan_id` (masks that fit its grid), by value."""
    folder = Path(examples_dir) / scan_id
    if not (folder / "example.json").is_file():
        return []
    scan = read_example_scan(folder)
    if not _same_encoder(scan, encoder_sha256):
        return []
    found = []
    for structure in scan.structures:
        mask = read_mask(structure)
        if mask.shape != tuple(shape_zyx):
            log.warning("Skipped the accepted %s in %s: its mask does not fit the scan.", structure.name, folder)
            continue
        found.append(RestoredStructure(structure.name, structure.value, mask))
    return sorted(found, key=lambda s: s.value)


def earlier_example_rows(examples_dir: str | os.PathLike, bundle: LoadedBundle, cache_dir, device: str,
                         encoder_sha256: str, seed: int,
                         progress: Callable[[float, str], None] | None = None,
                         cancelled: Callable[[], bool] | None = None
                         ) -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
    """(structure name, scan id, positive rows, negative rows) of every accepted structure
    under `examples_dir`.

    A scan that can no longer be read (moved, deleted) is skipped with a warning: its masks stay on
    disk, only its rows are missing from this session.
    """
    scans = [s for s in read_examples(examples_dir) if s.structures and _same_encoder(s, encoder_sha256)]
    for i, scan in enumerate(scans):
        if progress:
            progress(i / max(1, len(scans)), f"examples of scan {scan.scan_id}")
        try:
            image = read_volume(scan.scan)
        except CoralBayError:
            log.warning("Skipped the examples in %s: their scan %s cannot be read.", scan.folder, scan.scan or "?")
            continue
        volume = scan_features(image, bundle, cache_dir, device, cancelled=cancelled)
        table = heads.FeatureTable(volume)
        shape = tuple(image.GetSize())[::-1]
        for structure in scan.structures:
            mask = read_mask(structure)
            if mask.shape != shape:
                continue
            # keyed as the live session keys them when the structure is accepted: the same rows
            rows = example_rows(table, model_mask_on(mask, image, volume.grid),
                                keyed_rng(seed, "examples", scan.scan_id, structure.name))
            if rows is not None:
                yield (structure.name, scan.scan_id, *rows)
    if progress:
        progress(1.0, f"examples of {len(scans)} earlier scan(s)")
