"""Durable, atomic filesystem steps: fsync, rename-exchange, locks, pointer swap.

Why a module: the crash guarantees of publish rest on a handful of POSIX
facts (rename is atomic within one filesystem, a directory's entries are
durable only after fsync of the directory, flock is released when its
holder dies). Keeping them here keeps publish.py readable.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

from .errors import StoreError

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree_dirs(top: Path) -> None:
    """fsync every directory under ``top`` (deepest first) and ``top`` itself."""
    dirs = [Path(d) for d, _, _ in os.walk(top)]
    for d in reversed(dirs):
        fsync_dir(d)


def _renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2). False if unsupported."""
    if _RENAMEAT2 is None:
        return False
    rc = _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), f"{a} <-> {b}")


@contextmanager
def locked(lock_path: Path):
    """Exclusive flock on ``lock_path``; released on exit or when the holder dies."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def replace_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` atomically: a temp symlink renamed over it."""
    tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex}")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)


def remove_tree(path: Path, trash_dir: Path) -> None:
    """Rename ``path`` into ``trash_dir`` (atomic disappearance), then delete it."""
    trash_dir.mkdir(parents=True, exist_ok=True)
    doomed = trash_dir / f"{path.name}.{uuid.uuid4().hex}"
    try:
        os.rename(path, doomed)
    except OSError as e:
        raise StoreError(f"cannot remove {path}: {e}") from None
    fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)
