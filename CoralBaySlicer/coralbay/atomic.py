"""Write outputs under a temporary name and rename them into place only when complete.

Why: a cancelled, killed or crashed run must never leave a half-written file under an output
name, and must never destroy the previous file of that name. `os.replace` is atomic on POSIX and
Windows when source and target are on the same file system, so the temporary lives beside the
target.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from coralbay.errors import CoralBayError

TEMP_MARKER = ".coralbay-partial"


def _parent_dir(target: Path) -> Path:
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise CoralBayError(f"The output folder {parent} does not exist.")
    return parent


def _default_mode(directory: bool) -> int:
    """The permissions a plain open()/mkdir() would give (mkstemp/mkdtemp use 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _temp_name(target: Path) -> str:
    # Keep the full suffix (e.g. .nii.gz, .seg.nrrd) so writers that choose a format by extension
    # still work on the temporary name.
    name = target.name
    suffix = "".join(target.suffixes) if target.suffixes else ""
    stem = name[: len(name) - len(suffix)] if suffix else name
    return f".{stem}{TEMP_MARKER}-"  # prefix; tempfile adds a random part, the suffix follows


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it onto `target`, else delete it."""
    target = Path(target)
    parent = _parent_dir(target)
    suffix = "".join(target.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=_temp_name(target), suffix=suffix, dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, _default_mode(directory=False))
    try:
        yield tmp_path
        if not tmp_path.exists() or tmp_path.stat().st_size == 0:
            raise CoralBayError(f"Writing {target} produced no data.")
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target` as a whole.

    An existing `target` folder is moved aside first and removed only after the new one is in
    place, so at every moment either the old or the new complete folder exists.
    """
    target = Path(target)
    parent = _parent_dir(target)
    tmp_path = Path(tempfile.mkdtemp(prefix=f".{target.name}{TEMP_MARKER}-", dir=parent))
    os.chmod(tmp_path, _default_mode(directory=True))
    try:
        yield tmp_path
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
            old.rmdir()
            os.replace(target, old)
            os.replace(tmp_path, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_path, target)
    except BaseException:
        shutil.rmtree(tmp_path, ignore_errors=True)
        raise


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    """Write a small text file atomically (reports, manifests, label tables)."""
    with atomic_file(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
