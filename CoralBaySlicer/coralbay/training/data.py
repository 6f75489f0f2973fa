"""Training data: image/label pairs from a folder, rows of a CSV file, or generated phantoms.

Every case goes through `coralbay.inference.preprocess.prepare`, the function inference uses, so a head is
trained on exactly what it will see. Label maps go onto the model grid by nearest neighbour
through physical space (never by array index), so a label map stored in another orientation
than its image is still placed correctly, while one on a different grid is refused: that is
almost always a pairing mistake, and training on it would teach the model wrong anatomy.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from coralbay.errors import InputError, UsageError
from coralbay.grid.model_grid import to_xyz
from coralbay.grid.resample import same_grid
from coralbay.inference.preprocess import prepare
from coralbay.io.example_masks import read_mask
from coralbay.io.examples import ExampleScan, read_examples
from coralbay.io.label_maps import read_label_map
from coralbay.io.labels import Label, LabelTable, distinct_color, find_label_table
from coralbay.io.volumes import VOLUME_SUFFIXES, read_volume

# A label map beside its image is called CASE<tag>.<ext>, e.g. ct01_labels.nii.gz for ct01.nii.gz.
LABEL_TAGS = ("_labels", "_label", "_seg", "_mask", "-labels", "-label", "-seg")
_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")  # nnU-Net's image channel suffix (case_0000.nii.gz)

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class PairPaths:
    """One training case on disk: a CT and its label map."""

    name: str
    image: Path
    labels: Path


@dataclass
class Case:
    """A case on the model grid, ready for cropping."""

    name: str
    image: np.ndarray   # float32 (X, Y, Z), intensities in [0, 1] as `prepare` gives them
    target: np.ndarray  # uint8 (X, Y, Z): 0 background, i for the i-th label of the label table


def _volume_stem(path: Path) -> str | None:
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _volume_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if (p.is_file() or p.is_dir()) and not p.name.startswith(".") and _volume_stem(p))


def find_pairs(folder: str | os.PathLike) -> list[PairPaths]:
    """Image/label pairs of a training folder.

    Two layouts: `imagesTr/` + `labelsTr/` (nnU-Net/MSD style, images may carry the `_0000`
    channel suffix), or images and label maps side by side as `CASE.nii.gz` + `CASE_labels.nii.gz`
    (also `_label`, `_seg`, `_mask`). An image without a label map, or the reverse, is refused.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"The training folder {folder} does not exist.")
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    if (folder / "imagesTr").is_dir() or (folder / "labelsTr").is_dir():
        for p in _volume_files(folder / "imagesTr"):
            images[_CHANNEL_SUFFIX.sub("", _volume_stem(p) or "")] = p
        for p in _volume_files(folder / "labelsTr"):
            labels[_volume_stem(p) or ""] = p
    else:
        for p in _volume_files(folder):
            stem = _volume_stem(p) or ""
            tag = next((t for t in LABEL_TAGS if stem.endswith(t) and len(stem) > len(t)), None)
            if tag:
                labels[stem[: -len(tag)]] = p
            else:
                images[stem] = p
    if not images and not labels:
        raise InputError(f"The training folder {folder} holds no images and label maps (expected "
                         "imagesTr/ and labelsTr/, or CASE.nii.gz beside CASE_labels.nii.gz).")
    for name, path in sorted(images.items()):
        if name not in labels:
            raise InputError(f"The image {path} has no label map (expected {name}_labels with the "
                             "same extension beside it, or the same name in labelsTr/).")
    for name, path in sorted(labels.items()):
        if name not in images:
            raise InputError(f"The label map {path} has no matching image named {name}.")
    return [PairPaths(name, images[name], labels[name]) for name in sorted(images)]


def dataset_json_table(folder: Path) -> LabelTable | None:
    """The label names of an nnU-Net/MSD `dataset.json`, if the folder has one."""
    path = folder / "dataset.json"
    if not path.is_file():
        return None
    try:
        mapping = json.loads(path.read_text(encoding="utf-8")).get("labels")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise InputError(f"The file {path} is not readable JSON ({exc}).") from None
    if not isinstance(mapping, dict):
        return None
    pairs = []
    for key, value in mapping.items():  # MSD: {"1": "liver"}; nnU-Net v2: {"liver": 1}
        number, name = (key, value) if str(key).isdigit() else (value, key)
        if isinstance(number, (int, str)) and str(number).isdigit() and int(number) > 0:
            pairs.append((int(number), str(name)))
    return LabelTable([Label(v, n, distinct_color(i)) for i, (v, n) in enumerate(sorted(pairs))])


def check_pair(image: sitk.Image, labels: sitk.Image, pair: PairPaths) -> None:
    """Refuse a label map that does not lie on its image's grid (one sentence)."""
    if not same_grid(image, labels, tol=1e-3):
        raise InputError(f"The label map {pair.labels} does not lie on the grid of its image {pair.image} "
                         f"(size {labels.GetSize()} vs {image.GetSize()}, spacing, origin or direction "
                         "differ); resample it onto the image first.")


def check_label_values(values: Iterable[int], table: LabelTable, source: str) -> None:
    unknown = sorted(int(v) for v in values if v and table.by_value(int(v)) is None)
    if unknown:
        known = ", ".join(f"{lab.value} {lab.name}" for lab in table) or "none"
        raise InputError(f"The label map {source} has label value(s) {', '.join(map(str, unknown))} "
                         f"that the label table does not list (known: {known}).")


@dataclass(frozen=True)
class LabelPlan:
    """Which structures a model learns: the label table of the data, minus merged labels.

    `merges` maps a label value of the data to the value it is trained as (another label's
    value, or 0 for background), e.g. liver lesions trained as liver.
    """

    table: LabelTable                    # what the model outputs
    merges: tuple[tuple[int, int], ...] = ()

    def lookup(self) -> np.ndarray:
        """Label value of the data -> class index (0 background, i for the table's i-th label)."""
        values = [lab.value for lab in self.table] + [src for src, _ in self.merges]
        lut = np.zeros(max(values + [0]) + 1, dtype=np.uint8)
        for index, lab in enumerate(self.table, start=1):
            lut[lab.value] = index
        for src, dst in self.merges:
            lut[src] = lut[dst] if dst else 0
        return lut


def plan_labels(table: LabelTable, merge_text: str | None = None) -> LabelPlan:
    """A LabelPlan from `--merge SRC=DST[,SRC=DST]` (names or values; DST may be 0 or background)."""
    if not merge_text:
        return LabelPlan(table)

    def find(name: str, allow_background: bool):
        key = name.strip()
        if allow_background and key.lower() in ("0", "background"):
            return None
        lab = table.by_name(key) or (table.by_value(int(key)) if key.isdigit() else None)
        if lab is None:
            raise UsageError(f"--merge names {key!r}, which is not in the label table "
                             f"({', '.join(lab.name for lab in table)}).")
        return lab

    merges = []
    for part in merge_text.split(","):
        if part.count("=") != 1:
            raise UsageError("--merge must look like liver_lesion=liver (several separated by commas).")
        src_name, dst_name = part.split("=")
        src, dst = find(src_name, False), find(dst_name, True)
        if dst is not None and dst.value == src.value:
            raise UsageError(f"--merge cannot merge {src.name} into itself.")
        merges.append((src.value, dst.value if dst else 0))
    dropped = {src for src, _ in merges}
    if any(dst in dropped for _, dst in merges):
        raise UsageError("--merge cannot merge into a label that is itself merged away.")
    kept = LabelTable([lab for lab in table if lab.value not in dropped])
    if not len(kept):
        raise UsageError("--merge leaves no structure to train.")
    return LabelPlan(kept, tuple(merges))


def prepare_case(name: str, image: sitk.Image, labels: sitk.Image, preprocessing: dict,
                 plan: LabelPlan | LabelTable) -> Case:
    """Image and labels on the model grid; label values become class indices."""
    plan = plan if isinstance(plan, LabelPlan) else LabelPlan(plan)
    prepared = prepare(image, preprocessing)
    moved = sitk.Resample(labels, prepared.grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                          labels.GetPixelID())
    values = to_xyz(sitk.GetArrayViewFromImage(moved))
    lut = plan.lookup()
    safe = np.minimum(values, len(lut) - 1)  # values outside the table were refused earlier
    return Case(name, prepared.array, np.ascontiguousarray(lut[safe]))


def load_folder_cases(folder: str | os.PathLike, preprocessing: dict, table: LabelTable | None = None,
                      progress: Progress | None = None, merge: str | None = None) -> tuple[list[Case], LabelPlan]:
    """Read, check and prepare every pair of a training folder.

    The label table is `table` if given, else the first label map's `<name>.labels.json`, else
    the folder's `dataset.json`, else generic names for the values found.
    """
    pairs = find_pairs(folder)
    if table is None:
        table = find_label_table(pairs[0].labels) or dataset_json_table(Path(folder))
    if table is not None and len(table) == 0:
        raise InputError("The label table lists no labels.")
    raw: list[tuple[PairPaths, sitk.Image, sitk.Image]] = []
    found: set[int] = set()
    for i, pair in enumerate(pairs):
        image = read_volume(pair.image)
        labels = read_label_map(pair.labels)
        check_pair(image, labels, pair)
        values = set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist())
        if table is not None:
            check_label_values(values, table, str(pair.labels))
        found |= values
        raw.append((pair, image, labels))
        if progress:
            progress((i + 1) / (2 * len(pairs)), f"read {pair.name}")
    if table is None:
        table = LabelTable.generic(found)
        if len(table) == 0:
            raise InputError(f"The label maps in {folder} are all empty (only background).")
    plan = plan_labels(table, merge)
    cases = []
    for i, (pair, image, labels) in enumerate(raw):
        cases.append(prepare_case(pair.name, image, labels, preprocessing, plan))
        if progress:
            progress(0.5 + (i + 1) / (2 * len(raw)), f"prepared {pair.name}")
    return cases, plan


def example_label_table(scans: Sequence[ExampleScan], known: LabelTable | None = None) -> LabelTable:
    """One table for the structures accepted across scans, by name (a user may have given the same
    structure different values on different scans): values 1..N in order of first acceptance,
    colours and terminology from `known` (e.g. the starting bundle's table) where it has the name."""
    names: list[str] = []
    for scan in scans:
        for structure in sorted(scan.structures, key=lambda s: s.value):
            if structure.name not in names:
                names.append(structure.name)
    labels = []
    for i, name in enumerate(names):
        same = known.by_name(name) if known is not None else None
        labels.append(Label(i + 1, name, same.color if same else distinct_color(i),
                            same.terminology if same else None))
    return LabelTable(labels)


def load_example_cases(folder: str | os.PathLike, preprocessing: dict, known: LabelTable | None = None,
                       progress: Progress | None = None) -> tuple[list[Case], LabelPlan]:
    """Cases from the structures a user accepted in interactive sessions (`coralbay.io.examples`):
    each scan with its accepted masks painted into one label map (names mapped by `example_label_table`).
    Voxels no structure covers are background, as the accepted structures of a scan are mutually exclusive."""
    scans = [scan for scan in read_examples(folder) if scan.structures]
    if not scans:
        raise InputError(f"The folder {folder} holds no accepted structures (expected <scan id>/example.json "
                         "beside the masks, as `coralbay interact --examples` writes them).")
    table = example_label_table(scans, known)
    plan = LabelPlan(table)
    cases = []
    for i, scan in enumerate(scans):
        if not scan.scan or not Path(scan.scan).exists():
            raise InputError(f"The scan {scan.scan or '(not recorded)'} of the examples in {scan.folder} "
                             "no longer exists; put it back or remove that folder.")
        image = read_volume(scan.scan)
        values = np.zeros(image.GetSize()[::-1], np.uint8)
        for structure in sorted(scan.structures, key=lambda s: s.value):
            mask = read_mask(structure)
            if mask.shape != values.shape:
                raise InputError(f"The accepted mask {structure.mask} does not lie on the grid of its scan {scan.scan}.")
            values[mask] = table.by_name(structure.name).value
        labels = sitk.GetImageFromArray(values)
        labels.CopyInformation(image)
        cases.append(prepare_case(scan.scan_id, image, labels, preprocessing, plan))
        if progress:
            progress((i + 1) / len(scans), f"prepared the examples of {scan.scan_id}")
    return cases, plan


def parse_seeds(text: str) -> list[int]:
    """Seeds from text like "0-39" or "0-9,100,200-204" (inclusive ranges)."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise UsageError(f"The seed list {text!r} must look like 0-39 or 0-9,100,200-204.")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if hi < lo:
            raise UsageError(f"The seed range {part} runs backwards.")
        seeds.extend(range(lo, hi + 1))
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"The seed list {text!r} names a seed twice.")
    return seeds


def phantom_cases(seeds: Sequence[int], preprocessing: dict, progress: Progress | None = None,
                  merge: str | None = None, **phantom_options) -> tuple[list[Case], LabelPlan]:
    """Generate phantoms (each with its own random spacing and direction unless fixed by
    `phantom_options`) and prepare them like any scan."""
    from coralbay.phantom import PHANTOM_LABELS, generate_phantom

    plan = plan_labels(PHANTOM_LABELS, merge)
    cases = []
    for i, seed in enumerate(seeds):
        phantom = generate_phantom(int(seed), **phantom_options)
        cases.append(prepare_case(f"phantom-{seed}", phantom.image, phantom.labels, preprocessing, plan))
        if progress:
            progress((i + 1) / len(seeds), f"phantom {seed}")
    return cases, plan


def split_validation(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """A deterministic (seeded) split into training and validation items."""
    if fraction <= 0 or len(items) < 2:
        return list(items), []
    order = np.random.default_rng(seed).permutation(len(items))
    count = min(len(items) - 1, max(1, int(round(fraction * len(items)))))
    val = sorted(order[:count].tolist())
    return [x for i, x in enumerate(items) if i not in val], [items[i] for i in val]


# ---------------------------------------------------------------------------------------------
# Classification: rows of a CSV file (image, label[, x, y, z]) or phantoms
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Example:
    """One loaded example: the image, its class, and the point the class refers to (if any)."""

    name: str
    image: sitk.Image
    label: str
    point_lps: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class ClassificationItem:
    """A source of examples for a classification head: a CSV row, or a phantom seed.

    A phantom's class is known only once it is generated (whether a lesion was painted), and a
    lesion-point item gives two examples (the lesion's region, and the same region of the
    phantom's lesion-free twin), so `examples()` loads them.
    """

    name: str
    label: str | None
    image: Path | None = None                        # a file or DICOM folder, or None for a phantom
    point_lps: tuple[float, float, float] | None = None
    phantom_seed: int | None = None
    lesion_points: bool = False

    def examples(self) -> Iterator[Example]:
        if self.image is not None:
            yield Example(self.name, read_volume(self.image), str(self.label), self.point_lps)
            return
        from coralbay.phantom import generate_phantom
        seed = int(self.phantom_seed)  # type: ignore[arg-type]
        if not self.lesion_points:
            phantom = generate_phantom(seed)
            yield Example(self.name, phantom.image, LESION_CLASSES[int(phantom.has_lesion)])
            return
        # The same anatomy, noise and grid with and without lesions (the generator draws them
        # from independent streams): the two regions differ only by the lesion.
        with_lesion = generate_phantom(seed, lesions=True)
        if not with_lesion.lesion_centers_lps:
            return  # no lesion fitted in this liver
        centre = tuple(with_lesion.lesion_centers_lps[0])
        yield Example(f"{self.name} lesion", with_lesion.image, LESION_CLASSES[1], centre)
        twin = generate_phantom(seed, lesions=False)
        yield Example(f"{self.name} twin", twin.image, LESION_CLASSES[0], centre)


LESION_CLASSES = ("no liver lesion", "liver lesion")


def phantom_classification_items(seeds: Sequence[int], lesion_points: bool = False) -> list[ClassificationItem]:
    """Phantoms (own random spacing and direction) labelled by liver lesion presence: per scan,
    or (`lesion_points`) per region around a lesion centre and the same region without it."""
    return [ClassificationItem(f"phantom-{seed}", None, phantom_seed=int(seed), lesion_points=lesion_points)
            for seed in seeds]


def read_classification_csv(path: str | os.PathLike) -> list[ClassificationItem]:
    """Rows of `image,label` with optional `x,y,z` (a point in mm, LPS); relative image paths
    are relative to the CSV file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"The CSV file {path} does not exist.")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            header = [h.strip().lower() for h in (rows and rows[0].keys() or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"The CSV file {path} cannot be read ({exc}).") from None
    if not rows:
        raise InputError(f"The CSV file {path} has no rows (expected a header image,label[,x,y,z] and one row per scan).")
    if "image" not in header or "label" not in header:
        raise InputError(f"The CSV file {path} needs the columns image and label (found {', '.join(header)}).")
    has_point = [c in header for c in ("x", "y", "z")]
    if any(has_point) and not all(has_point):
        raise InputError(f"The CSV file {path} must give a point as all three columns x, y, z.")
    items = []
    for number, row in enumerate(rows, start=2):
        row = {str(k).strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
        if not row["image"] or not row["label"]:
            raise InputError(f"Row {number} of {path} lacks an image or a label.")
        image = Path(row["image"]).expanduser()
        image = image if image.is_absolute() else path.parent / image
        if not image.exists():
            raise InputError(f"The image {image} in row {number} of {path} does not exist.")
        point = None
        if all(has_point):
            try:
                point = (float(row["x"]), float(row["y"]), float(row["z"]))
            except ValueError:
                raise InputError(f"Row {number} of {path} has a point that is not three numbers.") from None
        items.append(ClassificationItem(f"row {number}", row["label"], image, point))
    if len({item.label for item in items}) < 2:
        raise InputError(f"The CSV file {path} has only one class ({items[0].label}); a classifier needs two or more.")
    return items

