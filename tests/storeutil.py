"""Helpers for the store and interop tests: a field-by-field tree description, a hash of a
whole store directory, and images made without the extractor (commit_image with an
unpacked directory the test already has)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess

from fstree import CAP_NET_RAW_V2, CharDev, Dir, Fifo, File, Hardlink, Symlink, build

T0 = 1_600_000_000_123_456_789

# every kind of entry a base layer carries, with owners, modes, xattrs and ns mtimes
SAMPLE = [
    Dir("etc", mode=0o755, mtime=T0),
    File("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", mode=0o644, mtime=T0 + 1),
    File("etc/shadow", b"root:*:1::::::\n", mode=0o600, uid=0, gid=42, mtime=T0 + 2),
    Dir("usr/bin", mode=0o755, mtime=T0 + 3),
    File("usr/bin/ping", b"\x7fELF" + bytes(range(256)) * 40, mode=0o4755, mtime=T0 + 4,
         xattrs={"security.capability": CAP_NET_RAW_V2}),
    Hardlink("usr/bin/ping6", "usr/bin/ping"),
    Symlink("usr/bin/sh", "../../bin/busybox"),
    File("home/user/notes.txt", b"hello\n" * 1000, mode=0o640, uid=1000, gid=1000,
         mtime=T0 + 5, xattrs={"user.comment": b"a note"}),
    Dir("home/user", mode=0o700, uid=1000, gid=1000, mtime=T0 + 6),
    Dir("tmp", mode=0o1777, mtime=T0 + 7),
    File("var/empty-file", b"", mode=0o444, mtime=T0 + 8),
    Fifo("run/fifo", mode=0o600, mtime=T0 + 9),
    CharDev("dev/null", 1, 3, mode=0o666, mtime=T0 + 10),
    File("name with spaces and ü", b"x", mtime=T0 + 11),
]


def describe(root: str, *, mtimes: bool = True, dir_mtimes: bool = True,
             seconds: bool = False, skip_xattrs: tuple[str, ...] = ("trusted.overlay.",)) -> dict:
    """path -> (type, mode, uid, gid, size, sha256, link target, xattrs, mtime, links)."""
    out = {}
    root_b = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(root_b):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root_b)
            st = os.lstat(p)
            digest = None
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    while chunk := f.read(8 << 20):  # files may be larger than memory
                        h.update(chunk)
                digest = h.hexdigest()
            target = os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
            xattrs = {}
            if not stat.S_ISLNK(st.st_mode):
                for k in os.listxattr(p, follow_symlinks=False):
                    if not k.startswith(skip_xattrs):
                        xattrs[k] = os.getxattr(p, k, follow_symlinks=False)
            mt = st.st_mtime_ns if mtimes and (dir_mtimes or not stat.S_ISDIR(st.st_mode)) \
                else None
            if mt is not None and seconds:
                mt //= 1_000_000_000
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                        st.st_gid, st.st_size if not stat.S_ISDIR(st.st_mode) else None,
                        digest, target, tuple(sorted(xattrs.items())),
                        mt if not stat.S_ISLNK(st.st_mode) else None,
                        st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                        else None)
    return out


def hardlink_groups(root: str) -> set[frozenset]:
    by_ino: dict[int, set] = {}
    for dirpath, _, filenames in os.walk(root):
        for n in filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                by_ino.setdefault(st.st_ino, set()).add(os.path.relpath(p, root))
    return {frozenset(v) for v in by_ino.values()}


def tree_hash(root: str) -> str:
    """A hash of a whole directory tree: every path, type, mode, size and content, xattrs
    and symlink targets (directory mtimes left out: creating and removing a temporary
    entry touches them without changing what the store holds)."""
    h = hashlib.sha256()
    for rel, fields in sorted(describe(root, dir_mtimes=False).items()):
        h.update(rel + b"\0" + repr(fields).encode() + b"\n")
    return h.hexdigest()


def make_tree(root: str, nodes=None) -> str:
    build(root, SAMPLE if nodes is None else nodes)
    return root


def commit_tree(store, src: str, *, name: str | None = None, base=None,
                compression: str = "gzip", created_by: str = "test"):
    """An image of `src` (one layer on `base`), made without the extractor: the test
    hands commit_image a copy of the tree as the unpacked layer."""
    from snapdiff.layers import tree_items, write_layer

    tmp = store.tempdir()
    blob = os.path.join(tmp, "blob")
    info = write_layer(src, tree_items(src), blob, compression=compression)
    unpacked = os.path.join(tmp, "unpacked")
    subprocess.run(["cp", "-a", "--preserve=all", src, unpacked], check=True)
    try:
        return store.commit_image(base, [(info, blob, unpacked)], name=name,
                                  history_entry={"created_by": created_by},
                                  config_changes={"Cmd": ["/bin/sh"]})
    finally:
        subprocess.run(["rm", "-rf", tmp], check=True)
