"""Interactive segmentation on CoralBay features: a warm session per scan that answers prompts.

features: encoder features of the scan on the model grid, cached on disk
prompts:  points, scribbles, box, a segment to refine; validated
head:     the online head trained on the prompted voxels
refine:   full-resolution mask, uncertainty, next click
session:  the warm session (structures, undo/redo/accept, accepted examples)
protocol: `coralbay interact` JSON lines on stdin/stdout
simulate: the simulated user of `coralbay eval-interactive` and its seeded baseline
"""
