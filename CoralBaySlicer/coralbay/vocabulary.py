"""The engine's fixed vocabularies as string-valued enums.

Why str-valued (as highdicom's enums are): a member equals its plain string, so manifests, JSON
results, argparse choices and the Slicer module (which compares job states before the engine's
heavy parts are importable) keep working with the strings, while code names the members and a
typo fails at import instead of silently comparing false. Standard library only.
"""

from __future__ import annotations

from enum import Enum


class StrEnum(str, Enum):
    """An enum whose members are their string values (`str(member)` is the value)."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)


class Task(StrEnum):
    """What a bundle's head does (the manifest's `task`)."""

    SEGMENTATION = "segmentation"
    CLASSIFICATION = "classification"


class JobState(StrEnum):
    """Where a background engine run stands (the Slicer module's jobs and processes)."""

    PREPARED = "prepared"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ExportFormat(StrEnum):
    """`coralbay export --format`."""

    NIFTI = "nifti"
    NRRD = "nrrd"
    SEG_NRRD = "seg.nrrd"
    DICOM_SEG = "dicom-seg"
    STL = "stl"
    OBJ = "obj"


class RestoreMethod(StrEnum):
    """How labels go from the model grid back to the input grid."""

    LINEAR = "linear"    # argmax of linearly resampled class probabilities
    NEAREST = "nearest"  # the model grid's argmax labels, nearest neighbour


class BlendMode(StrEnum):
    """How overlapping sliding windows are weighted (MONAI's `compute_importance_map` modes)."""

    GAUSSIAN = "gaussian"
    CONSTANT = "constant"
