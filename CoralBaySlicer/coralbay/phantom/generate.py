"""`generate_phantom` and `write_phantom`: the public API of the phantom package."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import SimpleITK as sitk

from coralbay.atomic import write_text_atomic
from coralbay.errors import UsageError
from coralbay.io.labels import label_table_path_for
from coralbay.io.volumes import check_output_path, write_image
from coralbay.phantom.anatomy import _sample_anatomy, _sample_lesions
from coralbay.phantom.render import _grid, _parse_direction, _random_direction, _render
from coralbay.phantom.shapes import _GridCanvas, _blob
from coralbay.phantom.tissues import (DEFAULT_NOISE_HU, LESION_HYPODENSITY_HU, PHANTOM_LABELS, Phantom,
                                      TISSUES, TISSUE_ID)

# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def generate_phantom(seed: int, *, spacing=None, size_mm=None, direction=None,
                     lesions: bool | None = None, noise_hu: float = DEFAULT_NOISE_HU,
                     shape=None) -> Phantom:
    """Generate the phantom of `seed`.

    spacing: mm per image axis (one number or three); random if None (isotropic 1.2-2 mm or
        0.7-1.0 mm in-plane with 2-5 mm slices).
    size_mm: field of view along the patient's L-R, A-P and S-I axes (default 300 x 250 x 200);
        the body and its organs are scaled to fill it.
    direction: image axes in LPS: a 3x3 matrix, nine numbers (row-major, as ITK), or an
        orientation code such as "LPS", "RAS", "LPI"; random if None (axial with flips, sometimes
        permuted axes, sometimes a small oblique tilt).
    lesions: liver lesions present (True), absent (False) or a coin toss of the seed (None).
    noise_hu: standard deviation of the image noise in HU.
    shape: voxels per image axis; with it give at most one of spacing and size_mm.
    """
    if (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
            or not 0 <= int(seed) < 2 ** 63):
        raise UsageError("The seed must be a whole number from 0 to 2^63-1.")
    try:
        noise_hu = float(noise_hu)
    except (TypeError, ValueError):
        raise UsageError("The noise level must be a number of HU.") from None
    if not (math.isfinite(noise_hu) and 0 <= noise_hu <= 300):
        raise UsageError("The noise level must lie between 0 and 300 HU.")
    streams = np.random.SeedSequence(int(seed)).spawn(7)
    rng_anat, rng_sp, rng_dir, rng_les, rng_hu, rng_tex, rng_noise = (
        np.random.default_rng(s) for s in streams)

    random_dir = _random_direction(rng_dir)
    d = _parse_direction(direction) if direction is not None else random_dir
    sp, size, fov = _grid(d, spacing, size_mm, shape, rng_sp)

    anatomy = _sample_anatomy(rng_anat, fov)
    want_lesions = rng_les.random() < 0.5 if lesions is None else bool(lesions)
    lesion_list = _sample_lesions(rng_les, anatomy)

    matrix = d @ np.diag(sp)
    origin = anatomy.fov_center - matrix @ ((size - 1) / 2.0)
    canvas = _GridCanvas(size, origin, matrix)
    for step in anatomy.steps:
        step(canvas)
    centers: list[tuple[float, float, float]] = []
    if want_lesions:
        for c, semi, frame in lesion_list:
            if _blob(frame, semi, TISSUE_ID["liver_lesion"], only=[TISSUE_ID["liver"]])(canvas) > 0:
                centers.append(tuple(round(float(x), 4) for x in c))

    base = np.array([rng_hu.uniform(*t.base_hu) for t in TISSUES])
    lesion = TISSUE_ID["liver_lesion"]
    base[lesion] = np.clip(base[TISSUE_ID["liver"]] - rng_hu.uniform(*LESION_HYPODENSITY_HU),
                           *TISSUES[lesion].base_hu)
    texture = np.array([t.texture_hu for t in TISSUES])
    hu = _render(canvas.tissue, base, texture, sp, noise_hu, rng_tex, rng_noise)

    lut = np.array([t.label for t in TISSUES], dtype=np.uint8)
    label_array = lut[canvas.tissue]

    def to_image(array: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(tuple(float(x) for x in sp))
        img.SetOrigin(tuple(float(x) for x in origin))
        img.SetDirection(tuple(float(x) for x in d.reshape(-1)))
        return img

    return Phantom(image=to_image(hu), labels=to_image(label_array), label_table=PHANTOM_LABELS,
                   has_lesion=bool(centers), lesion_centers_lps=centers,
                   tissues=to_image(canvas.tissue), seed=int(seed))


def write_phantom(phantom: Phantom, ct_path: str | os.PathLike,
                  labels_path: str | os.PathLike) -> None:
    """Write the CT, the label map and its `<labels>.labels.json` table, each atomically.

    Both paths are checked before anything is written, so a bad path leaves no file behind.
    """
    ct = check_output_path(ct_path)
    lab = check_output_path(labels_path)
    if os.path.abspath(ct) == os.path.abspath(lab):
        raise UsageError("The CT and the label map need different file names.")
    write_image(phantom.image, ct)
    write_image(phantom.labels, lab)
    table = json.dumps(phantom.label_table.to_dict(), indent=2) + "\n"
    write_text_atomic(label_table_path_for(lab), table)
