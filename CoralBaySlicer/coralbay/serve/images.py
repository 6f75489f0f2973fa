"""Uploaded images, stored once per user by the SHA-256 of their encoded bytes, resumable.

Why per user: a dedup hit tells the asker that the image exists; across users that would leak
that someone uploaded a given scan. Why resumable by offset: a 150 MB scan over a hospital
network is often cut; the client asks how much arrived (HEAD) and sends the rest.
A finished upload is checked whole (its hash, then its header and voxel count, decompressing in
bounded steps) before it counts; the NRRD the engine's workers open is written from it by us.
"""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from pathlib import Path

from coralbay.errors import CoralBayError, InputError
from coralbay.serve.volume_format import VolumeHeader, decode_volume, parse_header, MAGIC, MAX_HEADER_BYTES

SHA256 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20


class UploadConflict(CoralBayError):
    """The client's offset is not where the stored part ends (it carries the right offset)."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"The stored part ends at byte {offset}; send from there.")
        self.offset = offset


def check_digest(digest: str) -> str:
    if not SHA256.match(digest):
        raise InputError("An image is named by the SHA-256 of its bytes: 64 lowercase hex digits.")
    return digest


class ImageStore:
    def __init__(self, root: Path, max_voxels: int, max_decoded_bytes: int) -> None:
        self.root = Path(root)
        self.max_voxels, self.max_decoded_bytes = max_voxels, max_decoded_bytes

    def folder(self, user: str) -> Path:
        path = self.root / user
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def complete_path(self, user: str, digest: str) -> Path:
        return self.folder(user) / f"{check_digest(digest)}.cbv"

    def partial_path(self, user: str, digest: str) -> Path:
        return self.folder(user) / f"{check_digest(digest)}.partial"

    def state(self, user: str, digest: str) -> tuple[bool, int] | None:
        """(complete, bytes stored) or None when nothing of it is here."""
        if self.complete_path(user, digest).is_file():
            return True, self.complete_path(user, digest).stat().st_size
        partial = self.partial_path(user, digest)
        return (False, partial.stat().st_size) if partial.is_file() else None

    def append(self, user: str, digest: str, offset: int, chunk: bytes) -> int:
        """Append at `offset` (must be where the stored part ends); returns the new length."""
        partial = self.partial_path(user, digest)
        stored = partial.stat().st_size if partial.is_file() else 0
        if offset != stored:
            raise UploadConflict(stored)
        with partial.open("ab") as stream:
            stream.write(chunk)
        return stored + len(chunk)

    def finish(self, user: str, digest: str) -> VolumeHeader:
        """Check the whole upload; it becomes the stored image, or is deleted with one sentence."""
        partial = self.partial_path(user, digest)
        try:
            header = self._verify(partial, digest)
        except InputError:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, self.complete_path(user, digest))
        return header

    def _verify(self, path: Path, digest: str) -> VolumeHeader:
        sha = hashlib.sha256()
        with path.open("rb") as stream:
            head = stream.read(len(MAGIC) + 4 + MAX_HEADER_BYTES)
            sha.update(head)
            for block in iter(lambda: stream.read(CHUNK), b""):
                sha.update(block)
        if sha.hexdigest() != digest:
            raise InputError("The uploaded bytes do not match the SHA-256 they were sent under.")
        header, offset = parse_header(head, self.max_voxels, self.max_decoded_bytes)
        expected = header.voxel_bytes
        produced = 0
        inflater = zlib.decompressobj() if header.compression == "zlib" else None
        with path.open("rb") as stream:
            stream.seek(offset)
            for block in iter(lambda: stream.read(CHUNK), b""):
                if inflater is None:
                    produced += len(block)
                else:
                    data = block
                    while data:  # bounded steps: never more than the header announces, plus one
                        try:
                            out = inflater.decompress(data, CHUNK)
                        except zlib.error:
                            raise InputError("The voxel data is not a valid zlib stream.") from None
                        produced += len(out)
                        if produced > expected:
                            break
                        data = inflater.unconsumed_tail
                if produced > expected:
                    break
        if inflater is not None and not inflater.eof and produced == expected:
            raise InputError("The voxel data's zlib stream is truncated.")
        if produced != expected:
            raise InputError(f"The voxel data does not hold the {expected} bytes its header announces.")
        return header

    def engine_file(self, user: str, digest: str) -> Path:
        """The image as NRRD for the engine's processes (written once, from our own decoding)."""
        import SimpleITK as sitk

        from coralbay.io.volumes import write_image

        target = self.folder(user) / f"{check_digest(digest)}.nrrd"
        if target.is_file():
            return target
        source = self.complete_path(user, digest)
        if not source.is_file():
            raise FileNotFoundError(digest)
        header, voxels = decode_volume(source.read_bytes(), self.max_voxels, self.max_decoded_bytes)
        image = sitk.GetImageFromArray(voxels)
        image.SetSpacing(header.spacing)
        image.SetOrigin(header.origin)
        image.SetDirection(header.direction)
        write_image(image, target, compress=False)
        return target
