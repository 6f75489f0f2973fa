"""Training task heads on the CoralBay encoder: segmentation decoders and linear classification probes.

Why it lives in the engine: the demo bundles are trained by the project's own command, and users
train heads for their own structures with the same preprocessing (`coralbay.inference.preprocess.prepare`)
that inference uses, so a trained head sees at inference exactly what it saw in training.

The API: `api.train_segmentation_bundle(config)` and `api.train_classification_bundle(config)`
with the dataclasses of `config`. Modules: `data` (cases from folders, CSV files or generated
phantoms, with input checks), `augment` (random crops and flips/rotations/intensity changes),
`loss`, `metrics` (AUROC; Dice is `coralbay.review.metrics`'s), `segmentation` (the decoder
training loop with checkpoints), `classification` (the linear probe), `evaluate` (held-out
phantoms through the full inference path), `start` (starting weights), `output` (the bundle
written at the end).
"""
