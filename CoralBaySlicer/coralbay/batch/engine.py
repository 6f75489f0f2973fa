"""The engine APIs that batch uses, imported in this one place.

Why: the engine's modules move between packages from time to time (volume_io -> io/, catalog ->
bundle/); keeping every import of them here means such a move touches one file of this package.
Importing this module loads torch, so only worker-side code (case.py) and the results writer use it.
"""

from __future__ import annotations

from coralbay import __version__ as engine_version
from coralbay.atomic import TEMP_MARKER, atomic_dir, atomic_file, write_text_atomic
from coralbay.bundle.loader import LoadedBundle, load_bundle
from coralbay.bundle.manifest import MANIFEST_NAME, read_manifest
from coralbay.bundle.catalog import resolve_model
from coralbay.device import select_device
from coralbay.inference.classify import classify_image, classify_prepared, prepare_classification
from coralbay.inference.preprocess import Prepared
from coralbay.inference.segment import PreparedScan, prepare_segmentation, segment_image, segment_prepared
from coralbay.io.labels import label_table_path_for
from coralbay.io.label_maps import write_label_map
from coralbay.review import DEFAULT_TOLERANCE_MM, compare_label_maps
from coralbay.review.report import metrics_json_text
from coralbay.io.volumes import VOLUME_SUFFIXES, ct_intensity_warning, read_volume, series_read

__all__ = ["DEFAULT_TOLERANCE_MM", "LoadedBundle", "MANIFEST_NAME", "Prepared", "PreparedScan", "TEMP_MARKER", "VOLUME_SUFFIXES",
           "atomic_dir", "atomic_file", "classify_image", "classify_prepared", "compare_label_maps",
           "ct_intensity_warning", "engine_version", "label_table_path_for", "load_bundle", "metrics_json_text",
           "prepare_classification", "prepare_segmentation", "read_manifest", "read_volume", "resolve_model",
           "series_read", "segment_image", "segment_prepared", "select_device", "write_label_map", "write_text_atomic"]
