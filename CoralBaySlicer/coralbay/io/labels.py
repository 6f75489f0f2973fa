"""Label tables: value -> name, colour and standard (DICOM/SNOMED CT) terminology.

One structure shared by bundles, the phantom, review, export and the Slicer module, so names,
colours and codes travel unchanged from the model to a DICOM SEG or a Slicer segmentation.
Standard library only.

JSON form (a label table file, or the "labels" list of a bundle manifest):

    {"labels": [{"value": 1, "name": "liver", "color": [221, 130, 101],
                 "terminology": {"category": ["SCT", "123037004", "Anatomical Structure"],
                                 "type": ["SCT", "10200004", "Liver"],
                                 "modifier": ["SCT", "24028007", "Right"]}}]}

A code is [coding scheme designator, code value, code meaning]; "modifier" is optional.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from coralbay.errors import CoralBayError
from coralbay.jsonio import read_json

Code = tuple[str, str, str]

ANATOMICAL_STRUCTURE: Code = ("SCT", "123037004", "Anatomical Structure")
TISSUE: Code = ("SCT", "85756007", "Tissue")
MORPHOLOGICALLY_ABNORMAL: Code = ("SCT", "49755003", "Morphologically Altered Structure")


@dataclass(frozen=True)
class Terminology:
    category: Code
    type: Code
    modifier: Code | None = None

    def to_dict(self) -> dict:
        out = {"category": list(self.category), "type": list(self.type)}
        if self.modifier:
            out["modifier"] = list(self.modifier)
        return out

    @classmethod
    def from_dict(cls, data: dict, where: str = "label") -> "Terminology":
        def code(key: str, required: bool = True) -> Code | None:
            value = data.get(key)
            if value is None and not required:
                return None
            if (not isinstance(value, (list, tuple)) or len(value) != 3
                    or not all(isinstance(v, str) and v for v in value)):
                raise CoralBayError(f"The {key} code of {where} must be [scheme, value, meaning].")
            return (value[0], value[1], value[2])

        return cls(code("category"), code("type"), code("modifier", required=False))

    def slicer_string(self) -> str:
        """Terminology entry string as Slicer's segment "TerminologyEntry" tag stores it."""
        def fmt(c: Code | None) -> str:
            return f"{c[0]}^{c[1]}^{c[2]}" if c else "^^"
        return ("Segmentation category and type - 3D Slicer General Anatomy list~"
                f"{fmt(self.category)}~{fmt(self.type)}~{fmt(self.modifier)}"
                "~Anatomic codes - DICOM master list~^^~^^")

    def is_slicer_default(self) -> bool:
        """True for the entry 3D Slicer gives every new segment (Tissue / Tissue, no modifier): a
        placeholder, not a code anyone chose for the structure."""
        return (self.modifier is None and tuple(self.category[:2]) == SLICER_DEFAULT_CODE
                and tuple(self.type[:2]) == SLICER_DEFAULT_CODE)


# Scheme and value of Slicer's default segment terminology ("Tissue" as category and as type).
SLICER_DEFAULT_CODE = ("SCT", "85756007")


@dataclass(frozen=True)
class Label:
    value: int
    name: str
    color: tuple[int, int, int] = (128, 128, 128)
    terminology: Terminology | None = None

    def to_dict(self) -> dict:
        out: dict = {"value": self.value, "name": self.name, "color": list(self.color)}
        if self.terminology:
            out["terminology"] = self.terminology.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Label":
        if not isinstance(data, dict):
            raise CoralBayError("Each label must be an object with value, name and color.")
        value = data.get("value")
        name = data.get("name")
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
            raise CoralBayError(f"Label value {value!r} must be an integer from 1 to 65535.")
        if not isinstance(name, str) or not name.strip():
            raise CoralBayError(f"Label {value} needs a non-empty name.")
        color = data.get("color", [128, 128, 128])
        if (not isinstance(color, (list, tuple)) or len(color) != 3
                or not all(isinstance(c, int) and 0 <= c <= 255 for c in color)):
            raise CoralBayError(f"The colour of label {name!r} must be three integers 0-255.")
        term = data.get("terminology")
        terminology = Terminology.from_dict(term, where=f"label {name!r}") if term else None
        return cls(value, name.strip(), (color[0], color[1], color[2]), terminology)


@dataclass
class LabelTable:
    """An ordered set of labels with unique values and names (background 0 is implicit)."""

    labels: list[Label] = field(default_factory=list)

    def __post_init__(self) -> None:
        values = [lab.value for lab in self.labels]
        names = [lab.name.lower() for lab in self.labels]
        if len(set(values)) != len(values):
            raise CoralBayError("A label table lists the same label value twice.")
        if len(set(names)) != len(names):
            raise CoralBayError("A label table lists the same label name twice.")

    def __iter__(self) -> Iterator[Label]:
        return iter(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def by_value(self, value: int) -> Label | None:
        return next((lab for lab in self.labels if lab.value == value), None)

    def by_name(self, name: str) -> Label | None:
        key = name.strip().lower()
        return next((lab for lab in self.labels if lab.name.lower() == key), None)

    def name_of(self, value: int) -> str:
        lab = self.by_value(value)
        return lab.name if lab else f"label {value}"

    def subset(self, names: Iterable[str]) -> "LabelTable":
        """The labels with the given names, in table order; unknown names are an error."""
        wanted = [n.strip() for n in names if n.strip()]
        unknown = [n for n in wanted if self.by_name(n) is None]
        if unknown:
            known = ", ".join(lab.name for lab in self.labels)
            raise CoralBayError(f"Unknown structure(s) {', '.join(unknown)}; this model has: {known}.")
        keys = {n.lower() for n in wanted}
        return LabelTable([lab for lab in self.labels if lab.name.lower() in keys])

    def to_dict(self) -> dict:
        return {"labels": [lab.to_dict() for lab in self.labels]}

    @classmethod
    def from_dict(cls, data: dict | list) -> "LabelTable":
        items = data.get("labels") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise CoralBayError("A label table needs a list of labels.")
        return cls([Label.from_dict(item) for item in items])

    @classmethod
    def generic(cls, values: Iterable[int]) -> "LabelTable":
        """A table for label maps that come without one: names "label N", distinct colours."""
        return cls([Label(int(v), f"label {int(v)}", distinct_color(i)) for i, v in enumerate(sorted(set(values))) if v])


def distinct_color(index: int) -> tuple[int, int, int]:
    """A colour from a fixed, well-separated palette (for labels without a declared colour)."""
    palette = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
               (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
               (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
               (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128)]
    return palette[index % len(palette)]


def label_table_path_for(label_map: str | os.PathLike) -> Path:
    """The sidecar label table that the engine writes beside a label map: `<name>.labels.json`."""
    p = Path(label_map)
    name = p.name
    for ext in (".nii.gz", ".seg.nrrd", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return p.with_name(name + ".labels.json")


def load_label_table(path: str | os.PathLike) -> LabelTable:
    """Read a label table file (JSON as above, or a plain {"1": "liver", ...} name mapping)."""
    p = Path(path)
    data = read_json(p, "label table")
    if isinstance(data, dict) and "labels" not in data:
        try:
            return LabelTable([Label(int(k), str(v), distinct_color(i))
                               for i, (k, v) in enumerate(data.items())])
        except ValueError:
            raise CoralBayError(f"The label table {p} maps non-integer keys.") from None
    return LabelTable.from_dict(data)


FOLDER_TABLE_NAME = "labels.json"  # TotalSegmentator's habit: one {"1": "spleen", ...} table beside its label maps


def folder_label_table(label_map: str | os.PathLike) -> LabelTable | None:
    """The label table named `labels.json` in the label map's folder (TotalSegmentator style), if any."""
    path = Path(label_map).parent / FOLDER_TABLE_NAME
    return load_label_table(path) if path.is_file() else None


def find_label_table(label_map: str | os.PathLike) -> LabelTable | None:
    """The sidecar table of a label map written by the engine, if there is one."""
    sidecar = label_table_path_for(label_map)
    return load_label_table(sidecar) if sidecar.is_file() else None
