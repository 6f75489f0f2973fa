"""The upload format of `coralbay serve`: a JSON geometry header and raw voxels, nothing else.

Why our own format: the server must never parse DICOM or NIfTI from a client (large parsers,
patient tags); this one is a magic line, a length-prefixed JSON header with geometry only, and
little-endian voxels in x-fastest order, optionally zlib-compressed as one stream:

    b"CORALBAY-VOLUME\\n" | uint32 LE header length | header JSON | voxels
    header: {"version": 1, "dtype": "int16", "size": [nx, ny, nz], "spacing": [3 mm],
             "origin": [3 mm, LPS], "direction": [9, row-major LPS], "compression": "none"|"zlib"}

Decoding checks every field before allocating, caps the decompressed size at what the header
announces (a compression bomb stops there) and refuses anything else (pickles, object arrays,
.npy/.pt files fail on the magic line). The Slicer client writes it with the standard library
(CoralBaySlicerLib/remote_client.py); the server reads it here.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coralbay.errors import InputError

MAGIC = b"CORALBAY-VOLUME\n"
DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
MAX_HEADER_BYTES = 4096
COMPRESSIONS = ("none", "zlib")


@dataclass(frozen=True)
class VolumeHeader:
    dtype: str
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    compression: str

    @property
    def voxel_bytes(self) -> int:
        return math.prod(self.size) * np.dtype(self.dtype).itemsize


def _numbers(value: object, count: int, what: str) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != count or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise InputError(f"The volume header's {what} must be {count} finite numbers.")
    return tuple(float(v) for v in value)


def parse_header(data: bytes, max_voxels: int, max_bytes: int = 1 << 31) -> tuple[VolumeHeader, int]:
    """The header and the offset of the voxels; one sentence for anything wrong (`max_bytes`: the
    largest decoded size accepted, so a float64 volume at the voxel limit cannot exhaust memory)."""
    if not data.startswith(MAGIC):
        raise InputError("The upload is not a CoralBay volume (it must start with the CORALBAY-VOLUME line).")
    if len(data) < len(MAGIC) + 4:
        raise InputError("The upload ends inside its header.")
    (length,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    if length > MAX_HEADER_BYTES or start + length > len(data):
        raise InputError("The volume header is too long or truncated.")
    try:
        fields = json.loads(data[start:start + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InputError("The volume header is not JSON.") from None
    if not isinstance(fields, dict) or fields.get("version") != 1:
        raise InputError("The volume header must be a JSON object with version 1.")
    if fields.get("dtype") not in DTYPES:
        raise InputError(f"The voxel type must be one of {', '.join(DTYPES)}.")
    size = fields.get("size")
    if not isinstance(size, list) or len(size) != 3 or not all(
            isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 65535 for n in size):
        raise InputError("The volume size must be three whole numbers from 1 to 65535.")
    if math.prod(size) > max_voxels:
        raise InputError(f"The volume has {math.prod(size)} voxels; this server accepts at most {max_voxels}.")
    spacing = _numbers(fields.get("spacing"), 3, "spacing")
    if min(spacing) <= 0:
        raise InputError("The voxel spacing must be positive.")
    direction = _numbers(fields.get("direction"), 9, "direction")
    if abs(np.linalg.det(np.array(direction).reshape(3, 3))) < 1e-3:
        raise InputError("The volume direction matrix is singular.")
    compression = fields.get("compression", "none")
    if compression not in COMPRESSIONS:
        raise InputError(f"The compression must be one of {', '.join(COMPRESSIONS)}.")
    header = VolumeHeader(fields["dtype"], tuple(size), spacing, _numbers(fields.get("origin"), 3, "origin"),
                          direction, compression)
    if header.voxel_bytes > max_bytes:
        raise InputError(f"The volume decodes to {header.voxel_bytes} bytes; this server accepts at most {max_bytes}.")
    return header, start + length


def decode_volume(data: bytes, max_voxels: int, max_bytes: int = 1 << 31) -> tuple[VolumeHeader, np.ndarray]:
    """The header and the voxels as a (z, y, x) array; never more than the header announces."""
    header, offset = parse_header(data, max_voxels, max_bytes)
    payload = memoryview(data)[offset:]
    expected = header.voxel_bytes
    if header.compression == "zlib":
        inflater = zlib.decompressobj()
        try:
            raw = inflater.decompress(payload, expected)
        except zlib.error:
            raise InputError("The voxel data is not a valid zlib stream.") from None
        if inflater.unconsumed_tail or inflater.unused_data:
            raise InputError("The voxel data holds more than the header's size announces.")
    else:
        raw = bytes(payload)
    if len(raw) != expected:
        raise InputError(f"The voxel data holds {len(raw)} bytes; the header announces {expected}.")
    voxels = np.frombuffer(raw, dtype=np.dtype(header.dtype).newbyteorder("<"))
    return header, voxels.reshape(header.size[::-1])


def encode_volume(voxels: np.ndarray, spacing, origin, direction, compression: str = "zlib",
                  level: int = 1) -> bytes:
    """The same format from a (z, y, x) array (the server's answers and the tests use it)."""
    dtype = np.dtype(voxels.dtype).name
    if dtype not in DTYPES:
        raise InputError(f"The voxel type {dtype} cannot be sent; use one of {', '.join(DTYPES)}.")
    header = json.dumps({"version": 1, "dtype": dtype, "size": list(voxels.shape[::-1]),
                         "spacing": [float(v) for v in spacing], "origin": [float(v) for v in origin],
                         "direction": [float(v) for v in direction], "compression": compression}).encode()
    raw = np.ascontiguousarray(voxels, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    body = zlib.compress(raw, level) if compression == "zlib" else raw
    return MAGIC + struct.pack("<I", len(header)) + header + body


def read_header_of_file(path: Path, max_voxels: int, max_bytes: int = 1 << 31) -> VolumeHeader:
    with path.open("rb") as stream:
        return parse_header(stream.read(len(MAGIC) + 4 + MAX_HEADER_BYTES), max_voxels, max_bytes)[0]
