"""Slicer's Grow from seeds as a baseline of `coralbay eval-interactive` (imports slicer-core, so it
lives here, outside the engine; `register()` adds it to the engine's baseline registry).

Configured as Slicer's Segment Editor effect configures it (SegmentEditorGrowFromSeedsEffect.py,
whose filter was `vtkImageGrowCutSegment` up to Slicer 5.2 and ITK's FastGrowCut, the same
fast grow-cut method, since; slicer-core ships `vtkImageGrowCutSegment`):
- intensity volume: the source volume's own scalars (HU, no window), clipped to the working region;
- seed label volume: one label per segment (1 = the structure, 2 = background), from
  `coralbay.interactive.baselines.seed_region` (box outside = background, clicks as balls, the
  region = the seeds' extent grown by 20 % per side, as the effect's `extentGrowthRatio`);
- no mask volume (the editable area "everywhere"); distance penalty = "Seed locality" 0.0, the
  effect's default; a fresh filter per answer (the effect's incremental update gives the same
  labels for added seeds; fresh keeps every answer independent of the order of evaluation).
"""

from __future__ import annotations

import numpy as np

from coralbay.interactive import baselines as B


def _image_data(array_zyx: np.ndarray, spacing_zyx: tuple[float, float, float]):
    import vtk
    from vtk.util import numpy_support

    data = vtk.vtkImageData()
    data.SetDimensions(*array_zyx.shape[::-1])
    data.SetSpacing(*spacing_zyx[::-1])
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(array_zyx).ravel(), deep=True)
    data.GetPointData().SetScalars(scalars)
    return data


def grow_from_seeds(hu_zyx: np.ndarray, spacing_zyx: tuple[float, float, float], prompts: B.Prompts) -> np.ndarray:
    """Slicer's Grow from seeds' answer for these prompts (bool mask on the input grid)."""
    import slicer
    from vtk.util import numpy_support

    out = np.zeros(hu_zyx.shape, bool)
    seeded = B.seed_region(hu_zyx.shape, spacing_zyx, prompts)
    if seeded is None or not (seeded.seeds == B.FOREGROUND).any():
        return out   # Slicer refuses to grow with fewer than two segments seeded
    grow = slicer.vtkImageGrowCutSegment()
    grow.SetIntensityVolume(_image_data(hu_zyx[seeded.region].astype(np.float32), spacing_zyx))
    grow.SetSeedLabelVolume(_image_data(seeded.seeds.astype(np.int16), spacing_zyx))
    grow.SetDistancePenalty(0.0)
    grow.Update()
    labels = numpy_support.vtk_to_numpy(grow.GetOutput().GetPointData().GetScalars()).reshape(seeded.seeds.shape)
    out[seeded.region] = labels == B.FOREGROUND
    return out


def register() -> None:
    """Add "grow-from-seeds" to the engine's baselines (fails here, with the reason, without slicer-core)."""
    import slicer  # noqa: F401  (the one dependency this baseline adds)

    B.register_baseline("grow-from-seeds", grow_from_seeds)
