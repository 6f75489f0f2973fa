"""CoralBay engine: Slicer-free segmentation, classification, review and export of CT volumes.

Light modules (catalog, manifest, progress protocol, labels, errors) import only the standard
library, so the Slicer module can list models and parse progress before PyTorch is installed.
"""

__version__ = "0.1.0"
