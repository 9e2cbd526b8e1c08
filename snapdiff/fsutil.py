"""Durable, atomic file writes: the one way snapdiff replaces a file.

A file is written under a temporary name in the same directory, fsync'ed, renamed over
the destination, and the directory fsync'ed, so a reader sees the old file or the new
one, never a part of either, and a crash keeps one of them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

__all__ = ["atomic_write", "flocked", "fsync_dir"]


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the directory's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike,
                 data: bytes | Iterable[bytes] | Callable[[BinaryIO], None], *,
                 mode: int = 0o644, sync_dir: bool = True) -> None:
    """Replace `path` with `data` (bytes, an iterable of byte strings, or a function that
    writes to the open file) atomically and durably; the file gets `mode`."""
    path = os.fspath(path)
    d = os.path.dirname(path) or "."
    tmp = os.path.join(d, f".tmp-{os.getpid()}-{os.urandom(6).hex()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        with open(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # whatever the umask
            if callable(data):
                data(f)
            elif isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                for part in data:
                    f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(d)


@contextlib.contextmanager
def flocked(path: str | os.PathLike, *, mode: int = 0o600) -> Iterator[int]:
    """Hold an exclusive flock on `path` (created if missing) for the block; yields the fd."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock
