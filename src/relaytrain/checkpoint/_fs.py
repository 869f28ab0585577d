"""Durable file-system primitives: fsync, atomic file writes, staged folders, atomic publish, removal.

Everything here is about ordering on disk: data is fsynced before the rename that makes it
visible, and the parent directory is fsynced after the rename so the new name survives a
power cut. Nothing here knows about checkpoints: every file or folder the project writes
for others to read goes through ``atomic_write_text``/``atomic_write_bytes`` or ``staged_dir``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_PREFIX = ".tmp-"
"""Every name that starts with this is a temporary: never listed, removed by ``clean_temp``."""


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by path (a read-only descriptor is enough on Linux)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path, *, skip_files: frozenset[str] = frozenset()) -> None:
    """fsync every file under ``root`` (except the relative paths in ``skip_files``), then
    every directory, deepest first, so each directory entry is durable."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        here = Path(dirpath)
        for name in filenames:
            full = here / name
            if full.relative_to(root).as_posix() not in skip_files and full.is_file():
                fsync_path(full)
        fsync_path(here)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically and durably: temp file beside it, fsync,
    ``os.replace``, fsync of the folder. On any exception the temp file is removed and the old
    ``path`` (if any) is left as it was. ``mode`` (e.g. ``0o600``) is set before the data is
    written, so the file is never readable more widely; the folder must exist."""
    path = Path(path)
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "xb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, mode: int | None = None) -> None:
    """``atomic_write_bytes`` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def temp_sibling(target: Path, label: str) -> Path:
    """A fresh temporary name next to ``target``: ``.tmp-<label>-<random>``."""
    return target.parent / f"{TEMP_PREFIX}{label}-{secrets.token_hex(4)}"


def remove_tree(path: Path) -> None:
    """Delete a directory so that no half-deleted copy stays under its name: rename it to a
    temporary name first (unless it already has one), then delete it."""
    if not path.exists() and not path.is_symlink():
        return
    doomed = path
    if not path.name.startswith(TEMP_PREFIX):
        doomed = temp_sibling(path, f"deleted-{path.name}")
        os.rename(path, doomed)
        fsync_path(path.parent)
    if doomed.is_dir() and not doomed.is_symlink():
        shutil.rmtree(doomed)
    else:
        doomed.unlink()


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _load_renameat2():  # type: ignore[no-untyped-def]
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False, having changed nothing, where the platform or file system cannot.
    """
    if _renameat2 is None:
        return False
    rc = _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def publish_dir(tmp_dir: Path, target: Path) -> None:
    """Make the fully written, fsynced directory ``tmp_dir`` appear as ``target`` atomically.

    If ``target`` already exists it is replaced: the two are exchanged in one step where the
    file system allows it, otherwise the old one is renamed away and the new one renamed in
    (a crash between the two renames leaves the old copy under a ``.tmp-`` name and no
    ``target``; never a mix of both). The old copy is then deleted. ``tmp_dir`` and
    ``target`` must be on the same file system.
    """
    parent = target.parent
    try:
        os.rename(tmp_dir, target)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not target.is_dir():
            raise
    else:
        fsync_path(parent)
        return
    if exchange(tmp_dir, target):
        fsync_path(parent)
        remove_tree(tmp_dir)  # now holds the old copy, under its .tmp- name
        return
    old = temp_sibling(target, f"replaced-{target.name}")
    os.rename(target, old)
    os.rename(tmp_dir, target)
    fsync_path(parent)
    remove_tree(old)


@contextmanager
def discard_on_error(tmp: Path) -> Iterator[Path]:
    """Yield ``tmp`` (a temporary file or folder); on any exception remove it, then re-raise."""
    try:
        yield tmp
    except BaseException:
        remove_tree(tmp)
        raise


@contextmanager
def staged_dir(final_path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[Path]:
    """Build a folder that appears as ``final_path`` only once complete.

    Yields a fresh temporary folder beside ``final_path`` (``.tmp-<name>-<random>``, creating
    the parent folders); when the block ends normally every file and folder in it is fsynced
    (unless ``fsync=False``: the block made them durable itself) and it replaces
    ``final_path`` with ``publish_dir``. On any exception the temporary folder is removed and
    ``final_path`` is left as it was.
    """
    target = Path(final_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target, target.name)
    tmp.mkdir()
    with discard_on_error(tmp):
        yield tmp
        if fsync:
            fsync_tree(tmp)
        publish_dir(tmp, target)


def _load_sync_file_range():  # type: ignore[no-untyped-def]
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing ``[offset, offset+nbytes)`` to disk now, without
    waiting, so the final fsync has little left to do. A no-op where unsupported; it is a
    hint, never a durability guarantee (the caller still fsyncs)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)
