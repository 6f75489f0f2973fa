"""Decide which prediction label is compared with which reference label.

Three ways, in this order of precedence:
1. explicit pairs from a mapping file (`--labels MAPPING`, "pairs" key): exactly those pairs;
2. by structure name, when both sides have a label table (sidecar `<name>.labels.json`, DICOM SEG
   segment labels, `.seg.nrrd` segment names, or a table given in the mapping file); names are
   compared ignoring case, spaces, underscores and hyphens;
3. by label value: equal values are one structure; a value present on one side only is scored as
   missed on the other (Dice 0), unless the other side has a label table that does not list it.

A mapping file is JSON, either a plain label table (labels.py format, or {"1": "liver", ...}),
which then names the labels of every side that has no table of its own, or an object:

    {"prediction_labels": "pred.labels.json",    # optional, paths relative to the mapping file
     "reference_labels": "labels.json",
     "pairs": [{"prediction": "liver", "reference": 5}, {"prediction": 2, "reference": "kidney"}]}

A structure that a side's table lists but its map does not contain is "missing" there: it is
scored (Dice 0) and a warning says so. Labels left without a partner are listed as unmatched,
never silently dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from coralbay.errors import InputError
from coralbay.io.labels import Label, LabelTable, distinct_color, load_label_table
from coralbay.jsonio import read_json

MAPPING_KEYS = ("pairs", "prediction_labels", "reference_labels")


@dataclass(frozen=True)
class StructurePair:
    name: str
    prediction_value: int
    reference_value: int


@dataclass
class MappingSpec:
    """What a `--labels MAPPING` file says."""

    shared_table: LabelTable | None = None
    prediction_table: LabelTable | None = None
    reference_table: LabelTable | None = None
    pairs: list[tuple[int | str, int | str]] = field(default_factory=list)


@dataclass
class Matching:
    pairs: list[StructurePair]
    unmatched_prediction: list[Label]
    unmatched_reference: list[Label]
    method: str  # "mapping" | "name" | "value"
    warnings: list[str] = field(default_factory=list)


def load_mapping(path: str | Path) -> MappingSpec:
    """Read a mapping file (see the module docstring)."""
    p = Path(path)
    data = read_json(p, "label mapping file", InputError)
    if not (isinstance(data, dict) and any(k in data for k in MAPPING_KEYS)):
        return MappingSpec(shared_table=load_label_table(p))
    unknown = sorted(set(data) - set(MAPPING_KEYS))
    if unknown:
        raise InputError(f"The label mapping file {p} has unknown keys {', '.join(unknown)}; "
                         f"allowed are {', '.join(MAPPING_KEYS)}.")

    def table(key: str) -> LabelTable | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise InputError(f"\"{key}\" in {p} must be the path of a label table file.")
        return load_label_table(p.parent / value)

    pairs: list[tuple[int | str, int | str]] = []
    raw_pairs = data.get("pairs", [])
    if not isinstance(raw_pairs, list):
        raise InputError(f"\"pairs\" in {p} must be a list of {{\"prediction\": ..., \"reference\": ...}}.")
    for item in raw_pairs:
        if not (isinstance(item, dict) and {"prediction", "reference"} <= set(item)
                and all(_is_key(item[k]) for k in ("prediction", "reference"))):
            raise InputError(f"Each pair in {p} must be {{\"prediction\": value or name, "
                             "\"reference\": value or name}.")
        pairs.append((item["prediction"], item["reference"]))
    return MappingSpec(prediction_table=table("prediction_labels"),
                       reference_table=table("reference_labels"), pairs=pairs)


def _is_key(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return (isinstance(value, int) and value > 0) or (isinstance(value, str) and bool(value.strip()))


def normalized_name(name: str) -> str:
    """Names that differ only in case, spaces, underscores or hyphens are the same structure."""
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


class _Side:
    """One side's labels: values present in the data, and its table (if any)."""

    def __init__(self, role: str, present: Iterable[int], table: LabelTable | None) -> None:
        self.role = role
        self.present = set(int(v) for v in present if v)
        self.table = table
        declared = {lab.value for lab in table} if table else set()
        self.values = sorted(self.present | declared)

    def name(self, value: int) -> str:
        return self.table.name_of(value) if self.table else f"label {value}"

    def label(self, value: int) -> Label:
        found = self.table.by_value(value) if self.table else None
        return found or Label(value, f"label {value}", distinct_color(value - 1))

    def resolve(self, key: int | str) -> int:
        if isinstance(key, int):
            if key not in self.values:
                raise InputError(f"The mapping names {self.role} label {key}, which is neither in the "
                                 f"{self.role} nor in its label table.")
            return key
        found = self.table.by_name(key) if self.table else None
        if found is None:
            found = next((lab for lab in (self.table or [])
                          if normalized_name(lab.name) == normalized_name(key)), None)
        if found is None:
            raise InputError(f"The mapping names {self.role} structure {key!r}, which the {self.role}'s "
                             "label table does not list.")
        return found.value


def match_labels(pred_present: Iterable[int], ref_present: Iterable[int],
                 pred_table: LabelTable | None, ref_table: LabelTable | None,
                 spec: MappingSpec | None = None) -> Matching:
    """Pair prediction and reference labels (see the module docstring for the rules)."""
    spec = spec or MappingSpec()
    pred = _Side("prediction", pred_present, spec.prediction_table or pred_table or spec.shared_table)
    ref = _Side("reference", ref_present, spec.reference_table or ref_table or spec.shared_table)
    warnings: list[str] = []

    if spec.pairs:
        method = "mapping"
        raw = [(pred.resolve(p), ref.resolve(r)) for p, r in spec.pairs]
        for role, index in (("prediction", 0), ("reference", 1)):
            used = [pair[index] for pair in raw]
            if len(set(used)) != len(used):
                raise InputError(f"The label mapping uses a {role} label twice; each label may be "
                                 "paired once.")
    elif pred.table and ref.table and _names_in_common(pred, ref):
        method = "name"
        by_name = {normalized_name(ref.name(v)): v for v in ref.values}
        raw = [(v, by_name[normalized_name(pred.name(v))]) for v in pred.values
               if normalized_name(pred.name(v)) in by_name]
    else:
        method = "value"
        if pred.table and ref.table:
            warnings.append("The prediction's and the reference's label tables share no structure "
                            "name; labels were matched by value.")
        # A value missing on one side is a missed structure (scored, Dice 0), unless that side's
        # table shows it does not know the structure at all (then it is unmatched).
        raw = [(v, v) for v in sorted(set(pred.values) | set(ref.values))
               if (pred.table is None or v in pred.values) and (ref.table is None or v in ref.values)]

    pairs: list[StructurePair] = []
    for p, r in raw:
        in_pred, in_ref = p in pred.present, r in ref.present
        if not in_pred and not in_ref:
            if method == "mapping":
                warnings.append(f"{pred.name(p)} is empty in both the prediction and the reference; "
                                "it is not reported.")
            continue
        name = pred.name(p) if pred.table else ref.name(r)
        pairs.append(StructurePair(name, p, r))
        if not in_pred:
            warnings.append(f"{name} is missing from the prediction (it is in the reference).")
        elif not in_ref:
            warnings.append(f"{name} is missing from the reference (it is in the prediction).")

    paired_pred = {p for p, _ in raw}
    paired_ref = {r for _, r in raw}
    unmatched_pred = [pred.label(v) for v in sorted(pred.present - paired_pred)]
    unmatched_ref = [ref.label(v) for v in sorted(ref.present - paired_ref)]
    for role, labels in (("prediction", unmatched_pred), ("reference", unmatched_ref)):
        if labels:
            names = ", ".join(lab.name for lab in labels[:10]) + (" ..." if len(labels) > 10 else "")
            warnings.append(f"{len(labels)} {role} label(s) have no partner and are not scored: {names}.")
    pairs.sort(key=lambda s: s.prediction_value)
    return Matching(pairs, unmatched_pred, unmatched_ref, method, warnings)


def _names_in_common(pred: _Side, ref: _Side) -> bool:
    ref_names = {normalized_name(ref.name(v)) for v in ref.values}
    return any(normalized_name(pred.name(v)) in ref_names for v in pred.values)
