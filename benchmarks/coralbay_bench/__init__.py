"""`coralbay bench`: our segmentation path against the plain MONAI path, each in its own process.

Modules: `memory` (peak resident and GPU memory of a block), `flops` (model FLOPs per window),
`machine` (what the figures were measured on), `monai_path` and `our_path` (the two pipelines,
timed per stage), `worker` (one path in a child process), `agreement` (per-structure Dice),
`inputs` (volume and bundle preparation), `runner` (interleaved repeats, medians, ratios, JSON).
"""

# How the MONAI baseline goes back to the input grid; the first is MONAI's own bundles' recipe.
BASELINE_INVERT_MODES = ("probabilities", "labels")
