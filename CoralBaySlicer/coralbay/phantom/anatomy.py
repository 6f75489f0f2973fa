"""The anatomy of one seed: a plausible abdomen as an ordered list of painting steps, and the
liver lesions placed inside its liver."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from coralbay.phantom.shapes import (Step, _Frame, _PointCanvas, _blob, _paint, _power, _random_deform,
                                     _rot_y, _rot_z, _superquadric)
from coralbay.phantom.tissues import TISSUE_ID, _ids

# --------------------------------------------------------------------------------------------
# The anatomy of one seed
# --------------------------------------------------------------------------------------------

@dataclass
class _Anatomy:
    steps: list[Step]
    liver_frame: _Frame
    liver_semi: np.ndarray
    fov_center: np.ndarray
    scale: float


def _sample_anatomy(rng: np.random.Generator, size_mm: np.ndarray) -> _Anatomy:
    """Draw one plausible abdomen that fills a field of view of `size_mm` (L-R, A-P, S-I).

    Positions are written for a reference body 280 mm wide and 210 mm deep (half 140 x 105) and
    scaled to this body; sizes scale with the mean body scale `s`, so small fields of view hold
    small bodies rather than cut-off organs.
    """
    U = rng.uniform
    fov_center = np.array([U(-15, 15), U(-25, 25), U(-400, 100)])
    W = size_mm[0] / 2 * U(0.78, 0.92)
    A = min(size_mm[1] / 2 * U(0.72, 0.90), W * U(0.68, 0.88))
    sx, sy = W / 140.0, A / 105.0
    s = (sx + sy) / 2
    zs = min(s, size_mm[2] / 200.0 * 1.15)  # head-foot positions follow the field of view height
    body_c = fov_center + np.array([U(-1, 1) * (size_mm[0] / 2 - W) * 0.5,
                                    U(-1, 1) * (size_mm[1] / 2 - A) * 0.5, 0.0])
    I3 = np.eye(3)

    def at(x: float, y: float, z: float) -> np.ndarray:
        """A point given in reference-body millimetres relative to the body centre."""
        return body_c + np.array([x * sx, y * sy, z * zs])

    steps: list[Step] = []

    # Patient table under the back (curved slab), if the field of view reaches it.
    table_y = A + U(2, 10)
    table_t = U(6, 10)
    table_r = U(500, 900)
    table_frame = _Frame(body_c.copy(), I3)
    sag = 230.0 ** 2 / (2 * table_r)  # how far the curved table rises at its edges

    def table(canvas) -> int:
        got = canvas.local(table_frame.center, I3, np.array([230.0, (sag + table_t) / 2 + 1, 1e4]),
                           (0.0, table_y + (table_t - sag) / 2, 0.0))
        if got is None:
            return 0
        region, (u, v, _w) = got
        top = np.float32(table_y) - u * u * np.float32(1 / (2 * table_r))
        mask = (v >= top) & (v <= top + np.float32(table_t)) & (np.abs(u) <= 230)
        return _paint(canvas, region, mask, TISSUE_ID["table"])
    steps.append(table)

    # Body wall: skin, subcutaneous fat, muscle, ribs, then the cavity of visceral fat.
    n_body = float(rng.choice([2.0, 2.5, 3.0], p=[0.3, 0.5, 0.2]))
    body_frame = _Frame(body_c.copy(), I3, [
        (0, 1, W * 0.04 * U(-1, 1), 2 * math.pi / (A * U(2, 4)), U(0, 2 * math.pi)),
        (0, 2, W * 0.03 * U(-1, 1), 2 * math.pi / U(250, 500), U(0, 2 * math.pi)),
        (1, 0, A * 0.04 * U(-1, 1), 2 * math.pi / (W * U(2, 4)), U(0, 2 * math.pi))])
    skin = 2.0
    fat_lat, fat_ant, fat_post = U(8, 35) * s, U(10, 40) * s, U(5, 15) * s
    wall = U(7, 13) * s
    fat_semi = (W - skin - fat_lat, A - skin - (fat_ant + fat_post) / 2, math.inf)
    fat_off = (0.0, (fat_ant - fat_post) / 2, 0.0)
    cav_semi = (fat_semi[0] - wall, fat_semi[1] - wall, math.inf)
    rib_period, rib_phase = U(24, 32) * s, U(0, 1)
    rib_slope, rib_start = U(0.25, 0.5), U(-10, 40) * zs
    rib_frac = min(0.5, 10 * s / rib_period)
    cw, ca, cav_y = cav_semi[0], cav_semi[1], fat_off[1]

    def cav(xf: float, yf: float, z: float) -> np.ndarray:
        """A point given as fractions of the abdominal cavity's half-width and half-depth, and
        reference millimetres head-foot, relative to the cavity centre."""
        return body_c + np.array([xf * cw, cav_y + yf * ca, z * zs])

    def body(canvas) -> int:
        got = canvas.local(body_frame.center, I3, np.array([W, A, 1e4]) + body_frame.margin())
        if got is None:
            return 0
        region, u = got
        v = body_frame.deformed(u)
        # The nested layers share |x|^n and |y|^n (powers are the costly part).
        px = _power(v[0], n_body)
        py, py_off = _power(v[1], n_body), _power(v[1] - np.float32(fat_off[1]), n_body)

        def inside(semi: Sequence[float], pyy: np.ndarray) -> np.ndarray:
            return px * np.float32(semi[0] ** -n_body) + pyy * np.float32(semi[1] ** -n_body) <= 1

        n = _paint(canvas, region, inside((W, A), py), TISSUE_ID["skin"])
        _paint(canvas, region, inside((W - skin, A - skin), py), TISSUE_ID["subcutaneous_fat"])
        cavity = inside(cav_semi, py_off)
        wall = inside(fat_semi, py_off) & ~cavity
        _paint(canvas, region, wall, TISSUE_ID["muscle"])
        _paint(canvas, region, cavity, TISSUE_ID["visceral_fat"])
        # Ribs: bands of the wall that rise posteriorly, above the costal margin, not in front.
        # Computed on the wall voxels only (a small part of the box).
        shape = canvas.tissue[region].shape
        vw = [np.broadcast_to(x, shape)[wall] for x in v]
        band = vw[2] - np.float32(rib_slope) * vw[1]
        phase = band * np.float32(1 / rib_period) + np.float32(rib_phase)
        ribs = ((phase - np.floor(phase)) < rib_frac) & (band > rib_start)
        ribs &= ~((vw[1] < -0.55 * A) & (np.abs(vw[0]) < 0.35 * W))
        current = canvas.tissue[region]
        current[wall] = np.where(ribs, np.uint8(TISSUE_ID["rib"]), np.uint8(TISSUE_ID["muscle"]))
        return n
    steps.append(body)

    # Back muscles (erector spinae) and psoas beside the spine.
    post = fat_semi[1] + fat_off[1]  # posterior inner edge of the subcutaneous fat
    for side in (-1, 1):
        semi = (U(20, 27) * s, U(17, 23) * s, math.inf)
        c = body_c + np.array([side * (U(30, 40) * sx), post - semi[1] * U(0.75, 0.95), 0.0])
        steps.append(_blob(_Frame(c, I3, _random_deform(rng, semi, 0.05)), semi, TISSUE_ID["muscle"],
                           only=_ids("visceral_fat", "muscle", "rib")))
    for side in (-1, 1):
        semi = (U(11, 15) * s, U(10, 14) * s, U(110, 150) * zs)
        c = at(side * U(28, 36), U(34, 42), U(-120, -70))
        steps.append(_blob(_Frame(c, _rot_z(U(-10, 10)), _random_deform(rng, semi, 0.06)), semi,
                           TISSUE_ID["muscle"], only=_ids("visceral_fat")))

    # Bowel loops (some with gas) filling the front and lower cavity.
    for _ in range(int(rng.integers(10, 19))):
        semi = (U(14, 32) * s, U(12, 28) * s, U(14, 32) * s)
        c = cav(U(-0.8, 0.8), U(-0.85, 0.4), U(-110, 20))
        frame = _Frame(c, _rot_z(U(0, 180)), _random_deform(rng, semi, 0.08))
        steps.append(_blob(frame, semi, TISSUE_ID["bowel"], only=_ids("visceral_fat")))
        gas = rng.random() < 0.4
        gas_semi = tuple(g * U(0.3, 0.6) for g in semi)
        if gas:
            steps.append(_blob(frame, gas_semi, TISSUE_ID["bowel_gas"], only=_ids("bowel")))

    # Spine: periodic vertebral bodies and discs, canal, arch and processes, with lordosis.
    sp_semi = (U(19, 25) * s, U(15, 19) * s, math.inf)
    sp_c = body_c + np.array([U(-4, 4) * sx, U(36, 44) * sy, 0.0])
    lordosis = (1, 2, U(3, 8) * s * rng.choice([-1, 1]), 2 * math.pi / U(300, 500), U(0, 2 * math.pi))
    scoliosis = (0, 2, U(-2, 2) * s, 2 * math.pi / U(300, 500), U(0, 2 * math.pi))
    sp_frame = _Frame(sp_c, I3, [lordosis, scoliosis])
    period = U(30, 36) * s
    disc_frac = U(0.18, 0.26)
    sp_phase = U(0, 1)
    cortex = 1.8
    canal_y, canal_semi = sp_semi[1] + U(8, 11) * s, (U(8, 10) * s, U(7, 9) * s)
    arch_semi = (canal_semi[0] + U(5, 7) * s, canal_semi[1] + U(5, 7) * s)
    spinous = (U(3.5, 5.5) * s, U(11, 15) * s)
    transverse = (U(12, 16) * s, U(4, 6) * s)
    spinous_y = canal_y + arch_semi[1] + spinous[1] * 0.6
    transverse_x = arch_semi[0] + transverse[0] * 0.5

    def spine(canvas) -> int:
        half = np.array([45 * s, sp_semi[1] + canal_y + 40 * s, 1e4]) + sp_frame.margin()
        got = canvas.local(sp_frame.center, I3, half)
        if got is None:
            return 0
        region, u = got
        v = sp_frame.deformed(u)
        ph = v[2] * np.float32(1 / period) + np.float32(sp_phase)
        frac = ph - np.floor(ph)                          # 0..1 along one vertebra + disc
        in_body = frac >= disc_frac
        endplate = in_body & ((frac - disc_frac < cortex / period) | (1 - frac < cortex / period))
        col = _superquadric(v, sp_semi, 2.5)
        core = _superquadric(v, (sp_semi[0] - cortex, sp_semi[1] - cortex, math.inf), 2.5)
        n = _paint(canvas, region, (col <= 1) & ~in_body, TISSUE_ID["disc"])
        _paint(canvas, region, (col <= 1) & in_body, TISSUE_ID["cortical_bone"])
        _paint(canvas, region, (core <= 1) & in_body & ~endplate, TISSUE_ID["cancellous_bone"])
        # Posterior elements: only in the upper part of each vertebral level.
        level = in_body & (frac < disc_frac + 0.75 * (1 - disc_frac))
        arch = _superquadric(v, (*arch_semi, math.inf), 2.0, (0, canal_y, 0)) <= 1
        arch &= v[1] > np.float32(sp_semi[1] * 0.6)
        spin = _superquadric(v, (*spinous, math.inf), 2.0, (0, spinous_y, 0)) <= 1
        mirrored = [np.abs(v[0]), v[1], v[2]]  # both transverse processes at once
        trans = _superquadric(mirrored, (*transverse, math.inf), 2.0,
                              (transverse_x, canal_y - 2 * s, 0)) <= 1
        _paint(canvas, region, (arch | spin | trans) & level, TISSUE_ID["cortical_bone"])
        # Their marrow: the same shapes shrunk by the cortex thickness.
        inner = [(a - cortex) for a in arch_semi]
        arch_in = _superquadric(v, (*inner, math.inf), 2.0, (0, canal_y, 0)) <= 1
        arch_in &= _superquadric(v, (canal_semi[0] + cortex, canal_semi[1] + cortex, math.inf),
                                 2.0, (0, canal_y, 0)) > 1
        arch_in &= v[1] > np.float32(sp_semi[1] * 0.6 + cortex)
        spin_in = _superquadric(v, (spinous[0] - cortex, spinous[1] - cortex, math.inf), 2.0,
                                (0, spinous_y, 0)) <= 1
        trans_in = _superquadric(mirrored, (transverse[0] - cortex, transverse[1] - cortex, math.inf),
                                 2.0, (transverse_x, canal_y - 2 * s, 0)) <= 1
        level_in = level & (frac - disc_frac > cortex / period) & (
            frac < disc_frac + 0.75 * (1 - disc_frac) - cortex / period)
        marrow = (arch_in | spin_in | trans_in) & level_in
        _paint(canvas, region, marrow, TISSUE_ID["cancellous_bone"])
        canal = _superquadric(v, (*canal_semi, math.inf), 2.0, (0, canal_y, 0)) <= 1
        _paint(canvas, region, canal, TISSUE_ID["csf"])
        return n
    steps.append(spine)

    spine_front = sp_c[1] - sp_semi[1]

    soft = _ids("visceral_fat", "bowel", "bowel_gas")  # what solid organs may displace

    # Kidneys: tilted beans with renal sinus fat at the hilum, the right one lower.
    kid_z = U(-15, 5)
    for side, name in ((1, "kidney_left"), (-1, "kidney_right")):
        semi = (U(24, 30) * s, U(20, 26) * s, U(50, 60) * s)
        z = kid_z + (0.0 if side > 0 else -U(10, 25))
        c = at(side * U(60, 75), U(40, 55), z)
        rot = _rot_z(side * U(20, 40)) @ _rot_y(-side * U(5, 15))
        frame = _Frame(c, rot, _random_deform(rng, semi, 0.05))
        steps.append(_blob(frame, semi, TISSUE_ID[name], only=soft))
        sinus_semi = (U(9, 12) * s, U(7, 10) * s, semi[2] * U(0.4, 0.55))
        sinus_c = c + rot @ np.array([-side * semi[0] * 0.65, -semi[1] * 0.2, 0.0])
        steps.append(_blob(_Frame(sinus_c, rot), sinus_semi, TISSUE_ID["visceral_fat"],
                           only=_ids(name)))

    # Aorta (contrast-filled, left of the midline in front of the spine) and the IVC.
    r_ao = U(9.5, 13) * s
    ao_c = np.array([sp_c[0] + U(4, 14) * sx, spine_front - r_ao - U(1, 4), body_c[2]])
    ao_frame = _Frame(ao_c, I3, [lordosis, (0, 2, U(-4, 4) * s, 2 * math.pi / U(250, 450),
                                            U(0, 2 * math.pi))])
    steps.append(_blob(ao_frame, (r_ao, r_ao, math.inf), TISSUE_ID["aorta"]))
    ivc_semi = (U(10, 14) * s, U(7, 10) * s, math.inf)
    ivc_c = np.array([sp_c[0] - U(18, 28) * sx, spine_front - ivc_semi[1] - U(4, 10), body_c[2]])
    ivc_frame = _Frame(ivc_c, I3, [lordosis])

    # Liver: right lobe plus a left lobe reaching across the midline in front.
    liver_semi = np.array([U(0.55, 0.68) * cw, U(0.78, 0.95) * ca, U(70, 90) * s])
    liver_c = cav(-U(0.33, 0.45), U(-0.12, 0.05), U(-5, 15))
    liver_frame = _Frame(liver_c, _rot_z(U(-15, 15)), _random_deform(rng, liver_semi, 0.06))
    steps.append(_blob(liver_frame, liver_semi, TISSUE_ID["liver"], only=soft))
    ll_semi = (U(0.3, 0.42) * cw, U(0.22, 0.3) * ca, U(25, 38) * s)
    ll_frame = _Frame(cav(U(-0.05, 0.15), -U(0.45, 0.6), U(25, 45)), _rot_z(U(-10, 20)),
                      _random_deform(rng, ll_semi, 0.06))
    steps.append(_blob(ll_frame, ll_semi, TISSUE_ID["liver"], only=soft))

    # Spleen along the left posterolateral wall; size varies (splenomegaly now and then).
    sp_scale = U(0.75, 1.3)
    spl_semi = (U(18, 24) * s * sp_scale, U(42, 55) * s * sp_scale, U(38, 52) * s * sp_scale)
    spl_frame = _Frame(cav(U(0.62, 0.78), U(0.0, 0.3), U(5, 25)), _rot_z(U(30, 55)),
                       _random_deform(rng, spl_semi, 0.07))
    steps.append(_blob(spl_frame, spl_semi, TISSUE_ID["spleen"], only=soft))

    # Gallbladder (hypodense, a look-alike of a lesion) under the liver, most of the time.
    has_gb = rng.random() < 0.7
    gb_semi = (U(12, 18) * s, U(12, 18) * s, U(22, 35) * s)
    gb_c = liver_c + liver_frame.rot @ np.array([liver_semi[0] * U(0.3, 0.5), -liver_semi[1] * 0.6,
                                                 -liver_semi[2] * 0.6])
    if has_gb:
        steps.append(_blob(_Frame(gb_c, _rot_y(U(-20, 20)), _random_deform(rng, gb_semi, 0.05)),
                           gb_semi, TISSUE_ID["bile"], only=[*soft, *_ids("liver")]))
    steps.append(_blob(ivc_frame, ivc_semi, TISSUE_ID["ivc"], only=[*soft, *_ids("liver", "bile")]))

    # Lung bases above dome-shaped diaphragms (right dome higher), inside the ribcage.
    lung_only = [*soft, *_ids("liver", "spleen", "bile", "ivc", "diaphragm")]
    dome_r = U(55, 75)
    for side in (-1, 1):
        apex = dome_r - (0.0 if side < 0 else U(5, 15))
        semi = (U(0.42, 0.5) * cw, U(0.75, 0.9) * ca)
        c = cav(side * U(0.5, 0.6), U(0.0, 0.15), apex)
        depth = U(15, 30) * s
        frame = _Frame(c, I3, [(2, 0, U(-4, 4) * s, 2 * math.pi / U(120, 200), U(0, 2 * math.pi)),
                               (2, 1, U(-4, 4) * s, 2 * math.pi / U(120, 200), U(0, 2 * math.pi))])
        steps.append(_lung_base(frame, semi, depth, lung_only))

    return _Anatomy(steps, liver_frame, liver_semi, fov_center, s)


def _lung_base(frame: _Frame, semi: tuple[float, float], depth: float, only: list[int]) -> Step:
    """Lung above a paraboloid dome: inside the elliptic cylinder q <= 1 and w >= -depth * q,
    so the dome is highest in the middle and the costophrenic recess lowest at the rim; a 4 mm
    diaphragm lies under it."""
    thick = 4.0
    margin = frame.margin()
    half = np.array([semi[0] * 1.1 + margin[0], semi[1] * 1.1 + margin[1], 5e3])
    shift = (0.0, 0.0, 5e3 - (depth * 1.1 + thick + margin[2] + 1.0))  # box starts under the recess

    def step(canvas) -> int:
        got = canvas.local(frame.center, frame.rot, half, shift)
        if got is None:
            return 0
        region, u = got
        v = frame.deformed(u)
        q = _superquadric(v, (semi[0], semi[1], math.inf))
        height = v[2] + np.float32(depth) * q
        diaphragm = (q <= 1.1) & (height >= -thick) & (height < 0)
        _paint(canvas, region, diaphragm, TISSUE_ID["diaphragm"], only)
        return _paint(canvas, region, (q <= 1.0) & (height >= 0), TISSUE_ID["lung"], only)
    return step


def _sample_lesions(rng: np.random.Generator, anatomy: _Anatomy
                    ) -> list[tuple[np.ndarray, np.ndarray, _Frame]]:
    """1-3 hypodense liver lesions whose centre and near surroundings are liver tissue.

    Candidates are checked on the physical anatomy (not on a grid), so a seed's lesions are the
    same at every spacing and orientation.
    """
    count = int(rng.integers(1, 4))
    lesions: list[tuple[np.ndarray, np.ndarray, _Frame]] = []
    for _ in range(count):
        radius = rng.uniform(5.0, 14.0) * max(0.7, min(1.0, anatomy.scale))
        semi = radius * rng.uniform(0.85, 1.15, size=3)
        deform = _random_deform(rng, semi, 0.08)
        dirs = rng.normal(size=(48, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        radii = 0.7 * rng.uniform(0, 1, size=(48, 1)) ** (1 / 3)  # uniform in the inner ball
        local = dirs * radii * anatomy.liver_semi
        centers = anatomy.liver_frame.center + local @ anatomy.liver_frame.rot.T
        probes = [centers] + [centers + sign * semi[k] * 1.1 * np.eye(3)[k]
                              for k in range(3) for sign in (-1, 1)]
        canvas = _PointCanvas(np.concatenate(probes))
        for step in anatomy.steps:
            step(canvas)
        ok = (canvas.tissue.reshape(7, -1) == TISSUE_ID["liver"]).all(axis=0)
        for i in np.flatnonzero(ok):
            c = centers[i]
            if all(np.linalg.norm(c - o[0]) > (radius + o[1].max() + 3) for o in lesions):
                lesions.append((c, semi, _Frame(c, np.eye(3), deform)))
                break
    return lesions


