"""Synthetic abdominal CT phantom in Hounsfield units with an exact label map (see `anatomy`).

The public names of the package; the implementation is split by job into its modules.
"""

from coralbay.phantom.anatomy import (DEFAULT_NOISE_HU, LABEL_HU_RANGES, LESION_LABEL, PHANTOM_LABELS, TISSUE_ID,
                                      TISSUES, Phantom, _rot_axis, generate_phantom, hu_table_rows, write_phantom)

__all__ = ["DEFAULT_NOISE_HU", "LABEL_HU_RANGES", "LESION_LABEL", "PHANTOM_LABELS", "TISSUE_ID", "TISSUES",
           "Phantom", "_rot_axis", "generate_phantom", "hu_table_rows", "write_phantom"]
