"""Review of a prediction against ground truth: metrics, difference maps and a report.

`compare_label_maps(pred_path, ref_path, output_dir, ...)` is the entry point for the command line
and the Slicer module; the modules beside it each do one step (grids, matching, metrics, surface,
diffmaps, report, overview).
"""

from coralbay.review.compare import DEFAULT_TOLERANCE_MM, OUTPUT_FILES, compare_label_maps

__all__ = ["DEFAULT_TOLERANCE_MM", "OUTPUT_FILES", "compare_label_maps"]
