"""Masks over the wire: only the box that changed, as zlib-compressed uint8, base64 in JSON.

    {"offset": [x, y, z], "size": [nx, ny, nz], "data": base64(zlib(uint8 voxels, x fastest))}

Why only the changed box: a click changes a small part of a 512x512x300 mask, and a full mask
per click would cost the network more than the click costs the GPU. `crc32` of the whole mask
after the change lets a client prove its copy equals the server's (else it fetches the whole).
"""

from __future__ import annotations

import base64
import binascii
import math
import zlib

import numpy as np

from coralbay.errors import InputError


def changed_box(before: np.ndarray | None, after: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(start zyx, stop zyx) of the voxels that differ; None when nothing changed."""
    diff = after != 0 if before is None or before.shape != after.shape else before != after
    if not diff.any():
        return None
    start, stop = [], []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(diff.any(axis=others))
        start.append(int(hit[0]))
        stop.append(int(hit[-1]) + 1)
    return tuple(start), tuple(stop)


def encode_crop(mask: np.ndarray, box) -> dict:
    (z0, y0, x0), (z1, y1, x1) = box
    part = np.ascontiguousarray(mask[z0:z1, y0:y1, x0:x1], dtype=np.uint8)
    return {"offset": [x0, y0, z0], "size": [x1 - x0, y1 - y0, z1 - z0],
            "data": base64.b64encode(zlib.compress(part.tobytes(), 1)).decode("ascii")}


def mask_crc32(mask: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())


def decode_crop(crop: object, shape_zyx: tuple[int, ...]) -> np.ndarray:
    """A client's crop as a full uint8 volume of `shape_zyx` (zeros outside); one sentence if bad."""
    if not isinstance(crop, dict):
        raise InputError("A crop is an object with offset, size and data.")
    offset, size, data = crop.get("offset"), crop.get("size"), crop.get("data")
    for name, value in (("offset", offset), ("size", size)):
        if not isinstance(value, list) or len(value) != 3 or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            raise InputError(f"The crop's {name} must be three whole numbers >= 0.")
    full_xyz = shape_zyx[::-1]
    if any(o + s > n or s == 0 for o, s, n in zip(offset, size, full_xyz)):
        raise InputError("The crop does not lie inside the scan.")
    if not isinstance(data, str):
        raise InputError("The crop's data must be base64 text.")
    expected = math.prod(size)
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(base64.b64decode(data, validate=True), expected)
    except (binascii.Error, zlib.error, ValueError):
        raise InputError("The crop's data is not base64 zlib.") from None
    if len(raw) != expected or inflater.unconsumed_tail:
        raise InputError("The crop's data does not hold size[0] x size[1] x size[2] bytes.")
    volume = np.zeros(shape_zyx, dtype=np.uint8)
    x0, y0, z0 = offset
    nx, ny, nz = size
    volume[z0:z0 + nz, y0:y0 + ny, x0:x0 + nx] = np.frombuffer(raw, np.uint8).reshape(nz, ny, nx)
    return volume
