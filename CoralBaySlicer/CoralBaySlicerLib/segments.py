"""Label tables for segmentations that Slicer hands to the engine (compare, export).

The module writes a segmentation node as a label map plus its sidecar label table, from which the
engine takes names, colours and terminology. Label values: a segment that came from an engine
label map remembers its value (segment tag `LABEL_VALUE_TAG`) and keeps it, so a structure has
the same value in the model's output, in Slicer and in every export, and value-based matching
against a plain label map reference works; other segments get the smallest unused values.
This module builds the values and the table from what the segments carry in Slicer (names,
colours in 0..1, terminology entry string, remembered value).
"""

from __future__ import annotations

from typing import Iterable, Sequence

from coralbay.io.labels import Code, Label, LabelTable, Terminology, distinct_color


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


def is_unset_terminology(entry: str | None, default_entry: str | None = None) -> bool:
    """True when a segment's terminology entry is no chosen code: empty, unreadable, Slicer's
    placeholder for new segments (Tissue / Tissue, `Terminology.is_slicer_default`), or the entry the
    running Slicer gives a new segment (`default_entry`). Codes are compared, not texts: the context
    names in the entry differ between Slicer versions."""
    parsed = terminology_from_slicer_string(entry)
    if parsed is None or parsed.is_slicer_default():
        return True
    default = terminology_from_slicer_string(default_entry)
    return default is not None and _code_key(parsed) == _code_key(default)


def _code_key(terminology: Terminology):
    """Scheme and value of each code: meanings are display text."""
    return tuple(None if c is None else (c[0], c[1]) for c in (terminology.category, terminology.type, terminology.modifier))


def _code(text: str) -> Code | None:
    fields = text.split("^")
    if len(fields) != 3 or not all(f.strip() for f in fields):
        return None
    return (fields[0].strip(), fields[1].strip(), fields[2].strip())


def color_255(color: Sequence[float]) -> tuple[int, int, int]:
    """A colour in 0..1 (Slicer) as 0..255 (label tables)."""
    r, g, b = (min(255, max(0, int(round(float(c) * 255)))) for c in list(color)[:3])
    return (r, g, b)


LABEL_VALUE_TAG = "CoralBay.LabelValue"


def export_values(remembered: Sequence[str | None]) -> list[int]:
    """Label values for segments in order: the remembered value (tag text) where it is a valid,
    not yet used value, else the smallest value not used by any segment."""
    values: list[int | None] = []
    used: set[int] = set()
    for text in remembered:
        value = int(text) if text and text.strip().isdigit() and 1 <= int(text) <= 65535 else None
        values.append(value if value is not None and value not in used else None)
        if values[-1] is not None:
            used.add(values[-1])
    free = (v for v in range(1, 65536) if v not in used)
    return [v if v is not None else next(free) for v in values]


def label_table_for_segments(segments: Iterable[tuple[str, Sequence[float], str | None]],
                             values: Sequence[int] | None = None) -> LabelTable:
    """The label table of segments exported in this order, with `values` (default n+1 for the n-th).

    `segments` yields (name, colour in 0..1, terminology entry string or None). Names must be
    unique (ignoring case): the table and Slicer's export both identify a segment by its name.
    """
    labels = []
    seen: set[str] = set()
    for index, (name, color, terminology) in enumerate(segments):
        name = name.strip() or f"Segment {index + 1}"
        if name.lower() in seen:
            raise ValueError(f"Two segments are named {name!r}; rename one before comparing or exporting.")
        seen.add(name.lower())
        value = values[index] if values is not None else index + 1
        labels.append(Label(value, name, color_255(color), terminology_from_slicer_string(terminology)))
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


def find_label(known: LabelTable | None, name: str) -> Label | None:
    """The label of `known` named `name` (ignoring case and surrounding blanks), or None."""
    wanted = name.strip().lower()
    return next((lab for lab in known if lab.name.lower() == wanted), None) if known is not None else None


def structure_appearance(name: str, known: LabelTable | None, index: int) -> tuple[tuple[float, float, float], str | None]:
    """Colour (0..1) and terminology entry string (or None) of a structure named in the Interactive
    section: those of the label of that name (ignoring case) in `known`, else a distinct colour."""
    label = find_label(known, name)
    color = label.color if label is not None else distinct_color(index)
    entry = label.terminology.slicer_string() if label is not None and label.terminology is not None else None
    return (color[0] / 255.0, color[1] / 255.0, color[2] / 255.0), entry


_SIDES = ("left", "right")


def slicer_label_candidates(name: str) -> list[str]:
    """The `3dSlicerLabel`s a structure name may have in Slicer's terminologies, best first: the name
    as typed, in lower case, with blanks for '_' and '-', and with a side moved to the front
    ("kidney_left" -> "left kidney", the form of Slicer's general anatomy list)."""
    typed = " ".join(name.split())
    words = typed.lower().replace("_", " ").replace("-", " ").split()
    candidates = [typed, typed.lower(), " ".join(words)]
    if len(words) > 1 and words[-1] in _SIDES:
        candidates.append(" ".join([words[-1], *words[:-1]]))
    return [c for i, c in enumerate(candidates) if c and c not in candidates[:i]]
