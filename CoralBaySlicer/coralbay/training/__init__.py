"""Training task heads on the CoralBay encoder: segmentation decoders and linear classification probes.

Why it lives in the engine: the demo bundles are trained by the project's own command, and users
train heads for their own structures with the same preprocessing (`coralbay.inference.preprocess.prepare`)
that inference uses, so a trained head sees at inference exactly what it saw in training.

Modules: `data` (cases from folders, CSV files or generated phantoms, with input checks),
`augment` (random crops and flips/rotations/intensity changes), `loss`, `metrics` (Dice, AUROC),
`segmentation` (the decoder training loop with checkpoints), `classification` (the linear probe),
`output` (the bundle written at the end).
"""
