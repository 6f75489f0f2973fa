"""Property-based fuzzing of the volume readers: hostile files, read in a sandboxed child process.

A *case* is a small set of files (a header, perhaps a detached payload, or a DICOM folder) plus
the name to hand to the reader. Hypothesis builds cases by mutating valid NIfTI, NRRD, MHA and
DICOM files: header fields set to hostile values or removed, payloads truncated, padded or
corrupted, detached data files pointing elsewhere. The property (`check_outcome`): the reader
either refuses with a CoralBayError whose message is one clean sentence, or returns a sane 3D
scalar image; it never crashes, hangs, raises anything else, or allocates what a header claims.

Cases that once broke the property live in Testing/Data/fuzz_regressions/<name>/ (the files plus
case.json) and are replayed by test_hardening_fuzz.py.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ENGINE_DIR = REPO / "CoralBaySlicer"
CORPUS_DIR = REPO / "Testing" / "Data" / "fuzz_regressions"
# Where a failing case is saved for a human to inspect and, once fixed, move into the corpus.
FAILURES_DIR = Path(os.environ.get("CORALBAY_FUZZ_FAILURES", REPO / "build" / "fuzz-failures"))
READ_TIMEOUT_S = 30.0


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------

@dataclass
class Case:
    """Files to write (relative name -> bytes; a name ending in '/' is an empty folder)."""

    files: dict[str, bytes]
    entry: str  # what the reader is given, relative to the case folder ("." for a DICOM folder)
    reader: str = "volume"  # volume | label | any
    # What a correct reader returns when no mutation touched the file (None: not checked).
    expected: dict | None = None
    description: list[str] = field(default_factory=list)
    # Damaged compressed data: "cut" (must be refused) or "flip" (refused, or read unchanged when
    # the format carries a checksum); `intact_sum` is the voxel sum of the file before the damage.
    damage: str | None = None
    checksummed: bool = True
    intact_sum: float | None = None

    def write(self, folder: Path) -> Path:
        for name, data in self.files.items():
            target = folder / name
            if name.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return folder / self.entry

    def save(self, folder: Path, note: str) -> Path:
        """Store the case as a corpus entry (files + case.json)."""
        folder.mkdir(parents=True, exist_ok=True)
        self.write(folder)
        (folder / "case.json").write_text(json.dumps(
            {"entry": self.entry, "reader": self.reader, "found": note,
             "mutations": self.description}, indent=2) + "\n")
        return folder


HOSTILE_INTS = [0, 1, -1, 2, 3, 4, 5, 7, 8, 16, 255, 32767, -32768, 65535, 2**31 - 1, -2**31]
HOSTILE_FLOATS = [0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, 3e38, math.nan, math.inf, -math.inf, 1e-45]
HOSTILE_TEXT = ["", " ", "0", "-1", "1", "nan", "inf", "-inf", "1e400", "1e-320", "abc", "(",
                "()", "(1,2)", "(nan,0,0)", "none", "99999999999999999999", "2147483648",
                "-2147483649", "1 2", "1 2 3 4 5", "\t", "\\", "%s%n", "é", "1,2,3", "0 0 0",
                "1e308 1e308 1e308"]


def _payload_mutation():
    """A change to a payload: truncate (perhaps to nothing), pad, flip bytes, or replace."""
    return st.one_of(
        st.tuples(st.just("truncate"), st.floats(0, 1)),
        st.tuples(st.just("pad"), st.integers(1, 64)),
        st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)),
                                            min_size=1, max_size=8)),
        st.tuples(st.just("random"), st.binary(min_size=0, max_size=64)),
    )


def apply_payload_mutation(data: bytes, mutation) -> bytes:
    op, arg = mutation
    if op == "truncate":
        return data[: int(len(data) * arg)]
    if op == "pad":
        return data + b"\x7f" * arg
    if op == "flip":
        buf = bytearray(data)
        for where, value in arg:
            if buf:
                buf[min(len(buf) - 1, int(where * len(buf)))] = value
        return bytes(buf)
    if op == "random":
        return bytes(arg)
    raise ValueError(op)


def _base_array(rng: np.random.Generator, size: tuple[int, int, int], dtype: str,
                reader: str = "volume") -> np.ndarray:
    """Voxels in z, y, x order: labels 0-10 for a label map, else CT-like values the type holds."""
    if reader == "label":
        return rng.integers(0, 11, size=size[::-1]).astype(dtype)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    lo, hi = (-1024, 2000) if info is None else (max(info.min, -1024), min(info.max, 2000))
    return rng.integers(lo, hi, size=size[::-1]).astype(dtype)


# ---- NRRD -------------------------------------------------------------------------------------

NRRD_TYPES = {"short": "int16", "unsigned short": "uint16", "int": "int32", "float": "float32",
              "double": "float64", "uchar": "uint8", "signed char": "int8"}
NRRD_FIELD_VALUES = {
    "type": list(NRRD_TYPES) + ["block", "long long", "unsigned long long", "char"],
    "dimension": ["0", "1", "2", "3", "4", "5", "17", "-3"],
    "space": ["left-posterior-superior", "right-anterior-superior", "3D-right-handed",
              "scanner-xyz", "bogus", "3D-left-handed-time"],
    "sizes": ["4 4", "4 4 4 4", "4 4 0", "4 4 -4", "1 1 1", "3 1 4", "100000 100000 100000",
              "2000 2000 2000", "65536 65536 1"],
    "space directions": ["(1,0,0) (0,1,0) (0,0,1)", "(0,0,0) (0,1,0) (0,0,1)",
                         "(1,0,0) (1,0,0) (0,0,1)", "none (1,0,0) (0,0,1)", "(1,0) (0,1) (0,0)",
                         "(1e308,0,0) (0,1e308,0) (0,0,1e308)", "(1e-300,0,0) (0,1,0) (0,0,1)",
                         "(nan,0,0) (0,1,0) (0,0,1)", "(1,2,3) (4,5,6) (7,8,10)",
                         "none none none", "(0.7,0.7,0) (-0.7,0.7,0) (0,0,2)"],
    "kinds": ["domain domain domain", "RGB-color domain domain", "vector domain domain",
              "list domain domain", "3D-matrix domain domain"],
    "endian": ["little", "big", "middle"],
    "encoding": ["raw", "gzip", "ascii", "hex", "bzip2", "text", "zip"],
    "space origin": ["(0,0,0)", "(nan,0,0)", "(1e308,1e308,1e308)", "(1,2)", "none", "(1e9,0,0)"],
    "spacings": ["1 1 1", "0 1 1", "nan 1 1", "-1 -1 -1", "1e-320 1 1", "1e308 1 1"],
    "byte skip": ["0", "-1", "10", "100000000000", "nan"],
    "line skip": ["0", "1", "100000000000", "-1"],
    "measurement frame": ["(1,0,0) (0,1,0) (0,0,1)", "(nan,0,0) (0,1,0) (0,0,1)"],
    "data file": ["payload.raw", "missing.raw", ".", "sub", "image.nhdr", "LIST",
                  "payload%03d.raw 0 3 1", "payload%d.raw 0 1000000000 1", "/dev/null",
                  "payload.raw\x00x"],
}


@st.composite
def nrrd_cases(draw, reader: str = "volume") -> Case:
    """A small valid NRRD (attached or detached .nhdr), then 0-4 hostile mutations."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    size = tuple(draw(st.integers(2, 6)) for _ in range(3))
    type_name = draw(st.sampled_from(["short", "unsigned short", "float", "uchar"]))
    spacing = tuple(draw(st.sampled_from([0.5, 0.8, 1.0, 2.5, 5.0])) for _ in range(3))
    origin = tuple(float(draw(st.integers(-300, 300))) for _ in range(3))
    encoding = draw(st.sampled_from(["raw", "gzip"]))
    detached = draw(st.booleans())
    array = _base_array(rng, size, NRRD_TYPES[type_name], reader)
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    payload = gzip.compress(raw, compresslevel=1) if encoding == "gzip" else raw
    fields = [("type", type_name), ("dimension", "3"), ("space", "left-posterior-superior"),
              ("sizes", " ".join(map(str, size))),
              ("space directions", f"({spacing[0]},0,0) (0,{spacing[1]},0) (0,0,{spacing[2]})"),
              ("kinds", "domain domain domain"), ("endian", "little"), ("encoding", encoding),
              ("space origin", f"({origin[0]},{origin[1]},{origin[2]})")]
    if detached:
        fields.append(("data file", "payload.raw"))
    description = [f"nrrd {type_name} {size} {encoding} {'detached' if detached else 'attached'}"]
    extra_lines: list[str] = []
    mutations = draw(st.lists(st.one_of(
        st.tuples(st.just("set"), st.sampled_from(sorted(NRRD_FIELD_VALUES)), st.data()),
        st.tuples(st.just("drop"), st.integers(0, 20), st.none()),
        st.tuples(st.just("payload"), _payload_mutation(), st.none()),
        st.tuples(st.just("header-bytes"), _payload_mutation(), st.none()),
        st.tuples(st.just("list-lines"), st.lists(st.sampled_from(
            ["payload.raw", "missing.raw", "sub", "image.nhdr", ""]), max_size=5), st.none()),
    ), max_size=4))
    header_mutations = []
    for op, a, b in mutations:
        if op == "set":
            value = b.draw(st.sampled_from(NRRD_FIELD_VALUES[a] + HOSTILE_TEXT))
            fields = [(k, v) for k, v in fields if k != a] + [(a, value)]
            description.append(f"set {a}: {value!r}")
        elif op == "drop" and fields:
            key = fields[a % len(fields)][0]
            fields = [(k, v) for k, v in fields if k != key]
            description.append(f"drop {key}")
        elif op == "payload":
            payload = apply_payload_mutation(payload, a)
            description.append(f"payload {a}")
        elif op == "header-bytes":
            header_mutations.append(a)
            description.append(f"header bytes {a}")
        elif op == "list-lines":
            extra_lines = a
            description.append(f"list lines {a}")
    data_file = dict(fields).get("data file")
    header = "NRRD0004\n" + "".join(f"{k}: {v}\n" for k, v in fields)
    if data_file is not None and data_file.startswith("LIST"):
        header += "".join(f"{line}\n" for line in extra_lines)
    header_bytes = header.encode("utf-8", "surrogateescape")
    for m in header_mutations:
        header_bytes = apply_payload_mutation(header_bytes, m)
    files: dict[str, bytes] = {"sub/": b""}
    if data_file is None:
        name = "image.nrrd"
        files[name] = header_bytes + b"\n" + payload
    else:
        name = "image.nhdr"
        files[name] = header_bytes
        files["payload.raw"] = payload
        for i in range(3):
            files[f"payload{i:03d}.raw"] = payload[: len(payload) // 3]
    untouched = len(description) == 1
    expected = {"size": list(size), "spacing": list(spacing), "origin": list(origin),
                "sum": float(array.sum(dtype=np.float64))} if untouched else None
    return Case(files, name, reader, expected, description)


# ---- MetaImage --------------------------------------------------------------------------------

MET_TYPES = {"MET_SHORT": "int16", "MET_USHORT": "uint16", "MET_FLOAT": "float32",
             "MET_UCHAR": "uint8", "MET_INT": "int32", "MET_DOUBLE": "float64"}
MHA_FIELD_VALUES = {
    "ObjectType": ["Image", "Mesh", "Tube", ""],
    "NDims": ["0", "1", "2", "3", "4", "10", "300", "-1"],
    "BinaryData": ["True", "False", "maybe"],
    "BinaryDataByteOrderMSB": ["True", "False"],
    "CompressedData": ["True", "False"],
    "CompressedDataSize": ["0", "1", "10", "100000000000", "-1"],
    "TransformMatrix": ["1 0 0 0 1 0 0 0 1", "0 0 0 0 0 0 0 0 0", "1 0 0 1 0 0 0 0 1",
                        "nan 0 0 0 1 0 0 0 1", "1 0 0", "1e308 0 0 0 1e308 0 0 0 1e308"],
    "Offset": ["0 0 0", "nan nan nan", "1e308 0 0", "1 2"],
    "ElementSpacing": ["1 1 1", "0 0 0", "-1 1 1", "nan 1 1", "1e-320 1 1", "1e308 1 1", "1"],
    "DimSize": ["4 4 4", "0 4 4", "-4 4 4", "100000 100000 100000", "2000 2000 2000", "4 4",
                "4 4 4 4", "1 1 1"],
    "ElementNumberOfChannels": ["1", "3", "0", "-5", "100000"],
    "ElementType": list(MET_TYPES) + ["MET_OTHER", "MET_STRING", "MET_ULONG_LONG", "MET_FLOAT_ARRAY",
                                      "MET_NONE", ""],
    "HeaderSize": ["0", "-1", "10", "100000000"],
    "ElementDataFile": ["LOCAL", "payload.raw", "missing.raw", "sub", "image.mhd", "LIST",
                        "LIST 2D", "payload%03d.raw 0 2 1", "payload%d.raw 1 1000000000 1",
                        "/dev/null", ""],
}


@st.composite
def mha_cases(draw, reader: str = "volume") -> Case:
    """A small valid MetaImage (.mha, or .mhd + .raw), then 0-4 hostile mutations."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    size = tuple(draw(st.integers(2, 6)) for _ in range(3))
    type_name = draw(st.sampled_from(["MET_SHORT", "MET_USHORT", "MET_FLOAT", "MET_UCHAR"]))
    spacing = tuple(draw(st.sampled_from([0.5, 0.8, 1.0, 2.5, 5.0])) for _ in range(3))
    origin = tuple(float(draw(st.integers(-300, 300))) for _ in range(3))
    compressed = draw(st.booleans())
    detached = draw(st.booleans())
    array = _base_array(rng, size, MET_TYPES[type_name], reader)
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    payload = __import__("zlib").compress(raw, 1) if compressed else raw
    fields = [("ObjectType", "Image"), ("NDims", "3"), ("BinaryData", "True"),
              ("BinaryDataByteOrderMSB", "False"), ("CompressedData", str(compressed))]
    if compressed:
        fields.append(("CompressedDataSize", str(len(payload))))
    fields += [("TransformMatrix", "1 0 0 0 1 0 0 0 1"), ("Offset", " ".join(map(str, origin))),
               ("ElementSpacing", " ".join(map(str, spacing))), ("DimSize", " ".join(map(str, size))),
               ("ElementType", type_name),
               ("ElementDataFile", "payload.raw" if detached else "LOCAL")]
    description = [f"mha {type_name} {size} {'zlib' if compressed else 'raw'} "
                   f"{'detached' if detached else 'attached'}"]
    mutations = draw(st.lists(st.one_of(
        st.tuples(st.just("set"), st.sampled_from(sorted(MHA_FIELD_VALUES)), st.data()),
        st.tuples(st.just("drop"), st.integers(0, 20), st.none()),
        st.tuples(st.just("payload"), _payload_mutation(), st.none()),
        st.tuples(st.just("header-bytes"), _payload_mutation(), st.none()),
    ), max_size=4))
    header_mutations = []
    for op, a, b in mutations:
        if op == "set":
            value = b.draw(st.sampled_from(MHA_FIELD_VALUES[a] + HOSTILE_TEXT))
            # ElementDataFile must stay last (MetaIO stops parsing there).
            fields = [(k, v) for k, v in fields if k != a]
            fields.insert(len(fields) if a == "ElementDataFile" else max(0, len(fields) - 1), (a, value))
            description.append(f"set {a} = {value!r}")
        elif op == "drop" and fields:
            key = fields[a % len(fields)][0]
            fields = [(k, v) for k, v in fields if k != key]
            description.append(f"drop {key}")
        elif op == "payload":
            payload = apply_payload_mutation(payload, a)
            description.append(f"payload {a}")
        elif op == "header-bytes":
            header_mutations.append(a)
            description.append(f"header bytes {a}")
    header_bytes = "".join(f"{k} = {v}\n" for k, v in fields).encode("utf-8", "surrogateescape")
    for m in header_mutations:
        header_bytes = apply_payload_mutation(header_bytes, m)
    data_file = dict(fields).get("ElementDataFile", "")
    files: dict[str, bytes] = {"sub/": b"", "payload.raw": payload}
    for i in range(3):
        files[f"payload{i:03d}.raw"] = payload[: len(payload) // 3]
    if data_file == "LOCAL":
        name = "image.mha"
        files[name] = header_bytes + payload
    else:
        name = "image.mhd"
        files[name] = header_bytes
    untouched = len(description) == 1
    expected = {"size": list(size), "spacing": list(spacing), "origin": list(origin),
                "sum": float(array.sum(dtype=np.float64))} if untouched else None
    return Case(files, name, reader, expected, description)


# ---- NIfTI ------------------------------------------------------------------------------------

# NIfTI-1 header fields: name -> (offset, struct format)
NIFTI_FIELDS = {
    "sizeof_hdr": (0, "<i"), "dim_info": (39, "<B"), "dim0": (40, "<h"), "dim1": (42, "<h"),
    "dim2": (44, "<h"), "dim3": (46, "<h"), "dim4": (48, "<h"), "dim5": (50, "<h"),
    "intent_code": (68, "<h"), "datatype": (70, "<h"), "bitpix": (72, "<h"),
    "slice_start": (74, "<h"), "pixdim0": (76, "<f"), "pixdim1": (80, "<f"), "pixdim2": (84, "<f"),
    "pixdim3": (88, "<f"), "pixdim4": (92, "<f"), "vox_offset": (108, "<f"),
    "scl_slope": (112, "<f"), "scl_inter": (116, "<f"), "slice_end": (120, "<h"),
    "slice_code": (122, "<B"), "xyzt_units": (123, "<B"), "qform_code": (252, "<h"),
    "sform_code": (254, "<h"), "quatern_b": (256, "<f"), "quatern_c": (260, "<f"),
    "quatern_d": (264, "<f"), "qoffset_x": (268, "<f"), "srow_x0": (280, "<f"),
    "srow_x3": (292, "<f"), "srow_y1": (300, "<f"), "srow_z2": (320, "<f"),
    "magic": (344, "4s"),
}
NIFTI_MAGIC_VALUES = [b"n+1\x00", b"ni1\x00", b"n+2\x00", b"\x00\x00\x00\x00", b"xxxx"]
_nifti_template_cache: dict = {}


def nifti_bytes(array: np.ndarray, spacing, origin) -> bytes:
    """An uncompressed single-file NIfTI-1 written by SimpleITK (the reference writer)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.nii"
        sitk.WriteImage(image, str(path), False)
        return path.read_bytes()


@st.composite
def nifti_cases(draw, reader: str = "volume") -> Case:
    """A small valid NIfTI-1 (.nii or .nii.gz), then 0-4 hostile header/payload mutations."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    size = tuple(draw(st.integers(2, 6)) for _ in range(3))
    dtype = draw(st.sampled_from(["int16", "uint8", "float32"]))
    spacing = tuple(draw(st.sampled_from([0.5, 0.8, 1.0, 2.5, 5.0])) for _ in range(3))
    origin = tuple(float(draw(st.integers(-300, 300))) for _ in range(3))
    compressed = draw(st.booleans())
    array = _base_array(rng, size, dtype, reader)
    data = bytearray(nifti_bytes(array, spacing, origin))
    description = [f"nifti {dtype} {size} {'gz' if compressed else 'raw'}"]
    mutations = draw(st.lists(st.one_of(
        st.tuples(st.just("set"), st.sampled_from(sorted(NIFTI_FIELDS)), st.data()),
        st.tuples(st.just("bytes"), _payload_mutation(), st.none()),
        st.tuples(st.just("gzip-bytes"), _payload_mutation(), st.none()),
    ), max_size=4))
    gzip_mutations = []
    for op, a, b in mutations:
        if op == "set":
            offset, fmt = NIFTI_FIELDS[a]
            if fmt == "4s":
                value = b.draw(st.sampled_from(NIFTI_MAGIC_VALUES))
            elif fmt == "<f":
                value = b.draw(st.sampled_from(HOSTILE_FLOATS))
            else:
                bound = {"<h": (-2**15, 2**15 - 1), "<B": (0, 255), "<i": (-2**31, 2**31 - 1)}[fmt]
                value = b.draw(st.sampled_from([v for v in HOSTILE_INTS if bound[0] <= v <= bound[1]]))
            if offset + struct.calcsize(fmt) > len(data):
                continue  # an earlier mutation truncated the header
            struct.pack_into(fmt, data, offset, value)
            description.append(f"set {a} = {value!r}")
        elif op == "bytes":
            data = bytearray(apply_payload_mutation(bytes(data), a))
            description.append(f"bytes {a}")
        else:
            gzip_mutations.append(a)
            description.append(f"gzip bytes {a}")
    content = bytes(data)
    if compressed:
        content = gzip.compress(content, compresslevel=1)
        for m in gzip_mutations:
            content = apply_payload_mutation(content, m)
    name = "image.nii.gz" if compressed else "image.nii"
    untouched = len(description) == 1 or (not compressed and all(op == "gzip-bytes" for op, *_ in mutations))
    expected = {"size": list(size), "spacing": list(spacing), "origin": list(origin),
                "sum": float(array.sum(dtype=np.float64))} if untouched else None
    return Case({name: content}, name, reader, expected, description)


# ---- DICOM ------------------------------------------------------------------------------------

DICOM_TAGS = ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows",
              "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
              "SamplesPerPixel", "PhotometricInterpretation", "PixelData", "RescaleSlope",
              "RescaleIntercept", "SeriesInstanceUID", "SOPClassUID", "SliceThickness",
              "NumberOfFrames", "StudyInstanceUID", "Modality", "PlanarConfiguration",
              "SpacingBetweenSlices", "InstanceNumber", "FrameOfReferenceUID"]
DICOM_VALUES = {
    "ImagePositionPatient": [["0", "0", "0"], ["nan", "0", "0"], ["1", "2"], ["1e400", "0", "0"],
                             ["abc", "0", "0"], ["0", "0", "1"], ["0", "0", "1e9"]],
    "ImageOrientationPatient": [["1", "0", "0", "0", "1", "0"], ["0", "0", "0", "0", "0", "0"],
                                ["1", "0", "0", "1", "0", "0"], ["1", "0", "0"],
                                ["nan", "0", "0", "0", "1", "0"], ["1", "0", "0", "0", "0.9", "0.1"],
                                ["0", "1", "0", "1", "0", "0"]],
    "PixelSpacing": [["0", "0"], ["-1", "1"], ["nan", "1"], ["1"], ["1e-320", "1"], ["1e308", "1"]],
    "Rows": [0, 1, 7, 9, 65535], "Columns": [0, 1, 7, 9, 65535],
    "BitsAllocated": [0, 1, 8, 12, 32, 64], "BitsStored": [0, 1, 8, 12, 16, 40],
    "HighBit": [0, 7, 15, 16, 63], "PixelRepresentation": [0, 1, 2],
    "SamplesPerPixel": [0, 2, 3, 4], "PhotometricInterpretation": ["RGB", "YBR_FULL", "PALETTE COLOR", "", "MONOCHROME1"],
    "RescaleSlope": ["0", "nan", "-1", "1e308", "abc"], "RescaleIntercept": ["nan", "1e308", "abc"],
    "SeriesInstanceUID": ["1.2.3", "", "1.2.3.4.5.6.7.8.9"], "SOPClassUID": ["1.2.840.10008.5.1.4.1.1.66.4", ""],
    "SliceThickness": ["0", "-1", "nan"], "NumberOfFrames": ["0", "2", "100000", "-1"],
    "StudyInstanceUID": ["", "9.9"], "Modality": ["SEG", "MR", ""], "PlanarConfiguration": [1],
    "SpacingBetweenSlices": ["0", "-5", "nan"], "InstanceNumber": ["1", "-1", ""],
    "FrameOfReferenceUID": ["", "1.2"],
}
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def dicom_slice(array2d: np.ndarray, position, orientation=(1, 0, 0, 0, 1, 0),
                pixel_spacing=(0.8, 0.7), series_uid="1.2.826.0.1.3680043.8.498.1",
                instance=1, study_uid="1.2.826.0.1.3680043.8.498.2", series_number=1,
                description="CT test", intercept=-1024.0, frame_of_reference="1.2.826.0.1.3680043.8.498.3",
                extra: dict | None = None):
    """A real single-frame CT Image Storage dataset (explicit VR little endian, int16/uint16)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    sop_uid = generate_uid()
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "CT"
    ds.PatientName = "Fuzz^Test"
    ds.PatientID = "CORALBAY-TEST"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.InstanceNumber = instance
    ds.FrameOfReferenceUID = frame_of_reference
    ds.ImagePositionPatient = [f"{v:.6g}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6g}" for v in orientation]
    ds.PixelSpacing = [f"{v:.6g}" for v in pixel_spacing]
    ds.SliceThickness = "1"
    ds.Rows, ds.Columns = array2d.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if array2d.dtype == np.int16 else 0
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleSlope = "1"
    ds.add_new(0x7FE00010, "OW", np.ascontiguousarray(array2d).tobytes())  # explicit VR: no guessing
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    return ds


def set_tag(ds, keyword: str, value) -> None:
    """Set a tag to any value, also one its VR forbids (stored as raw bytes, written as is)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.tag import Tag

    if keyword == "PixelData":
        ds.add_new(0x7FE00010, "OW", value)
        return
    if isinstance(value, int):
        setattr(ds, keyword, value)
        return
    tag = Tag(tag_for_keyword(keyword))
    text = "\\".join(value) if isinstance(value, list) else value
    raw = text.encode("latin-1")
    raw += b" " if len(raw) % 2 else b""
    ds._dict[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)


def dicom_bytes(ds) -> bytes:
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@st.composite
def dicom_cases(draw) -> Case:
    """A valid 3-slice CT series (8x8 pixels), then 0-3 tag deletions/changes or byte damage."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(2, 4))
    step = draw(st.sampled_from([1.0, 2.5]))
    volume = rng.integers(0, 2000, size=(n, 8, 8)).astype(np.uint16)
    datasets = [dicom_slice(volume[k], (10.0, -20.0, 30.0 + k * step), instance=k + 1)
                for k in range(n)]
    description = [f"dicom {n} slices step {step}"]
    byte_mutations: dict[int, list] = {}
    for op, which, data in draw(st.lists(st.tuples(
            st.sampled_from(["delete", "set", "bytes"]), st.integers(-1, n - 1), st.data()),
            max_size=3)):
        targets = range(n) if which < 0 else [which]
        if op == "bytes":
            mutation = data.draw(_payload_mutation())
            for k in targets:
                byte_mutations.setdefault(k, []).append(mutation)
            description.append(f"bytes of slice {which}: {mutation}")
            continue
        tag = data.draw(st.sampled_from(DICOM_TAGS))
        if op == "delete":
            for k in targets:
                if tag in datasets[k]:
                    del datasets[k][tag]
            description.append(f"delete {tag} in slice {which}")
        else:
            value = data.draw(st.sampled_from(DICOM_VALUES[tag])) if tag != "PixelData" else \
                data.draw(st.sampled_from([b"", b"\x00" * 10, b"\x01" * 256, b"\x00" * 1000]))
            for k in targets:
                set_tag(datasets[k], tag, value)
            description.append(f"set {tag} = {value!r:.40} in slice {which}")
    files = {}
    for k, ds in enumerate(datasets):
        content = dicom_bytes(ds)
        for mutation in byte_mutations.get(k, []):
            content = apply_payload_mutation(content, mutation)
        files[f"slice{k:02d}.dcm"] = content
    untouched = len(description) == 1
    expected = {"size": [8, 8, n], "spacing": [0.7, 0.8, step], "origin": [10.0, -20.0, 30.0],
                "sum": float(volume.sum(dtype=np.float64) - 1024 * volume.size)} if untouched else None
    return Case(files, ".", "volume", expected, description)


# ---- damaged compressed data ------------------------------------------------------------------

DAMAGED_FORMATS = ["nii.gz", "nrrd-gzip", "nhdr-gzip", "mha-zlib", "mhd-zlib", "seg.nrrd",
                   "dicom-deflate", "dicom-jpeg2000"]


def _compressed_file(fmt: str, array: np.ndarray) -> tuple[dict[str, bytes], str, str, tuple[int, int]]:
    """A valid file of `fmt` holding `array` (z, y, x): (files, entry, damaged file, (start, end)
    of its compressed bytes, where the damage goes)."""
    import zlib

    raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    size = " ".join(map(str, array.shape[::-1]))
    if fmt == "nii.gz":
        content = gzip.compress(nifti_bytes(array, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0)), compresslevel=6)
        return {"image.nii.gz": content}, "image.nii.gz", "image.nii.gz", (10, len(content))
    if fmt in ("nrrd-gzip", "nhdr-gzip"):
        header = (f"NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: {size}\n"
                  "space directions: (1,0,0) (0,1,0) (0,0,2)\nkinds: domain domain domain\n"
                  "endian: little\nencoding: gzip\nspace origin: (0,0,0)\n")
        payload = gzip.compress(raw, compresslevel=6)
        if fmt == "nhdr-gzip":
            files = {"image.nhdr": (header + "data file: payload.raw.gz\n").encode(), "payload.raw.gz": payload}
            return files, "image.nhdr", "payload.raw.gz", (10, len(payload))
        head = (header + "\n").encode()
        return {"image.nrrd": head + payload}, "image.nrrd", "image.nrrd", (len(head) + 10, len(head) + len(payload))
    if fmt in ("mha-zlib", "mhd-zlib"):
        payload = zlib.compress(raw, 6)
        header = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                  f"CompressedData = True\nCompressedDataSize = {len(payload)}\n"
                  "TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\nElementSpacing = 1 1 2\n"
                  f"DimSize = {size}\nElementType = MET_SHORT\n")
        if fmt == "mhd-zlib":
            files = {"image.mhd": (header + "ElementDataFile = image.zraw\n").encode(), "image.zraw": payload}
            return files, "image.mhd", "image.zraw", (2, len(payload))
        head = (header + "ElementDataFile = LOCAL\n").encode()
        return {"image.mha": head + payload}, "image.mha", "image.mha", (len(head) + 2, len(head) + len(payload))
    if fmt == "seg.nrrd":
        import SimpleITK as sitk

        from coralbay.io.labels import LabelTable
        from coralbay.io.seg_nrrd import write_seg_nrrd

        labels = sitk.GetImageFromArray(array.astype(np.uint16))
        with tempfile.TemporaryDirectory() as tmp:
            write_seg_nrrd(labels, LabelTable.generic(np.unique(array)), Path(tmp) / "x.seg.nrrd")
            content = (Path(tmp) / "x.seg.nrrd").read_bytes()
        start = content.index(b"\n\n") + 2
        return {"labels.seg.nrrd": content}, "labels.seg.nrrd", "labels.seg.nrrd", (start + 10, len(content))
    if fmt == "dicom-deflate":
        from pydicom.uid import DeflatedExplicitVRLittleEndian

        files = {}
        for k in range(array.shape[0]):
            ds = dicom_slice(array[k].astype(np.uint16), (0.0, 0.0, 2.0 * k), instance=k + 1)
            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
            files[f"slice{k:02d}.dcm"] = dicom_bytes(ds)
        content = files["slice01.dcm"]
        return files, ".", "slice01.dcm", (_dicom_dataset_start(content), len(content))
    raise ValueError(fmt)


def _dicom_dataset_start(content: bytes) -> int:
    """Where the dataset after the file meta information begins (the meta group length says)."""
    group_length = struct.unpack_from("<I", content, 132 + 8)[0]  # (0002,0000) UL, explicit VR
    return 132 + 12 + group_length


def real_jpeg2000_slices(count: int = 3) -> dict[str, bytes] | None:
    """`count` consecutive slices of the real JPEG 2000 series of ../shared/data (None if absent)."""
    root = Path(os.environ.get("CORALBAY_SHARED_DATA", REPO.parent / "shared" / "data"))
    folder = root / "totalseg" / "example_ct_dicom"
    if not folder.is_dir():
        return None
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())[8:8 + count]}


@st.composite
def damaged_cases(draw, fmt: str) -> Case:
    """A valid compressed file of `fmt`, then its compressed data cut at a random offset or one
    byte of it changed: every reader must refuse the cut file, and the changed one unless the
    format has no checksum (raw deflate in DICOM, JPEG 2000) or the change left the data intact."""
    damage = draw(st.sampled_from(["cut", "flip"]))
    where = draw(st.floats(0, 1, exclude_max=True))
    if fmt == "dicom-jpeg2000":
        files = real_jpeg2000_slices()
        target = sorted(files)[1]
        content = files[target]
        region, entry, intact_sum = (_dicom_dataset_start(content), len(content)), ".", None
    else:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        shape = (3, draw(st.integers(6, 12)), draw(st.integers(6, 12)))
        low, high = {"seg.nrrd": (0, 9), "dicom-deflate": (0, 2500)}.get(fmt, (-1000, 1500))
        array = rng.integers(low, high, size=shape).astype(np.int16)
        files, entry, target, region = _compressed_file(fmt, array)
        intact_sum = float(array.sum(dtype=np.float64)) - (1024 * array.size if fmt == "dicom-deflate" else 0)
    start, end = region
    position = start + int(where * (end - start))
    data = bytearray(files[target])
    if damage == "cut":
        data = data[:position]
    else:
        data[position] ^= draw(st.integers(1, 255))
    files[target] = bytes(data)
    reader = "labels" if fmt == "seg.nrrd" else "volume"
    return Case(files, entry, reader, None, [f"{fmt}: {damage} at byte {position} of {target} "
                                             f"(compressed data {start}..{end})"],
                damage=damage, checksummed=not fmt.startswith("dicom"), intact_sum=intact_sum)


# ----------------------------------------------------------------------------------------------
# The sandbox
# ----------------------------------------------------------------------------------------------

class ReaderSandbox:
    """A child process that reads files for us; restarted after a crash or a hang."""

    def __init__(self, timeout: float = READ_TIMEOUT_S) -> None:
        self.timeout = timeout
        self.process: subprocess.Popen | None = None
        self.answers = None
        self.log = tempfile.TemporaryFile()

    def _start(self) -> None:
        read_fd, write_fd = os.pipe()
        env = dict(os.environ, PYTHONPATH=str(ENGINE_DIR), OMP_NUM_THREADS="1",
                   ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1")
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "fuzz_worker.py"), str(write_fd)], stdin=subprocess.PIPE,
            stdout=self.log, stderr=self.log, pass_fds=(write_fd,), env=env, cwd=tempfile.gettempdir())
        os.close(write_fd)
        self.answers = os.fdopen(read_fd, "r")
        ready = self._answer(timeout=120)
        if not isinstance(ready, dict) or ready.get("status") != "ready":
            raise RuntimeError(f"fuzz worker did not start: {ready}")

    def _answer(self, timeout: float) -> dict | str:
        """The child's answer, or "timeout", or "eof" (the child closed its end: it died)."""
        ready, _, _ = select.select([self.answers], [], [], timeout)
        if not ready:
            return "timeout"
        line = self.answers.readline()
        return json.loads(line) if line else "eof"

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.answers.close()
            self.process = None

    def read(self, path: Path, reader: str = "volume", **extra) -> dict:
        """The outcome of reading `path` in the child: ok/error/unexpected/crash/hang."""
        if self.process is None or self.process.poll() is not None:
            self.stop() if self.process is not None else None
            self._start()
        self.process.stdin.write((json.dumps({"path": str(path), "reader": reader, **extra}) + "\n").encode())
        self.process.stdin.flush()
        answer = self._answer(self.timeout)
        if isinstance(answer, dict):
            return answer
        if answer == "timeout":
            self.stop()
            return {"status": "hang", "message": f"no answer within {self.timeout:.0f} s"}
        code = self.process.wait(timeout=30)
        self.stop()
        return {"status": "crash", "message": f"the reader process died with exit status {code}"}


# ----------------------------------------------------------------------------------------------
# The property
# ----------------------------------------------------------------------------------------------

# Signs of C++/Python internals in a message meant for a user (memory addresses, source files).
LEAKED_INTERNALS = re.compile(r"Traceback|\.cxx|\.hxx|\.cpp|0x[0-9a-fA-F]{6,}|itk::|sitk::|std::|"
                              r"bad_alloc|allocate memory|Exception thrown|ITK ERROR|\[nrrd\]|_nrrd|MET_|M_Read")


def outcome_problems(outcome: dict, case: Case | None = None) -> list[str]:
    """What is wrong with the outcome of one read (empty list: the property holds)."""
    status = outcome["status"]
    if status in ("crash", "hang", "unexpected"):
        detail = outcome.get("traceback") or outcome.get("message", "")
        return [f"{status}: {outcome.get('type', '')} {detail}"]
    damage = case.damage if case is not None else None
    if damage == "cut" and status == "ok":
        return [f"a file whose compressed data was cut short was read as valid: {case.description}"]
    if damage == "flip" and status == "ok" and case.checksummed and \
            not math.isclose(outcome["image"]["sum"], case.intact_sum, rel_tol=0, abs_tol=1e-3):
        return [f"damaged compressed data was read as valid, with other voxel values: {case.description}"]
    if status == "error":
        message = outcome["message"]
        problems = []
        if not message.strip():
            problems.append("empty error message")
        if "\n" in message.strip():
            problems.append(f"error message has several lines: {message!r}")
        if len(message) > 400:
            problems.append(f"error message is too long ({len(message)} characters)")
        leaked = LEAKED_INTERNALS.findall(message)
        if leaked:
            problems.append(f"error message leaks internals {leaked}: {message!r}")
        if case is not None and case.expected is not None:
            problems.append(f"an untouched valid file was refused: {message!r}")
        return problems
    if status != "ok":
        return [f"unknown outcome {outcome}"]
    if "image" not in outcome:
        return []
    image = outcome["image"]
    if case is not None and case.reader == "any":
        return []  # read_image_any promises no checks of dimension or grid, only a clean error
    problems = []
    if image["dimension"] != 3 or image["components"] != 1:
        problems.append(f"accepted a {image['dimension']}D image with {image['components']} components")
    if min(image["size"]) < 1:
        problems.append(f"accepted an empty image {image['size']}")
    spacing = np.asarray(image["spacing"], dtype=float)
    if not np.all(np.isfinite(spacing)) or spacing.min() < 1e-4 or spacing.max() > 1e4:
        problems.append(f"accepted an implausible spacing {spacing.tolist()}")
    origin = np.asarray(image["origin"], dtype=float)
    if not np.all(np.isfinite(origin)) or np.abs(origin).max() > 1e7:
        problems.append(f"accepted an implausible origin {origin.tolist()}")
    direction = np.asarray(image["direction"], dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or not np.allclose(direction.T @ direction, np.eye(3), atol=1e-3):
        problems.append(f"accepted a direction matrix that is not orthonormal {direction.tolist()}")
    if not image["finite"]:
        problems.append("accepted NaN or infinite voxel values")
    if case is not None and case.reader == "label" and image["pixel_type"] != "16-bit unsigned integer":
        problems.append(f"label map returned as {image['pixel_type']}")
    if case is not None and case.expected is not None:
        for key in ("size", "spacing", "origin"):
            if not np.allclose(image[key], case.expected[key], atol=1e-4):
                problems.append(f"untouched file read with {key} {image[key]}, written {case.expected[key]}")
    return problems


def check_case(sandbox: ReaderSandbox, case: Case) -> None:
    """Write the case, read it in the sandbox, and fail (saving the case) if the property breaks."""
    with tempfile.TemporaryDirectory(prefix="coralbay-fuzz-") as tmp:
        entry = case.write(Path(tmp))
        outcome = sandbox.read(entry, case.reader)
        problems = outcome_problems(outcome, case)
        if problems:
            saved = save_failure(case, "; ".join(problems))
            raise AssertionError(f"{'; '.join(problems)}\nmutations: {case.description}\n"
                                 f"case saved in {saved}")


def save_failure(case: Case, note: str) -> Path:
    import hashlib

    digest = hashlib.sha1(json.dumps(case.description).encode()).hexdigest()[:10]
    folder = FAILURES_DIR / f"case-{digest}"
    shutil.rmtree(folder, ignore_errors=True)
    return case.save(folder, note)
