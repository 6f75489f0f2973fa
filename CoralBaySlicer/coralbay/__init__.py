"""CoralBay engine: Slicer-free segmentation, classification, review and export of CT volumes.

The top level reads as the pipeline (docs/architecture.md): io, grid, bundle, model, inference,
review, export, training, commands. Light modules (bundle.catalog, bundle.manifest, progress,
io.labels, errors, vocabulary) import only the standard library, so the Slicer module can list
models and parse progress before PyTorch is installed.
"""

__version__ = "0.1.0"
