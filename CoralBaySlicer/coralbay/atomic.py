"""Write outputs under a temporary name and rename them into place only when complete.

Why: a cancelled, killed or crashed run must never leave a half-written file under an output
name, and must never destroy the previous file of that name. `os.replace` is atomic on POSIX and
Windows when source and target are on the same file system, so the temporary lives beside the
target, hidden, with TEMP_MARKER in its name.

What else makes this hold in practice (each was a hole found by the fault tests):
- the temporary is checked (`verify`) and flushed to disk (fsync) before the rename, and the
  folder after it, so a power cut cannot leave an empty or truncated file under the final name;
- every failure (disk full, file-size limit, permissions, the output folder removed while
  writing) becomes one CoralBayError sentence, and the temporary is removed;
- a folder is swapped in with one atomic exchange where the system has one (Linux renameat2),
  so there is no moment without a complete folder under the name; elsewhere a folder left aside
  by an interrupted swap is put back on the next write;
- temporaries left by killed runs (SIGKILL cannot be caught) are removed by the next write of
  the same output once they are older than STALE_AFTER_S; `remove_stale_partials` does it for a
  whole folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from coralbay.errors import CoralBayError, UsageError

TEMP_MARKER = ".coralbay-partial"
STALE_AFTER_S = 12 * 3600  # a partial output this old belongs to a run that died


def _parent_dir(target: Path) -> Path:
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise CoralBayError(f"The output folder {parent} does not exist.")
    return parent


def _split_name(target: Path) -> tuple[str, str]:
    """(stem, suffixes): keep the full suffix (.nii.gz, .seg.nrrd) so writers that choose a
    format by extension still work on the temporary name."""
    suffix = "".join(target.suffixes)
    return (target.name[: len(target.name) - len(suffix)] if suffix else target.name), suffix


def _temp_prefix(target: Path) -> str:
    return f".{_split_name(target)[0]}{TEMP_MARKER}-"  # tempfile adds a random part, the suffix follows


def _default_mode(is_dir: bool) -> int:
    """The mode a plain open()/mkdir() would give (mkstemp/mkdtemp make private 0600/0700 files)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if is_dir else 0o666) & ~mask


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush a file's data (or a folder's entries) to disk; folders only where the OS allows."""
    if directory and sys.platform.startswith("win"):
        return
    flags = os.O_RDONLY if not sys.platform.startswith("win") else os.O_RDWR
    fd = os.open(path, flags | getattr(os, "O_DIRECTORY", 0) * directory)
    try:
        os.fsync(fd)
    except OSError as exc:
        if not directory or exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise  # some file systems cannot sync a folder: the file itself was synced already
    finally:
        os.close(fd)


def _failure_sentence(target: Path, parent: Path, exc: BaseException, temp_vanished: bool = False) -> str:
    """One sentence for a failed write, most specific cause first.

    `temp_vanished`: the temporary was removed by someone else while it was written. Removing the
    output folder does that first (rmtree unlinks the files, then the folder), so in that window
    the folder still exists and the write's own error (often "incomplete") would mislead.
    """
    unchanged = "any earlier file of that name is unchanged"
    if not parent.is_dir():
        return f"The output folder {parent} disappeared while {target.name} was being written."
    if temp_vanished:
        return (f"The file being written for {target} was removed while it was being written "
                f"(is the output folder {parent} being removed?).")
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"The disk is full: {target} could not be written; {unchanged}."
    if code == errno.EFBIG:
        return f"{target} exceeds the largest file this system or account allows; {unchanged}."
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"There is no permission to write {target}; {unchanged}."
    detail = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    try:
        if shutil.disk_usage(parent).free < (1 << 20):
            return f"The disk is full: {target} could not be written; {unchanged}."
    except OSError:
        pass
    return f"Writing {target} failed ({detail[:200]}); {unchanged}."


def _raise_as_sentence(exc: BaseException, target: Path, parent: Path, temp_vanished: bool = False) -> None:
    """Turn a failed write into one CoralBayError sentence; interrupts and other errors pass."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        return
    if not parent.is_dir() or temp_vanished or isinstance(exc, OSError):
        raise CoralBayError(_failure_sentence(target, parent, exc, temp_vanished)) from exc


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def remove_stale_partials(folder: str | os.PathLike, older_than_s: float = STALE_AFTER_S,
                          prefix: str = ".") -> list[Path]:
    """Remove hidden temporaries of dead runs (names with TEMP_MARKER) older than `older_than_s`."""
    removed = []
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if not entry.name.startswith(prefix) or TEMP_MARKER not in entry.name:
                continue
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime > older_than_s:
                    _remove(Path(entry.path))
                    removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike,
                verify: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it onto `target`, else delete it.

    `verify(temp_path)` may check the written file before it is renamed (raise to refuse it).
    """
    target = Path(target)
    parent = _parent_dir(target)
    remove_stale_partials(parent, prefix=_temp_prefix(target))
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=_split_name(target)[1], dir=parent)
    except OSError as exc:
        raise CoralBayError(_failure_sentence(target, parent, exc)) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    renamed = False
    try:
        os.chmod(tmp_path, _default_mode(is_dir=False))
        yield tmp_path
        if not tmp_path.exists() or tmp_path.stat().st_size == 0:
            raise CoralBayError(f"Writing {target} produced no data.")
        if verify is not None:
            verify(tmp_path)
        _fsync(tmp_path)
        os.replace(tmp_path, target)
        renamed = True
        _fsync(parent, directory=True)
    except BaseException as exc:
        vanished = not renamed and not os.path.lexists(tmp_path)
        _remove(tmp_path)
        _raise_as_sentence(exc, target, parent, temp_vanished=vanished)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _restore_interrupted_swap(target: Path, parent: Path) -> None:
    """If a two-step folder swap died between its renames, put the previous folder back."""
    if target.exists():
        return
    aside = sorted(parent.glob(f".{target.name}{TEMP_MARKER}-old-*"), key=lambda p: p.stat().st_mtime)
    if aside:
        os.replace(aside[-1], target)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target` as a whole.

    On Linux the new folder and an existing `target` are exchanged in one atomic step; elsewhere
    the old folder is moved aside first and removed after the new one is in place (and restored
    by the next call if the run died in between).
    """
    target = Path(target)
    parent = _parent_dir(target)
    _restore_interrupted_swap(target, parent)
    remove_stale_partials(parent, prefix=f".{target.name}{TEMP_MARKER}-")
    try:
        tmp_path = Path(tempfile.mkdtemp(prefix=f".{target.name}{TEMP_MARKER}-", dir=parent))
    except OSError as exc:
        raise CoralBayError(_failure_sentence(target, parent, exc)) from exc
    try:
        os.chmod(tmp_path, _default_mode(is_dir=True))
        yield tmp_path
        for root, _, names in os.walk(tmp_path):
            for name in names:
                _fsync(Path(root) / name)
        _fsync(tmp_path, directory=True)
        if target.exists() and _exchange(tmp_path, target):
            _fsync(parent, directory=True)
            shutil.rmtree(tmp_path, ignore_errors=True)  # now holds the previous folder
        elif target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}{TEMP_MARKER}-old-", dir=parent))
            old.rmdir()
            os.replace(target, old)
            os.replace(tmp_path, target)
            _fsync(parent, directory=True)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_path, target)
            _fsync(parent, directory=True)
    except BaseException as exc:
        shutil.rmtree(tmp_path, ignore_errors=True)
        _raise_as_sentence(exc, target, parent)
        raise


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    """Write a small text file atomically (reports, manifests, label tables)."""
    with atomic_file(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


# Names that say "file": a folder output given one of these is a mistake (`-o liver.stl` for a
# folder of meshes, `-o c.nii.gz` for a review), not a wish for a folder with that name.
FILE_SUFFIXES = (".nii", ".gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".stl", ".obj", ".vtk", ".ply",
                 ".json", ".csv", ".png", ".txt", ".parquet", ".zip")


def check_folder_output_name(target: str | os.PathLike, what: str) -> None:
    """Refuse a file-like name (FILE_SUFFIXES) for an output that is a folder, unless that folder
    already exists (an earlier run's, which the caller checks)."""
    path = Path(target)
    if path.suffix.lower() in FILE_SUFFIXES and not path.is_dir():
        raise UsageError(f"The output {path} is a file name, but {what} is a folder; give a folder name "
                         f"(without {''.join(path.suffixes)}).")
