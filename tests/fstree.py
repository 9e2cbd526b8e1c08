"""Declarative filesystem trees for tests.

    build(root, [
        File("etc/passwd", b"root:x:0:0\n", mode=0o644),
        Dir("var/empty", mode=0o711),
        Symlink("bin/sh", "busybox"),
        Hardlink("bin/ls", "bin/busybox"),
        Fifo("run/fifo"), CharDev("dev/null", 1, 3), Whiteout("usr/old"),
        File("usr/bin/ping", b"...", xattrs={"security.capability": CAP_NET_RAW_V2}),
    ])

Parents are created as needed (mode 0755).  ``mtime`` is in nanoseconds and is applied
after all entries, deepest first, so a directory keeps the time it was given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

Xattrs = dict


@dataclass
class _Node:
    path: str | bytes
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime: int | None = None
    xattrs: Xattrs = field(default_factory=dict)

    @property
    def bpath(self) -> bytes:
        return os.fsencode(self.path)


@dataclass
class File(_Node):
    content: bytes = b""
    sparse_size: int | None = None  # make a sparse file of this size; content is written at 0

    def __init__(self, path, content=b"", *, sparse_size=None, **kw):
        super().__init__(path, **kw)
        self.content = content
        self.sparse_size = sparse_size


@dataclass
class Dir(_Node):
    pass


@dataclass
class Symlink(_Node):
    target: str | bytes = ""

    def __init__(self, path, target, **kw):
        super().__init__(path, **kw)
        self.target = target


@dataclass
class Hardlink(_Node):
    target: str | bytes = ""  # path of an earlier File, relative to the root

    def __init__(self, path, target, **kw):
        super().__init__(path, **kw)
        self.target = target


@dataclass
class Fifo(_Node):
    pass


@dataclass
class CharDev(_Node):
    major: int = 0
    minor: int = 0

    def __init__(self, path, major=0, minor=0, **kw):
        super().__init__(path, **kw)
        self.major, self.minor = major, minor


class BlockDev(CharDev):  # not a dataclass: it keeps CharDev's (path, major, minor)
    pass


class Whiteout(CharDev):
    """An overlay whiteout: a character device 0:0."""

    def __init__(self, path, **kw):
        super().__init__(path, 0, 0, **kw)


# security.capability, VFS_CAP_REVISION_2, CAP_NET_RAW (13) permitted+effective
CAP_NET_RAW_V2 = bytes.fromhex("01000002" "00200000" "00000000" "00000000" "00000000")


def _mkparents(root: bytes, rel: bytes) -> None:
    parent = os.path.dirname(rel)
    if parent:
        os.makedirs(os.path.join(root, parent), exist_ok=True)


def build(root: str | bytes, nodes: list[_Node]) -> None:
    root_b = os.fsencode(root)
    os.makedirs(root_b, exist_ok=True)
    for n in nodes:
        rel = n.bpath
        full = os.path.join(root_b, rel)
        _mkparents(root_b, rel)
        if isinstance(n, File):
            with open(full, "wb") as f:
                f.write(n.content)
                if n.sparse_size is not None:
                    f.truncate(n.sparse_size)
            os.chmod(full, 0o644 if n.mode is None else n.mode)
        elif isinstance(n, Dir):
            os.makedirs(full, exist_ok=True)
            os.chmod(full, 0o755 if n.mode is None else n.mode)
        elif isinstance(n, Symlink):
            os.symlink(os.fsencode(n.target), full)
        elif isinstance(n, Hardlink):
            os.link(os.path.join(root_b, os.fsencode(n.target)), full)
        elif isinstance(n, Fifo):
            os.mkfifo(full, 0o644 if n.mode is None else n.mode)
        elif isinstance(n, CharDev):
            kind = 0o060000 if isinstance(n, BlockDev) else 0o020000
            os.mknod(full, kind | (0o600 if n.mode is None else n.mode & 0o7777),
                     os.makedev(n.major, n.minor))
        else:
            raise TypeError(n)
        if n.uid is not None or n.gid is not None:
            os.lchown(full, -1 if n.uid is None else n.uid, -1 if n.gid is None else n.gid)
        if n.mode is not None and not isinstance(n, (Symlink, Hardlink)):
            os.chmod(full, n.mode)  # after chown, which clears setuid/setgid
        for k, v in n.xattrs.items():
            os.setxattr(full, k, v, follow_symlinks=False)
    for n in sorted(nodes, key=lambda n: -n.bpath.count(b"/")):
        if n.mtime is not None:
            os.utime(os.path.join(root_b, n.bpath), ns=(n.mtime, n.mtime), follow_symlinks=False)
