"""Label tables for segmentations that Slicer hands to the engine (compare, export).

Slicer exports the segments of a segmentation node as a label map whose value n+1 is the n-th
segment; the engine matches structures and writes names, colours and terminology from the sidecar
label table. This module builds that table from what the segments carry in Slicer (names, colours in
0..1, and the terminology entry string), so nothing is lost on the way to a DICOM SEG or a metric.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from coralbay.labels import Code, Label, LabelTable, Terminology


def terminology_from_slicer_string(text: str | None) -> Terminology | None:
    """Parse Slicer's terminology entry string ("context~category~type~modifier~...").

    Each code is "scheme^value^meaning"; an empty modifier is "^^". None when the string does not
    carry at least a category and a type.
    """
    if not text:
        return None
    parts = text.split("~")
    if len(parts) < 3:
        return None
    category, type_ = _code(parts[1]), _code(parts[2])
    if category is None or type_ is None:
        return None
    modifier = _code(parts[3]) if len(parts) > 3 else None
    return Terminology(category, type_, modifier)


def _code(text: str) -> Code | None:
    fields = text.split("^")
    if len(fields) != 3 or not all(f.strip() for f in fields):
        return None
    return (fields[0].strip(), fields[1].strip(), fields[2].strip())


def color_255(color: Sequence[float]) -> tuple[int, int, int]:
    """A colour in 0..1 (Slicer) as 0..255 (label tables)."""
    r, g, b = (min(255, max(0, int(round(float(c) * 255)))) for c in list(color)[:3])
    return (r, g, b)


def label_table_for_segments(segments: Iterable[tuple[str, Sequence[float], str | None]]) -> LabelTable:
    """The label table of segments exported in this order: value n+1 is the n-th segment.

    `segments` yields (name, colour in 0..1, terminology entry string or None). Names that repeat
    (label tables need unique names) get " (2)", " (3)"... appended.
    """
    labels = []
    seen: set[str] = set()
    for index, (name, color, terminology) in enumerate(segments):
        unique = _unique(name.strip() or f"Segment {index + 1}", seen)
        labels.append(Label(index + 1, unique, color_255(color), terminology_from_slicer_string(terminology)))
    return LabelTable(labels)


def label_table_for_colors(entries: Iterable[tuple[int, str, Sequence[float]]]) -> LabelTable:
    """The label table of a label map volume from its colour table entries (value, name, colour 0..1)."""
    labels = []
    seen: set[str] = set()
    for value, name, color in entries:
        if value <= 0:
            continue
        labels.append(Label(int(value), _unique(name.strip() or f"label {value}", seen), color_255(color)))
    return LabelTable(labels)


def _unique(name: str, seen: set[str]) -> str:
    candidate, n = name, 1
    while candidate.lower() in seen:
        n += 1
        candidate = f"{name} ({n})"
    seen.add(candidate.lower())
    return candidate
