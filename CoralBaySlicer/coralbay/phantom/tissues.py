"""The phantom's labels and tissues: the label table, each tissue's documented HU range and
texture, and the defaults of a phantom (size, noise, point spread)."""

from __future__ import annotations

from dataclasses import dataclass, field

import SimpleITK as sitk

from coralbay.io.labels import ANATOMICAL_STRUCTURE, MORPHOLOGICALLY_ABNORMAL, Label, LabelTable, Terminology

# --------------------------------------------------------------------------------------------
# Labels and tissues
# --------------------------------------------------------------------------------------------

_LEFT = ("SCT", "7771000", "Left")
_RIGHT = ("SCT", "24028007", "Right")

PHANTOM_LABELS = LabelTable([
    Label(1, "liver", (221, 130, 101),
          Terminology(ANATOMICAL_STRUCTURE, ("SCT", "10200004", "Liver"))),
    Label(2, "spleen", (157, 108, 162),
          Terminology(ANATOMICAL_STRUCTURE, ("SCT", "78961009", "Spleen"))),
    Label(3, "kidney_left", (185, 102, 83),
          Terminology(ANATOMICAL_STRUCTURE, ("SCT", "64033007", "Kidney"), _LEFT)),
    Label(4, "kidney_right", (212, 126, 151),
          Terminology(ANATOMICAL_STRUCTURE, ("SCT", "64033007", "Kidney"), _RIGHT)),
    Label(5, "aorta", (224, 97, 76),
          Terminology(ANATOMICAL_STRUCTURE, ("SCT", "15825003", "Aorta"))),
    Label(6, "vertebrae", (241, 214, 145),
          Terminology(ANATOMICAL_STRUCTURE, ("SCT", "51282000", "Vertebra"))),
    Label(7, "lung", (197, 165, 145),
          Terminology(ANATOMICAL_STRUCTURE, ("SCT", "39607008", "Lung"))),
    Label(8, "liver_lesion", (255, 237, 0),
          Terminology(MORPHOLOGICALLY_ABNORMAL, ("SCT", "52988006", "Lesion"))),
])
LESION_LABEL = 8


@dataclass(frozen=True)
class Tissue:
    """One tissue class of the phantom: its label value (0 = unlabelled) and HU ranges."""

    name: str
    label: int
    base_hu: tuple[float, float]   # each seed draws the tissue's base value from this range
    range_hu: tuple[float, float]  # documented range of the tissue's median (a label's mean)
    texture_hu: float              # amplitude of the smooth within-tissue variation
    thin: bool = False             # thinner than the blur: partial volume dominates its voxels


TISSUES: tuple[Tissue, ...] = (
    Tissue("air", 0, (-1000, -1000), (-1024, -950), 0),
    Tissue("bowel_gas", 0, (-1000, -950), (-1024, -900), 5, thin=True),
    Tissue("skin", 0, (25, 50), (0, 80), 3, thin=True),
    Tissue("subcutaneous_fat", 0, (-110, -85), (-130, -60), 5),
    Tissue("muscle", 0, (40, 60), (20, 80), 5),
    Tissue("visceral_fat", 0, (-105, -80), (-130, -60), 6),
    Tissue("bowel", 0, (20, 45), (0, 70), 8),
    Tissue("liver", 1, (100, 120), (80, 140), 6),
    Tissue("spleen", 2, (110, 130), (90, 150), 5),
    Tissue("kidney_left", 3, (150, 190), (120, 220), 8),
    Tissue("kidney_right", 4, (150, 190), (120, 220), 8),
    Tissue("aorta", 5, (175, 230), (140, 280), 5),
    Tissue("cancellous_bone", 6, (180, 280), (100, 400), 25),
    Tissue("cortical_bone", 6, (700, 950), (500, 1300), 40, thin=True),
    Tissue("lung", 7, (-870, -800), (-920, -700), 15),
    Tissue("liver_lesion", 8, (10, 70), (0, 80), 4),
    Tissue("ivc", 0, (110, 150), (80, 170), 5),
    Tissue("disc", 0, (70, 100), (50, 120), 5, thin=True),
    Tissue("csf", 0, (0, 15), (-10, 30), 3),
    Tissue("bile", 0, (0, 20), (-10, 30), 3),
    Tissue("rib", 0, (350, 550), (200, 900), 30),
    Tissue("diaphragm", 0, (40, 60), (20, 80), 5, thin=True),
    Tissue("table", 0, (40, 200), (-200, 400), 10),
)
TISSUE_ID = {t.name: i for i, t in enumerate(TISSUES)}  # tissue name -> value in the tissue map


def _ids(*names: str) -> list[int]:
    return [TISSUE_ID[n] for n in names]

# The documented range of each label's mean HU (partial volume at its border included).
LABEL_HU_RANGES: dict[int, tuple[float, float]] = {
    t.label: t.range_hu for t in TISSUES if t.label and t.name != "cortical_bone"}
LABEL_HU_RANGES[6] = (150.0, 700.0)  # vertebrae mix cancellous and cortical bone


def hu_table_rows() -> list[str]:
    """The HU table as Markdown rows (the README shows exactly these; a test keeps them in step)."""
    names = {lab.value: lab.name for lab in PHANTOM_LABELS}
    rows = ["| tissue | label | base HU (drawn per seed) | range HU |", "|---|---|---|---|"]
    for t in TISSUES:
        base = (f"{t.base_hu[0]:g}" if t.base_hu[0] == t.base_hu[1]
                else f"{t.base_hu[0]:g}..{t.base_hu[1]:g}")
        label = f"{t.label} {names[t.label]}" if t.label else "-"
        rows.append(f"| {t.name}{' *' if t.thin else ''} | {label} | {base} | "
                    f"{t.range_hu[0]:g}..{t.range_hu[1]:g} |")
    lo, hi = LABEL_HU_RANGES[6]
    rows.append(f"| vertebrae label as a whole | 6 vertebrae | mixed | {lo:g}..{hi:g} |")
    return rows


LESION_HYPODENSITY_HU = (45.0, 85.0)  # how much darker than the liver a lesion is
DEFAULT_SIZE_MM = (300.0, 250.0, 200.0)  # field of view along patient L-R, A-P, S-I
DEFAULT_NOISE_HU = 15.0
PSF_SIGMA_MM = 0.8  # scanner point spread (Gaussian sigma) before the voxel footprint
MAX_VOXELS = 64_000_000
HU_MIN, HU_MAX = -1024, 3071


@dataclass
class Phantom:
    """A generated phantom: CT in HU, its exact label map and what is in it."""

    image: sitk.Image                 # int16 HU
    labels: sitk.Image                # uint8, same grid
    label_table: LabelTable
    has_lesion: bool
    lesion_centers_lps: list[tuple[float, float, float]] = field(default_factory=list)
    tissues: sitk.Image | None = None  # uint8 tissue ids (index into TISSUES), same grid
    seed: int = 0


