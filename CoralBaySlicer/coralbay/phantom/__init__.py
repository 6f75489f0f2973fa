"""Synthetic abdominal CT phantom in Hounsfield units with an exact label map.

Why: CoralBay's task heads must be trained and tested on machines without network or patient
data, so the project makes its own CT: the anatomy is random per seed but always plausible (body
wall layers, liver, spleen, kidneys, aorta, spine, lung bases, bowel, optional liver lesions), and
the truth is known exactly.

How it works:
- Every structure is a shape in PHYSICAL space (LPS, mm): superquadrics and elliptic cylinders with
  a smooth random sinusoidal deformation, plus a few composite structures (periodic vertebrae and
  ribs, dome-shaped lung bases). Shapes are painted in a fixed order onto a tissue map; later shapes
  overwrite earlier ones only where the tissue beneath is one they may replace (organs stay inside
  the abdominal cavity, a lesion stays inside the liver).
- The tissue of a voxel is the tissue at its CENTRE, so the label map is exact for its grid and
  maps made at different spacings or orientations describe the same anatomy.
- Intensities: a per-seed base HU per tissue (drawn inside the tissue's documented range), a smooth
  texture, white noise, then one separable Gaussian blur that stands for the scanner's point spread
  plus the voxel footprint (partial volume). The blur also correlates the noise, as a CT
  reconstruction kernel does; the noise is scaled so that its final standard deviation is
  `noise_hu`. Labels are never blurred.
- Random choices come from independent streams of one `numpy.random.SeedSequence(seed)`: the
  anatomy does not change with spacing, direction or the lesion option, and the same seed and
  options give identical bytes (on the same platform and numpy version).

Documented Hounsfield units (portal-venous contrast phase), the `TISSUES` table below. Each seed
draws every tissue's base value from "base"; "range" is what the tissue's median respects, and for
labelled structures what the mean over the label (partial volume included) respects. Tissues
marked * are thinner than the blur (a few voxels at most), so their voxels mix with neighbours.

    tissue             label            base HU        range HU
    air                -                -1000          -1024..-950
    bowel_gas        * -                -1000..-950    -1024..-900
    skin             * -                25..50         0..80
    subcutaneous_fat   -                -110..-85      -130..-60
    muscle             -                40..60         20..80
    visceral_fat       -                -105..-80      -130..-60
    bowel              -                20..45         0..70
    liver              1 liver          100..120       80..140
    spleen             2 spleen         110..130       90..150
    kidney_left        3 kidney_left    150..190       120..220
    kidney_right       4 kidney_right   150..190       120..220
    aorta              5 aorta          175..230       140..280
    cancellous_bone    6 vertebrae      180..280       100..400
    cortical_bone    * 6 vertebrae      700..950       500..1300
    lung               7 lung           -870..-800     -920..-700
    liver_lesion       8 liver_lesion   10..70         0..80    (45-85 HU below the liver)
    ivc                -                110..150       80..170
    disc             * -                70..100        50..120
    csf                -                0..15          -10..30
    bile               -                0..20          -10..30
    rib                -                350..550       200..900
    diaphragm        * -                40..60         20..80
    table              -                40..200        -200..400
    (label 6 vertebrae as a whole, cortical and cancellous mixed: mean 150..700)

Modules: `tissues` (labels, tissues and their HU), `shapes` (shapes and canvases), `anatomy`
(the anatomy of one seed and its lesions), `render` (grid and intensities), `generate` (the
public API below).
"""

from coralbay.phantom.generate import generate_phantom, write_phantom
from coralbay.phantom.shapes import _rot_axis
from coralbay.phantom.tissues import (DEFAULT_NOISE_HU, LABEL_HU_RANGES, LESION_LABEL, PHANTOM_LABELS, TISSUE_ID,
                                      TISSUES, Phantom, hu_table_rows)

__all__ = ["DEFAULT_NOISE_HU", "LABEL_HU_RANGES", "LESION_LABEL", "PHANTOM_LABELS", "TISSUE_ID", "TISSUES",
           "Phantom", "_rot_axis", "generate_phantom", "hu_table_rows", "write_phantom"]
