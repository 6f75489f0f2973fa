"""The phantom's grid (spacing, direction, field of view) and its intensities (base HU, texture,
noise, point-spread blur)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from coralbay.errors import UsageError
from coralbay.phantom.shapes import _rot_axis
from coralbay.phantom.tissues import DEFAULT_SIZE_MM, HU_MAX, HU_MIN, MAX_VOXELS, PSF_SIGMA_MM

# --------------------------------------------------------------------------------------------
# Grid: spacing, direction, field of view
# --------------------------------------------------------------------------------------------

def _random_spacing(rng: np.random.Generator) -> np.ndarray:
    """Isotropic 1.2-2.0 mm, or a clinical-style thin in-plane / thicker slice protocol."""
    iso = round(float(rng.uniform(1.2, 2.0)), 3)
    inplane = round(float(rng.uniform(0.7, 1.0)), 3)
    slices = np.array([2.0, 2.5, 3.0, 5.0])
    allowed = slices[inplane * inplane * slices >= 1.45]
    thick = float(allowed[int(rng.integers(0, len(allowed)))])
    if rng.random() < 0.4:
        return np.array([iso, iso, iso])
    return np.array([inplane, inplane, thick])


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    """Mostly axial (identity or flipped axes, as DICOM and NIfTI writers produce), sometimes a
    permuted (coronal/sagittal) order, sometimes a small oblique tilt."""
    kind = rng.random()
    signs = rng.choice([-1.0, 1.0], size=3)
    perm = rng.permutation(3)
    tilt = rng.random() < 0.2
    axis = rng.normal(size=3)
    angle = rng.uniform(3.0, 12.0)
    p = np.eye(3)
    if kind >= 0.4:
        p = np.diag(signs)
    if kind >= 0.7:
        p = p[:, perm]
    return _rot_axis(axis, angle) @ p if tilt else p


def _parse_direction(direction) -> np.ndarray:
    if isinstance(direction, str):
        code = direction.strip().upper()
        if len(code) != 3 or not all(sum(c in pair for c in code) == 1
                                     for pair in ("LR", "PA", "IS")):
            raise UsageError(f"The direction {direction!r} is not a three-letter orientation such as "
                             "LPS, RAS or LPI.")
        d = sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(code)
        return np.asarray(d, dtype=float).reshape(3, 3)
    try:
        d = np.asarray(direction, dtype=float).reshape(3, 3)
    except (TypeError, ValueError):
        raise UsageError("The direction must be a 3x3 matrix, nine numbers (row by row, columns are "
                         "the image axes in LPS) or an orientation code such as LPS.") from None
    if not np.all(np.isfinite(d)) or not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
        raise UsageError("The direction matrix must be orthonormal (each image axis a unit vector, "
                         "axes perpendicular).")
    return d


def _vec3(value, what: str, lo: float, hi: float) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise UsageError(f"The {what} must be one number or three numbers.") from None
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.size != 3 or not np.all(np.isfinite(arr)):
        raise UsageError(f"The {what} must be one number or three numbers.")
    if np.any(arr < lo) or np.any(arr > hi):
        got = ", ".join(f"{a:g}" for a in arr)
        raise UsageError(f"The {what} must lie between {lo:g} and {hi:g} (got {got}).")
    return arr


def _grid(direction: np.ndarray, spacing, size_mm, shape, rng_spacing: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spacing (per image axis), size (voxels per image axis) and field of view (L-R, A-P, S-I)."""
    patient_axis = np.argmax(np.abs(direction), axis=0)  # the patient axis each image axis follows
    if len(set(patient_axis.tolist())) != 3:
        raise UsageError("The direction is too oblique: each image axis must run closest to a "
                         "different patient axis.")
    if shape is not None:
        shape = _vec3(shape, "shape", 8, 4096).round().astype(int)
        if spacing is not None and size_mm is not None:
            raise UsageError("Give at most two of shape, spacing and size_mm; the third follows.")
    sp = _vec3(spacing, "spacing", 0.1, 20.0) if spacing is not None else None
    fov = _vec3(size_mm, "field of view size in mm", 40.0, 1000.0) if size_mm is not None else None
    random_sp = _random_spacing(rng_spacing)
    if shape is not None and sp is not None:
        fov = np.zeros(3)
        fov[patient_axis] = shape * sp
        _vec3(fov, "field of view size in mm (shape times spacing)", 40.0, 1000.0)
    if fov is None:
        fov = np.asarray(DEFAULT_SIZE_MM, dtype=float)
    extent = fov[patient_axis]
    if shape is not None and sp is None:
        sp = extent / shape
    if sp is None:
        sp = random_sp
    size = shape if shape is not None else np.maximum(np.rint(extent / sp), 1).astype(int)
    if np.prod(size.astype(float)) > MAX_VOXELS:
        raise UsageError(f"A phantom of {size[0]} x {size[1]} x {size[2]} voxels is too large "
                         f"(at most {MAX_VOXELS // 1_000_000} million); use a coarser spacing or a "
                         "smaller field of view.")
    return sp, size, fov


# --------------------------------------------------------------------------------------------
# Intensities
# --------------------------------------------------------------------------------------------

def _gauss_kernel(sigma_vox: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3 * sigma_vox)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma_vox) ** 2)
    return (k / k.sum()).astype(np.float32)


def _blur(volume: np.ndarray, kernels: Sequence[np.ndarray]) -> np.ndarray:
    """Separable convolution with symmetric kernels and edge replication; kernels in ITK axis
    order (i, j, k). Written with in-place slice arithmetic: no padded copies of the volume."""
    out = volume
    for axis_itk, k in enumerate(kernels):
        axis = 2 - axis_itk
        x = np.moveaxis(out, axis, 0)
        r = len(k) // 2
        acc = x * k[r]
        n = x.shape[0]
        for i in range(1, r + 1):
            w = k[r + i]
            if n > 2 * i:                                     # both neighbours inside
                acc[i:n - i] += (x[:n - 2 * i] + x[2 * i:]) * w
            for j in sorted(set(range(min(i, n))) | set(range(max(n - i, 0), n))):
                acc[j] += (x[max(j - i, 0)] + x[min(j + i, n - 1)]) * w  # edges: replicate
        out = np.moveaxis(acc, 0, axis)
    return np.ascontiguousarray(out)


def _smooth_field(rng: np.random.Generator, size: np.ndarray, spacing: np.ndarray,
                  cell_mm: float = 15.0) -> np.ndarray:
    """A smooth random field (unit-ish amplitude): random values every `cell_mm`, interpolated
    linearly, for gentle within-organ texture."""
    coarse_n = np.maximum(np.ceil(size * spacing / cell_mm).astype(int) + 2, 2)
    field_ = rng.standard_normal(tuple(coarse_n[::-1])).astype(np.float32)
    for axis_itk in range(3):
        axis = 2 - axis_itk
        pos = np.arange(size[axis_itk]) * spacing[axis_itk] / cell_mm + 0.5
        i0 = np.floor(pos).astype(int)
        f = (pos - i0).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = -1
        f = f.reshape(shape)
        field_ = np.take(field_, i0, axis=axis) * (1 - f) + np.take(field_, i0 + 1, axis=axis) * f
    return field_


def _render(tissue: np.ndarray, base: np.ndarray, texture: np.ndarray, spacing: np.ndarray,
            noise_hu: float, rng_tex: np.random.Generator, rng_noise: np.random.Generator
            ) -> np.ndarray:
    """HU image of a tissue map: base value + smooth texture + noise, then the blur."""
    size = np.array(tissue.shape[::-1])
    field_ = _smooth_field(rng_tex, size, spacing)
    hu = np.take(base.astype(np.float32), tissue)
    hu += np.take(texture.astype(np.float32), tissue) * field_
    sigma_mm = np.sqrt(PSF_SIGMA_MM ** 2 + spacing ** 2 / 12.0)
    kernels = [_gauss_kernel(sig / sp) for sig, sp in zip(sigma_mm, spacing)]
    if noise_hu > 0:
        gain = float(np.prod([np.sqrt(np.sum(k.astype(np.float64) ** 2)) for k in kernels]))
        noise = rng_noise.standard_normal(tissue.shape, dtype=np.float32)
        hu += noise * np.float32(noise_hu / gain)
    hu = _blur(hu, kernels)
    return np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)


