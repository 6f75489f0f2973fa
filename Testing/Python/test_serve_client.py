"""The Slicer side of the remote engine without a server: standard library only, and its NRRD
reading, upload encoding and crop pasting agree with SimpleITK and the server's NumPy code."""

from __future__ import annotations

import ast
import base64
import hashlib
import sys
import zlib

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ENGINE_DIR
from CoralBaySlicerLib.remote_client import RemoteEngine
from CoralBaySlicerLib.remote_volumes import (ENCODE_CHUNK, Volume, crop_bytes, encode_and_hash, encode_upload,
                                              nonzero_box, paste_bytes, read_nrrd, worth_compressing, write_nrrd)
from coralbay.serve.crops import changed_box, encode_crop
from coralbay.serve.volume_format import decode_volume

CLIENT_FILES = ("remote_client.py", "remote_session.py", "remote_volumes.py")


@pytest.mark.parametrize("name", CLIENT_FILES)
def test_client_imports_only_the_standard_library(name):
    tree = ast.parse((ENGINE_DIR / "CoralBaySlicerLib" / name).read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    allowed = set(sys.stdlib_module_names) | {"__future__", "CoralBaySlicerLib"}
    assert imported <= allowed, imported - allowed


def _image(direction: tuple, dtype=np.int16, size=(7, 5, 4)) -> sitk.Image:
    rng = np.random.default_rng(1)
    image = sitk.GetImageFromArray(rng.integers(-1000, 1000, size[::-1]).astype(dtype))
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-10.5, 20.25, -300.0))
    image.SetDirection(direction)
    return image


OBLIQUE = tuple(np.linalg.qr(np.array([[1, 0.2, 0], [0.1, 1, 0.3], [0, -0.2, 1.0]]))[0].ravel())


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1), OBLIQUE])
@pytest.mark.parametrize("compress", [False, True])
def test_nrrd_reader_and_upload_agree_with_simpleitk(tmp_path, direction, compress):
    image = _image(direction)
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(path), compress)
    volume = read_nrrd(path)
    assert volume.size == image.GetSize()
    assert np.allclose(volume.spacing, image.GetSpacing()) and np.allclose(volume.origin, image.GetOrigin())
    assert np.allclose(volume.direction, image.GetDirection())
    header, voxels = decode_volume(encode_upload(volume), max_voxels=10**6)
    assert np.array_equal(voxels, sitk.GetArrayFromImage(image))
    written = sitk.ReadImage(str(write_nrrd(volume, tmp_path / "back.nrrd")))
    assert np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(image))
    assert np.allclose(written.GetDirection(), image.GetDirection()) and np.allclose(written.GetOrigin(), image.GetOrigin())


def test_real_ct_nrrd_reads_as_simpleitk_reads_it(shared_data):
    path = shared_data / "pyradiomics" / "lung1_image.nrrd"
    if not path.is_file():
        pytest.skip(f"{path} is not in the shared data")
    image, volume = sitk.ReadImage(str(path)), read_nrrd(path)
    assert volume.size == image.GetSize() and np.allclose(volume.origin, image.GetOrigin())
    assert np.allclose(volume.direction, image.GetDirection()) and np.allclose(volume.spacing, image.GetSpacing())
    assert np.array_equal(np.frombuffer(volume.data, np.dtype(volume.dtype)).reshape(image.GetSize()[::-1]),
                          sitk.GetArrayFromImage(image))


def test_server_crop_pasted_by_the_client_gives_the_server_mask():
    rng = np.random.default_rng(2)
    before = (rng.random((9, 11, 13)) > 0.7).astype(np.uint8)
    after = before.copy()
    after[2:5, 3:9, 4:6] ^= 1
    crop = encode_crop(after, changed_box(before, after))
    copy = bytearray(before.tobytes())
    paste_bytes(copy, (13, 11, 9), crop["offset"], crop["size"], zlib.decompress(base64.b64decode(crop["data"])))
    assert bytes(copy) == after.tobytes()
    box = nonzero_box((after ^ before).tobytes(), (13, 11, 9))
    assert box == ((4, 3, 2), (6, 9, 5))
    assert len(crop_bytes(after.tobytes(), (13, 11, 9), *box)) == 2 * 6 * 3


def test_upload_encoding_hashes_in_one_pass_and_sends_raw_when_compressing_does_not_pay():
    """The one-pass hash is the hash of the body; more than one chunk still makes one zlib stream
    the server decodes; "auto" sends raw voxels to this machine, and over a network compresses
    only what shrinks (a flat region does, white noise does not)."""
    rng = np.random.default_rng(3)
    size = (4096, ENCODE_CHUNK // 4096 + 3, 1)   # a little more than one chunk
    noise = rng.integers(0, 256, size[0] * size[1], dtype=np.uint8).tobytes()
    flat = bytes(len(noise))
    assert worth_compressing(flat) and not worth_compressing(noise)
    for data in (noise, flat):
        volume = Volume("uint8", size, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), data)
        for compression in ("zlib", "none"):
            body, digest = encode_and_hash(volume, compression)
            assert digest == hashlib.sha256(body).hexdigest()
            header, voxels = decode_volume(body, max_voxels=10**8)
            assert header.compression == compression and voxels.tobytes() == data
    volume = Volume("uint8", size, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), flat)
    assert RemoteEngine("http://127.0.0.1:9", "t").upload_compression(volume) == "none"
    assert RemoteEngine("https://cb.example:9", "t").upload_compression(volume) == "zlib"
    assert RemoteEngine("https://cb.example:9", "t", compression="none").upload_compression(volume) == "none"

