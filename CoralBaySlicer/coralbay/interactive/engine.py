"""The engine APIs the interactive package uses, imported in this one place.

Why: other engine modules are being moved between packages (volume_io -> io/, preprocess ->
grid, ...); whoever moves them fixes the imports here and nowhere else in `interactive`.
"""

from __future__ import annotations

from coralbay.atomic import atomic_file, write_text_atomic
from coralbay.bundle.loader import LoadedBundle, load_bundle
from coralbay.errors import CoralBayError, InputError, UsageError
from coralbay.inference.fast_swin import enable_fast_swin
from coralbay.inference.sliding_window import blend_slabs, plan_windows
from coralbay.labels import LabelTable, load_label_table
from coralbay.phantom import generate_phantom
from coralbay.preprocess import grid_image, prepare, to_xyz, to_zyx
from coralbay.review.surface import surface_metrics
from coralbay.volume_io import read_label_map, read_volume, same_grid, write_image

__all__ = ["atomic_file", "write_text_atomic", "LoadedBundle", "load_bundle", "CoralBayError",
           "InputError", "UsageError", "enable_fast_swin", "generate_phantom", "blend_slabs", "plan_windows", "LabelTable",
           "load_label_table", "grid_image", "prepare", "to_xyz", "to_zyx", "surface_metrics",
           "read_label_map", "read_volume", "same_grid", "write_image"]
