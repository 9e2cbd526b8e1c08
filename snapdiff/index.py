"""TreeIndex: the columnar snapshot of a directory tree, like git's index.

A TreeIndex holds one numpy structured array of fixed-size records (the C core's
``struct sd_entry``, 112 bytes), one blob of paths and one blob of symlink targets and
xattrs.  Entries are in tree order: a directory before its children, siblings in byte
order.  Saved indexes are versioned, checksummed and loaded by memory-mapping.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import xxhash

from snapdiff import _core
from snapdiff.errors import IndexFormatError
from snapdiff.fsutil import atomic_write

__all__ = ["ENTRY_DTYPE", "Entry", "TreeIndex", "WalkProblem", "layer_snapshot", "snapshot"]

ENTRY_DTYPE = np.dtype([
    ("path_off", "<u8"), ("extra_off", "<u8"), ("size", "<u8"), ("mtime_ns", "<i8"),
    ("ctime_ns", "<i8"), ("ino", "<u8"), ("dev", "<u8"), ("rdev", "<u8"), ("hash", "V16"),
    ("path_len", "<u4"), ("link_len", "<u4"), ("xattr_len", "<u4"), ("mode", "<u4"),
    ("uid", "<u4"), ("gid", "<u4"), ("nlink", "<u4"), ("flags", "u1"), ("pad", "V3"),
])
assert ENTRY_DTYPE.itemsize == _core.ENTRY_SIZE, "sd_entry and ENTRY_DTYPE disagree"

HASHED = 0x01
HASH_FAILED = 0x02
OPAQUE = 0x04
REDIRECT = 0x08
METACOPY = 0x10
XWHITEOUT = 0x20

_TYPES = {
    stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char", stat.S_IFBLK: "block", stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}

# File format: a 64-byte header, then entries, paths and extra, each 8-byte aligned.
_MAGIC = b"SDINDEX\0"
_VERSION = 1
_HEADER = struct.Struct("<8sIIQQQQ16x")  # magic, version, entry size, n, paths, extra, xxh3
assert _HEADER.size == 64


def _align8(n: int) -> int:
    return (n + 7) & ~7


@dataclass(frozen=True, slots=True)
class WalkProblem:
    """An entry that could not be read during a walk; the walk went on without it."""

    path: bytes
    errno: int
    op: str

    def __str__(self) -> str:
        reason = "size changed while hashing" if self.op == "changed" else os.strerror(self.errno)
        return f"{self.op} '{os.fsdecode(self.path)}': {reason}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a TreeIndex, materialised for Python callers."""

    path: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int
    nlink: int
    rdev: int
    link_target: bytes | None
    xattrs: dict
    hash: bytes | None

    @property
    def type(self) -> str:
        return _TYPES.get(stat.S_IFMT(self.mode), "unknown")

    @property
    def display_path(self) -> str:
        return "/" + os.fsdecode(self.path)


def parse_xattrs(blob: bytes | memoryview) -> dict[bytes, bytes]:
    """Decode the xattr records of one entry (u32 name_len, u32 value_len, name, value)."""
    out = {}
    mv = memoryview(blob)
    pos = 0
    while pos < len(mv):
        nlen, vlen = struct.unpack_from("<II", mv, pos)
        pos += 8
        name = bytes(mv[pos:pos + nlen])
        pos += nlen
        out[name] = bytes(mv[pos:pos + vlen])
        pos += vlen
    return out


class TreeIndex:
    """A snapshot of a tree: entries in tree order, addressable by path in O(log n)."""

    __slots__ = ("entries", "paths", "extra", "problems", "root", "_mmap", "__weakref__")

    def __init__(self, entries: np.ndarray, paths, extra, *, problems=(), root=None, _mmap=None):
        if entries.dtype != ENTRY_DTYPE:
            raise TypeError("entries must have ENTRY_DTYPE")
        self.entries = entries
        self.paths = memoryview(paths).cast("B") if not isinstance(paths, np.ndarray) else paths
        self.extra = memoryview(extra).cast("B") if not isinstance(extra, np.ndarray) else extra
        self.problems: list[WalkProblem] = list(problems)
        self.root = root
        self._mmap = _mmap

    # --- raw views used by the core --------------------------------------------------
    @property
    def _raw(self) -> np.ndarray:
        return self.entries.view(np.uint8).reshape(-1) if len(self.entries) else np.empty(0, np.uint8)

    @property
    def _paths_u8(self) -> np.ndarray:
        return np.frombuffer(self.paths, dtype=np.uint8)

    @property
    def _extra_u8(self) -> np.ndarray:
        return np.frombuffer(self.extra, dtype=np.uint8)

    # --- container protocol -----------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def path(self, i: int) -> bytes:
        e = self.entries[i]
        off = int(e["path_off"])
        return bytes(self.paths[off:off + int(e["path_len"])])

    def find(self, path: bytes | str) -> int:
        """Position of `path` (relative, no leading '/'), or -1."""
        key = os.fsencode(path).strip(b"/")
        if not key:
            return -1
        return _core.index_find(self._raw, self._paths_u8, key)

    def __contains__(self, path) -> bool:
        return self.find(path) >= 0

    def __getitem__(self, key: int | bytes | str) -> Entry:
        if isinstance(key, (bytes, str)):
            i = self.find(key)
            if i < 0:
                raise KeyError(key)
        else:
            i = int(key)
            if i < 0:
                i += len(self)
            if not 0 <= i < len(self):
                raise IndexError(key)
        return self.entry(i)

    def get(self, path, default=None):
        i = self.find(path)
        return default if i < 0 else self.entry(i)

    def entry(self, i: int) -> Entry:
        e = self.entries[i]
        off = int(e["path_off"])
        path = bytes(self.paths[off:off + int(e["path_len"])])
        xo, ll, xl = int(e["extra_off"]), int(e["link_len"]), int(e["xattr_len"])
        mode = int(e["mode"])
        link = bytes(self.extra[xo:xo + ll]) if stat.S_ISLNK(mode) else None
        xattrs = parse_xattrs(self.extra[xo + ll:xo + ll + xl]) if xl else {}
        h = bytes(e["hash"]) if int(e["flags"]) & HASHED else None
        return Entry(path, mode, int(e["uid"]), int(e["gid"]), int(e["size"]),
                     int(e["mtime_ns"]), int(e["ctime_ns"]), int(e["ino"]), int(e["dev"]),
                     int(e["nlink"]), int(e["rdev"]), link, xattrs, h)

    def __iter__(self) -> Iterator[Entry]:
        for i in range(len(self)):
            yield self.entry(i)

    def iter_paths(self) -> Iterator[bytes]:
        offs = self.entries["path_off"]
        lens = self.entries["path_len"]
        blob = bytes(self.paths)
        for o, n in zip(offs.tolist(), lens.tolist(), strict=True):
            yield blob[o:o + n]

    # --- columns ----------------------------------------------------------------------
    @property
    def types(self) -> np.ndarray:
        """st_mode & S_IFMT of every entry."""
        return self.entries["mode"] & stat.S_IFMT(0xFFFFFFFF)

    def regular_mask(self) -> np.ndarray:
        return self.types == stat.S_IFREG

    @property
    def hashed(self) -> np.ndarray:
        return (self.entries["flags"] & HASHED) != 0

    # --- hashing ----------------------------------------------------------------------
    def hash(self, which: np.ndarray | None = None, *, threads: int | None = None) -> None:
        """Hash regular files (all, or the positions in `which`) from the live tree at root."""
        if self.root is None:
            raise ValueError("hash: this index was not made from a live tree")
        if not self.entries.flags.writeable:
            self.entries = self.entries.copy()
        if which is None:
            which = np.flatnonzero(self.regular_mask())
        idx = np.ascontiguousarray(which, dtype=np.int64)
        if len(idx) == 0:
            return
        problems = _core.hash_entries(self.root, self._raw, self._paths_u8, idx,
                                      threads or os.cpu_count() or 1)
        self.problems.extend(WalkProblem(p, e, op) for p, e, op in problems)

    # --- persistence ------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the index to `path` atomically (temporary file, fsync, rename)."""
        ents = np.ascontiguousarray(self.entries).tobytes()
        paths = bytes(self.paths)
        extra = bytes(self.extra)
        body = [ents, b"\0" * (_align8(len(ents)) - len(ents)),
                paths, b"\0" * (_align8(len(paths)) - len(paths)), extra]
        h = xxhash.xxh3_64()
        for part in body:
            h.update(part)
        header = _HEADER.pack(_MAGIC, _VERSION, ENTRY_DTYPE.itemsize, len(self.entries),
                              len(paths), len(extra), h.intdigest())
        atomic_write(path, [header, *body])

    @classmethod
    def load(cls, path: str | os.PathLike) -> TreeIndex:
        """Memory-map a saved index; a corrupt, truncated or foreign file raises
        IndexFormatError."""
        spath = os.fsdecode(os.fspath(path))
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _HEADER.size:
                raise IndexFormatError(f"load index '{spath}': truncated (size {size})")
            mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        magic, version, esize, n, plen, xlen, checksum = _HEADER.unpack_from(mm, 0)
        if magic != _MAGIC:
            raise IndexFormatError(f"load index '{spath}': not a snapdiff index")
        if version != _VERSION or esize != ENTRY_DTYPE.itemsize:
            raise IndexFormatError(f"load index '{spath}': unsupported version {version}")
        elen = n * esize
        poff = _HEADER.size + _align8(elen)
        xoff = poff + _align8(plen)
        if xoff + xlen != size:
            raise IndexFormatError(f"load index '{spath}': truncated or padded "
                                   f"(size {size}, expected {xoff + xlen})")
        body = memoryview(mm)[_HEADER.size:]
        if xxhash.xxh3_64_intdigest(body) != checksum:
            body.release()
            raise IndexFormatError(f"load index '{spath}': checksum mismatch (corrupt file)")
        body.release()
        entries = np.frombuffer(mm, dtype=ENTRY_DTYPE, count=n, offset=_HEADER.size)
        paths = np.frombuffer(mm, dtype=np.uint8, count=plen, offset=poff)
        extra = np.frombuffer(mm, dtype=np.uint8, count=xlen, offset=xoff)
        ix = cls(entries, paths, extra, _mmap=mm)
        try:
            _core.index_validate(ix._raw, ix._paths_u8, xlen)
        except IndexFormatError as e:
            raise IndexFormatError(f"load index '{spath}': {e}") from None
        return ix

    def __repr__(self) -> str:
        return f"<TreeIndex {len(self)} entries root={self.root!r}>"


def _as_positions(ix: TreeIndex, paths: Iterable) -> np.ndarray:
    pos = [ix.find(p) for p in paths]
    return np.array([p for p in pos if p >= 0], dtype=np.int64)


def snapshot(path: str | os.PathLike, *, hash: bool | Iterable = True, threads: int | None = None,
             one_file_system: bool = True, xattrs: bool = True,
             overlay_prefix: bytes | None = None) -> TreeIndex:
    """Walk the tree at `path` and return its TreeIndex.

    hash: True hashes every regular file (XXH3-128, on `threads` threads, default one per
    CPU); False hashes none; an iterable of relative paths hashes only those.
    one_file_system: do not descend into other mounts (their mount points are recorded).
    overlay_prefix: for an overlay upper or lower directory, the namespace of overlay's
    own xattrs (b"trusted.overlay." or b"user.overlay."): they become entry flags
    (OPAQUE, REDIRECT, METACOPY, XWHITEOUT) and are not recorded as xattrs.
    Entries that vanish during the walk are left out; unreadable ones are listed in
    ``index.problems`` and the walk goes on."""
    root = os.fspath(path)
    ents, paths, extra, problems = _core.walk(root, one_file_system=one_file_system,
                                              xattrs=xattrs, overlay_prefix=overlay_prefix)
    entries = np.frombuffer(ents, dtype=ENTRY_DTYPE)
    ix = TreeIndex(entries, paths, extra,
                   problems=[WalkProblem(p, e, op) for p, e, op in problems], root=root)
    if hash is True:
        ix.hash(threads=threads)
    elif hash is not False:
        ix.hash(_as_positions(ix, hash), threads=threads)
    return ix


def layer_snapshot(path: str | os.PathLike, **kw) -> TreeIndex:
    """Snapshot of a layer unpacked for overlay use (whiteouts as 0:0 devices, opaque
    directories as trusted.overlay.opaque): every file hashed, markers as flags."""
    from snapdiff.constants import OVERLAY_XATTR_PREFIXES

    return snapshot(path, overlay_prefix=OVERLAY_XATTR_PREFIXES[0], **kw)
