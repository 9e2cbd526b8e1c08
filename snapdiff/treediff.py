"""Tree diff: the changes between two snapshots, or a snapshot and a live tree.

The merge of the two sorted indexes runs in C (sd_index_diff); Python only selects which
files to hash, with numpy, and materialises Change objects on demand.  A regular file
whose stat data (size, mtime, ctime, inode, device) is unchanged is trusted; one whose
stat data changed at the same size is hashed, so identical content rewritten is not a
content change (a new mtime alone makes it a metadata change).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from snapdiff import _core
from snapdiff.index import Entry, TreeIndex, snapshot

__all__ = ["Change", "Diff", "diff", "KINDS", "FIELDS"]

CHANGE_DTYPE = np.dtype([("ia", "<i8"), ("ib", "<i8"), ("kind", "<u4"), ("fields", "<u4")])
assert CHANGE_DTYPE.itemsize == _core.CHANGE_SIZE

KINDS = {1: "added", 2: "deleted", 3: "modified", 4: "metadata", 5: "type"}
_LETTER = {"added": "A", "deleted": "D", "modified": "C", "metadata": "C", "type": "C"}
FIELDS = {
    0x001: "content", 0x002: "size", 0x004: "link", 0x008: "rdev", 0x010: "mode",
    0x020: "uid", 0x040: "gid", 0x080: "mtime", 0x100: "xattrs", 0x200: "unhashed",
}


@dataclass(frozen=True, slots=True)
class Change:
    """One changed path. `old`/`new` are the entries on each side (None when absent)."""

    kind: str           # added, deleted, modified, metadata, type
    path: bytes
    old: Entry | None
    new: Entry | None
    fields: frozenset   # for modified/metadata: which of FIELDS differ

    @property
    def letter(self) -> str:
        """The docker diff letter: A, D or C."""
        return _LETTER[self.kind]

    def __str__(self) -> str:
        return f"{self.letter} /{os.fsdecode(self.path)}"


def _fields(bits: int) -> frozenset:
    return frozenset(name for bit, name in FIELDS.items() if bits & bit)


class Diff:
    """The changes from `a` to `b`, in tree order. Columnar (`kinds`, `ia`, `ib`, `bits`),
    iterable as Change objects."""

    def __init__(self, a: TreeIndex, b: TreeIndex, changes: np.ndarray):
        self.a, self.b = a, b
        self.changes = changes

    @property
    def kinds(self) -> np.ndarray:
        return self.changes["kind"]

    @property
    def ia(self) -> np.ndarray:
        return self.changes["ia"]

    @property
    def ib(self) -> np.ndarray:
        return self.changes["ib"]

    def __len__(self) -> int:
        return len(self.changes)

    def __bool__(self) -> bool:
        return len(self.changes) > 0

    def change(self, k: int) -> Change:
        ia, ib, kind, bits = (int(x) for x in self.changes[k].tolist())
        old = self.a.entry(ia) if ia >= 0 else None
        new = self.b.entry(ib) if ib >= 0 else None
        path = (new or old).path
        return Change(KINDS[kind], path, old, new, _fields(bits))

    def __iter__(self) -> Iterator[Change]:
        for k in range(len(self)):
            yield self.change(k)

    def summary(self) -> dict[str, int]:
        counts = np.bincount(self.kinds, minlength=6)
        return {name: int(counts[k]) for k, name in KINDS.items()}

    def lines(self) -> list[str]:
        """`docker diff` style lines: 'A /path', 'C /path', 'D /path'."""
        return [str(c) for c in self]

    def to_json(self) -> str:
        out = []
        for c in self:
            item = {"kind": c.kind, "letter": c.letter, "path": "/" + os.fsdecode(c.path)}
            if c.fields:
                item["fields"] = sorted(c.fields)
            for side, e in (("old", c.old), ("new", c.new)):
                if e is not None:
                    item[side] = {"type": e.type, "mode": oct(e.mode & 0o7777), "uid": e.uid,
                                  "gid": e.gid, "size": e.size, "mtime_ns": e.mtime_ns}
            out.append(item)
        return json.dumps(out, indent=1)


def _side(x, *, threads, one_file_system) -> tuple[TreeIndex, bool]:
    if isinstance(x, TreeIndex):
        return x, False  # a snapshot stands for the tree as it was: never re-read it
    p = os.fspath(x)
    if os.path.isdir(p):
        return snapshot(p, hash=False, threads=threads, one_file_system=one_file_system), True
    return TreeIndex.load(p), False


def diff(a, b, *, hash_all: bool = False, ignore_mtime: bool = False,
         threads: int | None = None, one_file_system: bool = True) -> Diff:
    """Compare two trees. Each side is a TreeIndex, a directory, or a saved index file.

    Live directories are walked without hashing; then only regular files present on both
    sides with equal size but different stat data are hashed (all of them with
    ``hash_all=True``), on `threads` threads."""
    A, a_live = _side(a, threads=threads, one_file_system=one_file_system)
    B, b_live = _side(b, threads=threads, one_file_system=one_file_system)
    if hash_all:
        if a_live:
            A.hash(threads=threads)
        if b_live:
            B.hash(threads=threads)
    elif a_live or b_live:
        b_to_a = np.empty(len(B), dtype=np.int64)
        _core.index_join(A._raw, A._paths_u8, B._raw, B._paths_u8, b_to_a)
        cand_b = np.frombuffer(_core.index_stat_changed(A._raw, B._raw, b_to_a), dtype=np.int64)
        if len(cand_b):
            if b_live:
                B.hash(cand_b[~B.hashed[cand_b]], threads=threads)
            if a_live:
                cand_a = b_to_a[cand_b]
                A.hash(cand_a[~A.hashed[cand_a]], threads=threads)
    raw = _core.index_diff(A._raw, A._paths_u8, A._extra_u8, B._raw, B._paths_u8, B._extra_u8,
                           ignore_mtime=ignore_mtime)
    return Diff(A, B, np.frombuffer(raw, dtype=CHANGE_DTYPE))
