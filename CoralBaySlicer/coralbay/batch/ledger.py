"""What is already done: the batch folder's marker and each case's recorded hashes.

A case counts as done when `DIR/cases/<id>/case.json` exists (the case folder is swapped in as a
whole, so it exists only complete) and the hashes it recorded still match: the image (and
reference) contents, the model, and the settings that change the outputs.

How an input is hashed, and why: the worker that reads a scan also computes its sha256 (of the
file, or of a DICOM folder's sorted relative file names and their contents) and records it with
a cheap "stat key" (names, sizes and modification times). A rerun first compares stat keys; only
where they differ (a file touched, copied or replaced) does it read the contents again and
compare sha256s. So an unchanged cohort of 10,000 scans is checked with stat calls alone, a
changed file is always caught by its size, time or content, and a file merely copied or touched
is not redone. (An edit that keeps size and mtime is not detected; tools that do this on purpose,
like `rsync -a` after a content change, are rare and `--redo` exists for them.)
The model hash is the sha256 of the bundle's manifest, which holds the sha256 of every weight
file (the loader refuses weights that do not match it), plus the hash of a --backbone file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from coralbay.atomic import check_folder_output_name
from coralbay.errors import UsageError

MARKER_NAME = "batch.json"   # identifies a folder as a coralbay batch output
MARKER_FORMAT = "coralbay-batch"
CASE_RECORD = "case.json"    # written last inside each case folder
CHUNK = 1 << 20


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [path]


def stat_key(path: str | os.PathLike) -> str:
    """sha256 of the relative names, sizes and modification times (ns) of an input's files."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in _files_of(path):
        st = file.stat()
        name = file.relative_to(path).as_posix() if path.is_dir() else file.name
        digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def content_sha256(path: str | os.PathLike) -> str:
    """sha256 of an input's contents (a folder: its sorted relative names and file contents)."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in _files_of(path):
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            while block := handle.read(CHUNK):
                digest.update(block)
    return digest.hexdigest()


def fingerprint(path: str | os.PathLike) -> dict[str, str]:
    """What a case records of an input (computed by the worker that reads it anyway)."""
    return {"stat": stat_key(path), "sha256": content_sha256(path)}


def unchanged(path: str | os.PathLike, recorded: dict[str, str] | None) -> bool:
    if not recorded or not os.path.exists(path):
        return False
    if stat_key(path) == recorded.get("stat"):
        return True
    return content_sha256(path) == recorded.get("sha256")


def model_hash(bundle_folder: str | os.PathLike, manifest_name: str, backbone: str | None) -> str:
    digest = hashlib.sha256((Path(bundle_folder) / manifest_name).read_bytes())
    if backbone:
        digest.update(b"\0backbone\0")
        digest.update(content_sha256(backbone).encode() if os.path.exists(backbone) else backbone.encode())
    return digest.hexdigest()


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def check_output_folder(folder: Path) -> None:
    """Refuse a folder that holds something other than an earlier batch (we would mix into it)."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"The output {folder} is a file; give a folder for the batch.")
    check_folder_output_name(folder, "a batch's output")
    if not folder.parent.is_dir():
        raise UsageError(f"The folder {folder.parent} for the batch output does not exist.")
    if folder.is_dir() and any(folder.iterdir()):
        marker = folder / MARKER_NAME
        try:
            ok = json.loads(marker.read_text(encoding="utf-8")).get("format") == MARKER_FORMAT
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise UsageError(f"The output folder {folder} holds other files and is not an earlier "
                             "coralbay batch; give a new or empty folder.")


def read_case_record(case_dir: Path) -> dict | None:
    try:
        record = json.loads((case_dir / CASE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_done(record: dict | None, image: str, reference: str | None, model: str, settings: str) -> bool:
    """True when the recorded case still stands: same model, settings and input contents."""
    if not record or record.get("status") != "done":
        return False
    hashes = record.get("hashes", {})
    if hashes.get("model") != model or hashes.get("settings") != settings:
        return False
    if not unchanged(image, hashes.get("image")):
        return False
    return reference is None or unchanged(reference, hashes.get("reference"))
