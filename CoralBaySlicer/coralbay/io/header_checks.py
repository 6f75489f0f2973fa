"""Checks of a volume file's header before ITK allocates memory for it and reads its voxels.

Why: ITK trusts headers. A header may declare far more voxels than its file holds (ITK then
allocates for the declared size: an out-of-memory failure, or on Linux an allocation that only
fails when touched), name a detached data file that is missing, a folder, a FIFO or a device
(reading /dev/stdin or a FIFO blocks forever), or list no data files at all (MetaIO then returns
uninitialised memory as voxels). These checks parse only the few header fields that say where the
voxels are (NRRD `data file`/`encoding`, MetaImage `ElementDataFile`/`CompressedData`), take the
declared size from ITK's header-only pass, and refuse with one sentence before anything is read.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

from coralbay.errors import InputError

HEADER_BYTES = 1 << 20  # text headers are parsed from the first MiB at most
MAX_DEFLATE_RATIO = 1100  # deflate/gzip cannot expand data more than ~1032 times
MAX_DATA_FILES = 100_000
SPACING_MIN_MM, SPACING_LIMIT_MM = 1e-4, 1e4  # same plausible range as volume_io.check_volume
_PATTERN = re.compile(r"^(?P<format>\S*%0?\d*d\S*)\s+(?P<min>-?\d+)\s+(?P<max>-?\d+)\s+(?P<step>-?\d+)(\s+\S+)?$")


@dataclass(frozen=True)
class Payload:
    """Where the voxels of a file are and how they are stored."""

    files: tuple[Path, ...]
    offset: int = 0  # bytes of header before the voxels in files[0] (attached data)
    encoding: str = "unknown"  # raw | compressed | text | unknown
    orientation_stated: bool | None = None  # does the header give the axes' directions (None: unknown)
    expanded_bytes: int | None = None  # compressed data: bytes once decompressed (check_compressed_data)

    def stored_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files) - self.offset


def _lines(path: Path) -> list[str]:
    """The first MiB of a text header, as lines (latin-1: any byte decodes)."""
    with open(path, "rb") as f:
        return f.read(HEADER_BYTES).decode("latin-1").split("\n")


def _data_files(header: Path, value: str, following: list[str], what: str) -> tuple[Path, ...]:
    """The detached data files named by a header value (single name, LIST, or printf pattern)."""
    value = value.strip()
    folder = header.parent
    if value.split()[:1] and value.split()[0].upper() == "LIST":
        names = [line.strip() for line in following if line.strip()]
        if not names:
            raise InputError(f"The header {header} lists no data files ({what} LIST with no names).")
    elif "%" in value:
        match = _PATTERN.match(value)
        if not match or value.count("%") != 1:
            raise InputError(f"The header {header} has a malformed {what} pattern ({value[:80]}).")
        first, last, step = (int(match[k]) for k in ("min", "max", "step"))
        count = (last - first) // step + 1 if step else 0
        if step == 0 or not 0 < count <= MAX_DATA_FILES:
            raise InputError(f"The header {header} names an impossible number of data files ({value[:80]}).")
        names = [match["format"] % i for i in range(first, last + 1 if step > 0 else last - 1, step)]
    else:
        names = [value]
    files = []
    for name in names:
        path = Path(name) if os.path.isabs(name) else folder / name
        check_inside_header_folder(header, name, path)
        if not path.exists():
            raise InputError(f"The data file {path} named in {header} does not exist.")
        if not path.is_file() or path.resolve() == header.resolve():
            raise InputError(f"The data file {path} named in {header} is not a regular data file.")
        files.append(path)
    return tuple(files)


def check_inside_header_folder(header: Path, name: str, path: Path) -> None:
    """Refuse a detached data file outside the header's folder and its subfolders.

    Why: a header received with a cohort could name any file (an absolute path such as
    /etc/hostname, "../" of another patient's folder, or a link leading out), and ITK would read
    it as voxels. Links are followed before the check, so a link out of the folder is refused too.
    """
    try:
        inside = path.resolve().is_relative_to(header.parent.resolve())
    except (OSError, ValueError, RuntimeError):  # a NUL byte in the name, a link loop
        raise InputError(f"The header {header} names an invalid data file ({name.strip()[:80]!r}).") from None
    if not inside:
        raise InputError(f"The header {header} names the data file {name.strip()[:200]}, which lies outside "
                         "the header's folder; only data files in that folder or below it are read.")


def _nrrd_payload(path: Path) -> Payload:
    lines = _lines(path)
    fields: dict[str, str] = {}
    header_end = None
    data_line = None
    for index, line in enumerate(lines[1:], start=1):
        line = line.rstrip("\r")
        if not line.strip():
            header_end = index
            break
        if line.startswith("#") or ":=" in line or ":" not in line:
            continue
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() in ("data file", "datafile"):
            data_line = index
            if value.split()[:1] and value.split()[0].upper() == "LIST":
                break  # the remaining lines are the data file names
    _check_nrrd_spacing(path, fields)
    encoding = fields.get("encoding", "").lower()
    kind = ("compressed" if encoding in ("gzip", "gz", "bzip2", "bz2") else
            "raw" if encoding == "raw" else "text")
    stated = "space directions" in fields
    if data_line is not None:
        value = fields.get("data file", fields.get("datafile", ""))
        return Payload(_data_files(path, value, lines[data_line + 1:], "data file"), 0, kind, stated)
    if header_end is None:
        raise InputError(f"The NRRD file {path} has no blank line ending its header.")
    offset = len("\n".join(lines[: header_end + 1]).encode("latin-1")) + 1
    return Payload((path,), min(offset, path.stat().st_size), kind, stated)


def _check_nrrd_spacing(path: Path, fields: dict[str, str]) -> None:
    """Refuse implausibly long axis vectors (ITK silently replaces overflowing ones by 1 mm)."""
    for key in ("space directions", "spacings"):
        for token in re.findall(r"\(([^)]*)\)", fields.get(key, "")) or fields.get(key, "").split():
            try:
                values = [float(v) for v in token.split(",")]
            except ValueError:
                continue  # "none" or malformed: NRRD's own parser reports it
            if not all(map(math.isfinite, values)):
                continue  # NRRD's own parser reports non-finite values
            if math.hypot(*values) > SPACING_LIMIT_MM:
                raise InputError(f"The NRRD file {path} declares an implausible voxel spacing ({token.strip()}).")


def _meta_payload(path: Path) -> Payload:
    lines = _lines(path)
    fields: dict[str, str] = {}
    for index, line in enumerate(lines):
        if "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.strip().lower()
        fields[key] = value.strip()
        if key == "elementdatafile":
            compressed = fields.get("compresseddata", "").lower() == "true"
            kind = "compressed" if compressed else "raw"
            if fields[key].upper() == "LOCAL":
                offset = len("\n".join(lines[: index + 1]).encode("latin-1")) + 1
                payload = Payload((path,), min(offset, path.stat().st_size), kind)
            else:
                payload = Payload(_data_files(path, fields[key], lines[index + 1:], "ElementDataFile"), 0, kind)
            _check_compressed_size(path, fields.get("compresseddatasize"), payload)
            stated = any(k in fields for k in ("transformmatrix", "orientation", "rotation"))
            return replace(payload, orientation_stated=stated)
    raise InputError(f"The MetaImage header {path} has no ElementDataFile line.")


def _check_compressed_size(path: Path, declared: str | None, payload: Payload) -> None:
    """MetaIO allocates CompressedDataSize bytes before reading: refuse more than the file holds."""
    if declared is None:
        return
    try:
        size = int(declared.split()[0])
    except (ValueError, IndexError):
        return  # MetaIO reports a malformed value itself
    if size > payload.stored_bytes():
        raise InputError(f"The MetaImage header {path} declares {size} bytes of compressed data but "
                         f"the file holds {payload.stored_bytes()}.")


# NIfTI-1 header: dim (8 int16) at 40, pixdim (8 float32) at 76, qform_code/sform_code (int16) at
# 252, quatern_b..d and qoffset_x..z (6 float32) at 256, srow_x/y/z (12 float32) at 280.
def _check_nifti1(path: Path, header: bytes) -> bool | None:
    """Refuse NIfTI-1 geometry fields that ITK would silently replace (NaN/zero voxel sizes,
    non-finite or impossible quaternions and affine rows) or interpret differently from the
    standard (negative voxel sizes, which nibabel also refuses). Returns whether the header
    states an orientation (a qform or sform code), None when it is not NIfTI-1."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack_from(order + "i", header, 0)[0] == 348:
            break
    else:
        return None  # not NIfTI-1: ITK decides what it is
    dims = struct.unpack_from(order + "8h", header, 40)
    pixdim = struct.unpack_from(order + "8f", header, 76)
    qform_code, sform_code = struct.unpack_from(order + "2h", header, 252)
    quatern = struct.unpack_from(order + "6f", header, 256)
    srow = struct.unpack_from(order + "12f", header, 280)
    spatial = max(1, min(3, dims[0]))
    sizes = pixdim[1:1 + spatial]
    if not all(math.isfinite(v) and SPACING_MIN_MM <= v <= SPACING_LIMIT_MM for v in sizes):
        raise InputError(f"The NIfTI file {path} has an invalid voxel size (pixdim {', '.join(f'{v:g}' for v in sizes)}).")
    if header[344:347] not in (b"n+1", b"ni1"):
        return False  # Analyze 7.5: no qform/sform fields at these offsets, no orientation
    if qform_code > 0:
        b, c, d = quatern[:3]
        if not all(map(math.isfinite, quatern)) or b * b + c * c + d * d > 1.0 + 1e-5:
            raise InputError(f"The NIfTI file {path} has an invalid orientation (qform quaternion or offset).")
    if sform_code > 0 and not all(map(math.isfinite, srow)):
        raise InputError(f"The NIfTI file {path} has an invalid orientation (sform rows are not finite).")
    return qform_code > 0 or sform_code > 0


def _nifti_header(path: Path, compressed: bool) -> bytes:
    try:
        if compressed:
            with gzip.open(path, "rb") as f:
                return f.read(348)
        with open(path, "rb") as f:
            return f.read(348)
    except (OSError, EOFError, zlib.error):
        return b""  # a damaged gzip stream: ITK reports it


def check_header(path: str | os.PathLike) -> Payload:
    """Check the parts of a header ITK trusts blindly; return where the voxel data is.

    NRRD and MetaImage: the detached data files must be regular files; NRRD axis lengths must be
    plausible; MetaImage CompressedDataSize must fit the file. NIfTI-1 (.nii, .nii.gz):
    voxel sizes and orientation fields must be valid. Other formats: the file itself.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(352)
    name = path.name.lower()
    if head.startswith(b"NRRD"):
        return _nrrd_payload(path)
    if name.endswith((".mha", ".mhd")):
        return _meta_payload(path)
    if head[:2] == b"\x1f\x8b":
        stated = None
        if name.endswith((".nii.gz", ".nii")):
            stated = _check_nifti1(path, _nifti_header(path, compressed=True))
        return Payload((path,), 0, "compressed", stated)
    if name.endswith(".hdr"):
        stated = _check_nifti1(path, _nifti_header(path, compressed=False))
        for image_name in (path.with_suffix(".img"), path.with_suffix(".img.gz")):
            if image_name.is_file():
                kind = "compressed" if image_name.name.endswith(".gz") else "raw"
                return Payload((image_name,), 0, kind, stated)
        raise InputError(f"The image file {path.with_suffix('.img')} that belongs to {path} does not exist.")
    if head[344:347] in (b"n+1", b"ni1") or head[4:7] == b"n+2":
        stated = _check_nifti1(path, _nifti_header(path, compressed=False))
        return Payload((path,), min(348, len(head)), "raw", stated)
    return Payload((path,), 0, "unknown")


_CHUNK = 1 << 22  # compressed streams are verified 4 MiB at a time: memory stays bounded
CUT_SHORT = "its compressed data ends early (the file is cut short, as an interrupted copy or download leaves it)"


def _decompressor(start: bytes):
    """A streaming decompressor for data that starts with `start` (None: not a stream we know).

    gzip carries a CRC-32 and the length, zlib an Adler-32, bzip2 a CRC per block: each
    decompressor raises on a mismatch once it reaches the stream's end.
    """
    import bz2

    if start[:2] == b"\x1f\x8b":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if start[:3] == b"BZh":
        return bz2.BZ2Decompressor()
    if len(start) >= 2 and start[0] & 0x0F == 8 and (start[0] << 8 | start[1]) % 31 == 0:
        return zlib.decompressobj()
    return None


def _stream_size(path: Path, offset: int) -> int | None:
    """Bytes that the compressed stream(s) stored in `path` from `offset` expand to.

    Reads to the end of the last stream, so a stream that ends early or fails its checksum is
    found here, before ITK (whose NIfTI reader silently zero-fills a short gzip stream) sees it.
    Concatenated gzip members (as `cat a.gz b.gz` makes) are read as one stream, as gzip does.
    None when the data is not a gzip/zlib/bzip2 stream (ITK then decides).
    """
    with open(path, "rb") as f:
        f.seek(offset)
        pending = f.read(_CHUNK)
        stream = _decompressor(pending)
        if stream is None:
            return None
        total = 0
        try:
            while True:
                total += len(stream.decompress(pending))
                if stream.eof:
                    rest = stream.unused_data + f.read(_CHUNK)
                    if rest[:2] != b"\x1f\x8b":
                        return total  # trailing bytes after the data (padding) do not change voxels
                    stream, pending = _decompressor(rest), rest  # the next gzip member
                    continue
                pending = f.read(_CHUNK)
                if not pending:
                    raise InputError(f"The file {path} cannot be used: {CUT_SHORT}.")
        except (zlib.error, OSError, EOFError) as exc:
            what = ("fails its checksum" if "check" in str(exc).lower() or "crc" in str(exc).lower()
                    else "is corrupt")
            raise InputError(f"The file {path} cannot be used: its compressed data {what} "
                             "(the file is damaged).") from None


def check_compressed_data(payload: Payload) -> Payload:
    """Decompress a compressed payload to its end; refuse it unless complete and intact.

    Why: a `.nii.gz` cut short by an interrupted copy is read by ITK without a word, the missing
    part as zeros, and a damaged one may be read too. The whole stream is verified here (length
    and checksum, streaming so memory stays bounded); `check_declared_size` then makes sure it
    holds every voxel the header declares. Returns the payload with `expanded_bytes` set.
    """
    if payload.encoding != "compressed":
        return payload
    total = 0
    for index, data_file in enumerate(payload.files):
        size = _stream_size(data_file, payload.offset if index == 0 else 0)
        if size is None:
            return payload
        total += size
    return replace(payload, expanded_bytes=total)


def pixel_bytes(pixel_type: str) -> int:
    """Bytes per component from SimpleITK's pixel type name ('16-bit signed integer', ...)."""
    match = re.search(r"(\d+)-bit", pixel_type)
    size = int(match[1]) // 8 if match else 8
    return size * (2 if "complex" in pixel_type else 1)


def check_declared_size(path: str | os.PathLike, payload: Payload, size: tuple[int, ...],
                        components: int, pixel_type: str) -> None:
    """Refuse a header that declares more voxels than its data could hold or memory could take."""
    voxels = 1
    for s in size:
        voxels *= int(s)
    declared = voxels * max(1, components) * pixel_bytes(pixel_type)
    stored = payload.stored_bytes()
    shape = " x ".join(map(str, size))
    if payload.encoding == "raw" and stored < declared:
        raise InputError(f"The file {path} holds {stored} bytes of voxel data but its header declares "
                         f"a {shape} image of {declared} bytes (truncated file or wrong header).")
    if payload.expanded_bytes is not None and payload.expanded_bytes < declared:
        raise InputError(f"The file {path} holds {payload.expanded_bytes} bytes once decompressed, fewer "
                         f"than the {declared} bytes of its declared {shape} image (truncated file or wrong header).")
    if payload.encoding == "text" and stored < voxels:
        raise InputError(f"The file {path} holds too little text for the {shape} voxels its header declares.")
    if declared > MAX_DEFLATE_RATIO * stored + (1 << 16):
        raise InputError(f"The header of {path} declares a {shape} image ({declared / 2**30:.3g} GiB) "
                         f"that its {stored} bytes of data cannot hold, even compressed.")
    check_fits_in_memory(f"The image {path} ({shape} voxels)", declared)


def check_fits_in_memory(what: str, nbytes: int) -> None:
    """Refuse an image larger than the computer's memory before anything allocates it.

    (A finer estimate of what a whole run needs belongs to the run; this only stops headers
    that no computer of this size could ever read.)
    """
    memory = physical_memory_bytes()
    if memory is not None and nbytes > memory:
        raise InputError(f"{what} would need {nbytes / 2**30:.3g} GiB, more than this computer's "
                         f"memory ({memory / 2**30:.3g} GiB).")


def physical_memory_bytes() -> int | None:
    """This computer's physical memory, from the standard library only (the Slicer module checks
    engine outputs with this file before the engine's packages are installed); None if unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        pass
    try:  # Windows
        import ctypes

        kilobytes = ctypes.c_ulonglong()
        if ctypes.windll.kernel32.GetPhysicallyInstalledSystemMemory(ctypes.byref(kilobytes)):
            return kilobytes.value * 1024
    except (AttributeError, OSError):
        pass
    return None
