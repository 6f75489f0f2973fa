"""Volumes for the remote engine with the standard library only: NRRD in, NRRD out, our upload format.

Why here and not SimpleITK: the Slicer side of the remote engine installs nothing into Slicer,
and Slicer's Python may lack the engine's packages. What Slicer writes for the engine is a NRRD
(raw or gzip, attached data), so a small reader covers it; masks come back as uint8 NRRD.
The upload format is documented in `coralbay/serve/volume_format.py` (JSON geometry header + raw
voxels, zlib); it carries geometry only, never patient tags.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
import struct
import zlib
from array import array
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"CORALBAY-VOLUME\n"
NRRD_TYPES = {  # NRRD type names -> (our dtype name, array typecode)
    "uchar": "uint8", "unsigned char": "uint8", "uint8": "uint8", "uint8_t": "uint8",
    "signed char": "int8", "int8": "int8", "int8_t": "int8",
    "short": "int16", "short int": "int16", "signed short": "int16", "signed short int": "int16", "int16": "int16",
    "int16_t": "int16", "ushort": "uint16", "unsigned short": "uint16", "unsigned short int": "uint16",
    "uint16": "uint16", "uint16_t": "uint16", "int": "int32", "signed int": "int32", "int32": "int32",
    "int32_t": "int32", "uint": "uint32", "unsigned int": "uint32", "uint32": "uint32", "uint32_t": "uint32",
    "float": "float32", "double": "float64",
}
TYPECODES = {"uint8": "B", "int8": "b", "uint16": "H", "int16": "h", "uint32": "I", "int32": "i",
             "float32": "f", "float64": "d"}
ITEMSIZE = {name: array(code).itemsize for name, code in TYPECODES.items()}


class VolumeFormatError(ValueError):
    """A file this reader cannot use (one sentence)."""


@dataclass
class Volume:
    """Voxels (little-endian bytes, x fastest) and LPS geometry, as ITK states it."""

    dtype: str
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]   # 9 values, row-major; column j is axis j's direction
    data: bytes

    def header(self, compression: str = "zlib") -> dict:
        return {"version": 1, "dtype": self.dtype, "size": list(self.size), "spacing": list(self.spacing),
                "origin": list(self.origin), "direction": list(self.direction), "compression": compression}


def _vector(text: str) -> list[float]:
    return [float(v) for v in text.strip().strip("()").split(",")]


def read_nrrd(path: str | Path) -> Volume:
    """A 3D scalar NRRD with attached raw or gzip data."""
    raw = Path(path).read_bytes()
    end = raw.find(b"\n\n")
    if not raw.startswith(b"NRRD") or end < 0:
        raise VolumeFormatError(f"{path} is not a NRRD file.")
    fields: dict[str, str] = {}
    for line in raw[:end].decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.lstrip("=").strip()
    if int(fields.get("dimension", "0")) != 3 or "data file" in fields or "datafile" in fields:
        raise VolumeFormatError(f"{path} must be a 3D NRRD with its data attached.")
    dtype = NRRD_TYPES.get(fields.get("type", "").lower())
    if dtype is None:
        raise VolumeFormatError(f"{path} has a voxel type the remote engine does not take ({fields.get('type')}).")
    size = tuple(int(v) for v in fields["sizes"].split())
    payload = raw[end + 2:]
    encoding = fields.get("encoding", "raw").lower()
    if encoding in ("gzip", "gz"):
        payload = gzip.decompress(payload)
    elif encoding != "raw":
        raise VolumeFormatError(f"{path} uses NRRD encoding {encoding}; write it raw or gzip.")
    expected = math.prod(size) * ITEMSIZE[dtype]
    payload = payload[-expected:] if len(payload) >= expected else payload
    if len(payload) != expected:
        raise VolumeFormatError(f"{path} holds fewer voxels than its header says.")
    if ITEMSIZE[dtype] > 1 and fields.get("endian", "little") == "big":
        swapped = array(TYPECODES[dtype], payload)
        swapped.byteswap()
        payload = swapped.tobytes()
    vectors = [_vector(v) for v in re.findall(r"\([^)]*\)", fields.get("space directions", ""))]
    if len(vectors) != 3:
        vectors = [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]
    origin = _vector(fields["space origin"]) if "space origin" in fields else [0.0, 0.0, 0.0]
    if fields.get("space", "left-posterior-superior").lower() in ("right-anterior-superior", "ras"):
        vectors = [[-v[0], -v[1], v[2]] for v in vectors]
        origin = [-origin[0], -origin[1], origin[2]]
    spacing = [math.sqrt(sum(c * c for c in v)) for v in vectors]
    direction = [vectors[col][row] / spacing[col] for row in range(3) for col in range(3)]
    return Volume(dtype, size, tuple(spacing), tuple(origin), tuple(direction), payload)


def write_nrrd(volume: Volume, path: str | Path) -> Path:
    """An uncompressed LPS NRRD (written to a temporary name, then renamed)."""
    path = Path(path)
    columns = [[volume.direction[row * 3 + col] * volume.spacing[col] for row in range(3)] for col in range(3)]
    vec = lambda v: "(" + ",".join(repr(float(c)) for c in v) + ")"  # noqa: E731
    kind = {v: k for k, v in NRRD_TYPES.items() if k == v}.get(volume.dtype, volume.dtype)
    header = (f"NRRD0004\ntype: {kind}\ndimension: 3\nspace: left-posterior-superior\n"
              f"sizes: {' '.join(str(n) for n in volume.size)}\nspace directions: {' '.join(vec(c) for c in columns)}\n"
              f"kinds: domain domain domain\nendian: little\nencoding: raw\nspace origin: {vec(volume.origin)}\n\n")
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("wb") as stream:
        stream.write(header.encode("ascii"))
        stream.write(volume.data)
    partial.replace(path)
    return path


ENCODE_CHUNK = 8 << 20
WORTH_COMPRESSING = 0.85   # zlib must save at least 15 % of a sample, or the voxels travel raw
SAMPLE_BYTES = 1 << 20


def worth_compressing(data: bytes, level: int = 1) -> bool:
    """Whether zlib shrinks the middle of the voxels enough to pay for its time (a 1 MiB sample)."""
    middle = max(0, len(data) // 2 - SAMPLE_BYTES // 2)
    sample = data[middle:middle + SAMPLE_BYTES]
    return bool(sample) and len(zlib.compress(sample, level)) < WORTH_COMPRESSING * len(sample)


def encode_and_hash(volume: Volume, compression: str = "zlib", level: int = 1) -> tuple[bytes, str]:
    """Our upload format (see the module docstring) and its SHA-256, in one chunked pass
    (each compressed chunk is hashed as it comes out, not the whole body again afterwards)."""
    header = json.dumps(volume.header(compression)).encode("utf-8")
    head = MAGIC + struct.pack("<I", len(header)) + header
    sha = hashlib.sha256(head)
    parts = [head]
    view = memoryview(volume.data)
    if compression == "none":
        sha.update(view)
        return head + volume.data, sha.hexdigest()
    compressor = zlib.compressobj(level)
    for start in range(0, len(view), ENCODE_CHUNK):
        parts.append(compressor.compress(view[start:start + ENCODE_CHUNK]))
        sha.update(parts[-1])
    parts.append(compressor.flush())
    sha.update(parts[-1])
    return b"".join(parts), sha.hexdigest()


def encode_upload(volume: Volume, level: int = 1, compression: str = "zlib") -> bytes:
    """Our upload format (see the module docstring), zlib-compressed unless told "none"."""
    return encode_and_hash(volume, compression, level)[0]


def decode_download(body: bytes) -> Volume:
    """The server's masks and label maps, in the same format."""
    if not body.startswith(MAGIC):
        raise VolumeFormatError("The server sent something that is not a CoralBay volume.")
    (length,) = struct.unpack_from("<I", body, len(MAGIC))
    start = len(MAGIC) + 4
    header = json.loads(body[start:start + length].decode("utf-8"))
    data = body[start + length:]
    if header.get("compression") == "zlib":
        data = zlib.decompress(data)
    return Volume(header["dtype"], tuple(header["size"]), tuple(header["spacing"]), tuple(header["origin"]),
                  tuple(header["direction"]), data)


def nonzero_box(data: bytes, size: tuple[int, int, int]) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """(start xyz, stop xyz) of the non-zero bytes of a uint8 volume; None when all are zero."""
    nx, ny, nz = size
    plane = nx * ny
    box = [nx, ny, nz, -1, -1, -1]
    for z in range(nz):
        slab = data[z * plane:(z + 1) * plane]
        if not slab.strip(b"\0"):
            continue
        box[2], box[5] = min(box[2], z), z
        for y in range(ny):
            row = slab[y * nx:(y + 1) * nx]
            stripped = row.lstrip(b"\0")
            if stripped:
                box[1], box[4] = min(box[1], y), max(box[4], y)
                box[0] = min(box[0], nx - len(stripped))
                box[3] = max(box[3], len(row.rstrip(b"\0")) - 1)
    if box[5] < 0:
        return None
    return (box[0], box[1], box[2]), (box[3] + 1, box[4] + 1, box[5] + 1)


def crop_bytes(data: bytes, size, start, stop) -> bytes:
    nx, ny, _ = size
    return b"".join(data[(z * ny + y) * nx + start[0]:(z * ny + y) * nx + stop[0]]
                    for z in range(start[2], stop[2]) for y in range(start[1], stop[1]))


def paste_bytes(target: bytearray, size, offset, crop_size, crop: bytes) -> None:
    nx, ny, _ = size
    cx, cy, cz = crop_size
    at = 0
    for z in range(offset[2], offset[2] + cz):
        for y in range(offset[1], offset[1] + cy):
            begin = (z * ny + y) * nx + offset[0]
            target[begin:begin + cx] = crop[at:at + cx]
            at += cx

