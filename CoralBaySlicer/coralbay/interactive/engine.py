"""The engine APIs the interactive package uses, imported in this one place.

Why: other engine modules are being moved between packages (volume_io -> io/, preprocess ->
grid, ...); whoever moves them fixes the imports here and nowhere else in `interactive`.
"""

from __future__ import annotations

from coralbay.atomic import atomic_file, write_text_atomic
from coralbay.bundle.loader import LoadedBundle, load_bundle
from coralbay.errors import CoralBayError, InputError, UsageError
from coralbay.grid.model_grid import grid_image, to_xyz, to_zyx
from coralbay.grid.resample import same_grid
from coralbay.grid.windows import WindowSettings
from coralbay.inference.fast_swin import enable_fast_swin
from coralbay.inference.preprocess import prepare
from coralbay.inference.segment import segment_image
from coralbay.inference.sliding_window import BACKGROUND_LOGIT, blend_slabs, compute_importance_map, plan_run, plan_windows, window_context
from coralbay.io.example_masks import write_accepted
from coralbay.io.label_maps import read_label_map
from coralbay.io.labels import LabelTable, load_label_table
from coralbay.io.volumes import read_volume, series_read, write_image
from coralbay.model.digest import encoder_digest
from coralbay.phantom import generate_phantom
from coralbay.review.metrics import dice_from_counts
from coralbay.review.surface import surface_metrics

__all__ = ["atomic_file", "write_text_atomic", "LoadedBundle", "load_bundle", "CoralBayError",
           "InputError", "UsageError", "BACKGROUND_LOGIT", "enable_fast_swin", "generate_phantom", "blend_slabs", "compute_importance_map", "plan_run", "plan_windows", "window_context", "WindowSettings", "LabelTable",
           "load_label_table", "grid_image", "prepare", "to_xyz", "to_zyx", "surface_metrics", "dice_from_counts",
           "read_label_map", "read_volume", "series_read", "same_grid", "write_image", "write_accepted",
           "encoder_digest", "segment_image"]
