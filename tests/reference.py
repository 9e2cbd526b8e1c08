"""A slow, obviously-correct reference walk and diff in pure Python.

The tests compare the compiled core with this field by field.  It walks relative to
directory fds too (os.scandir(fd), os.lstat(dir_fd=...)), so it reaches paths longer
than PATH_MAX, and reads xattrs through /proc/self/fd/DIRFD/NAME like the core.
"""

from __future__ import annotations

import os
import stat

import xxhash

FIELDS = ("mode", "uid", "gid", "size", "mtime_ns", "ctime_ns", "ino", "dev", "nlink", "rdev",
          "link_target", "xattrs", "hash")


def tree_key(path: bytes) -> tuple[bytes, ...]:
    return tuple(path.split(b"/"))


def _xattrs(dirfd: int, name: bytes) -> dict[bytes, bytes]:
    p = b"/proc/self/fd/%d/%s" % (dirfd, name)
    try:
        names = os.listxattr(p, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for n in names:
        try:
            out[os.fsencode(n)] = os.getxattr(p, n, follow_symlinks=False)
        except OSError:
            pass
    return out


def _hash(dirfd: int, name: bytes) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dirfd)
    try:
        h = xxhash.xxh3_128()
        while True:
            b = os.read(fd, 1 << 22)
            if not b:
                break
            h.update(b)
        return h.digest()
    finally:
        os.close(fd)


def walk(root: str | bytes, *, hash: bool = True, one_file_system: bool = True,
         skip_hash=frozenset()) -> dict[bytes, dict]:
    """Every entry under root (not root itself) as {path: {field: value}}."""
    out: dict[bytes, dict] = {}
    rootfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    root_dev = os.fstat(rootfd).st_dev

    def rec(dfd: int, prefix: bytes) -> None:
        names = sorted(os.fsencode(e.name) for e in os.scandir(dfd))
        for name in names:
            path = prefix + b"/" + name if prefix else name
            st = os.lstat(name, dir_fd=dfd)
            link = os.readlink(name, dir_fd=dfd) if stat.S_ISLNK(st.st_mode) else None
            rec_ = {
                "mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "size": st.st_size,
                "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino,
                "dev": st.st_dev, "nlink": st.st_nlink, "rdev": st.st_rdev,
                "link_target": os.fsencode(link) if link is not None else None,
                "xattrs": _xattrs(dfd, name),
                "hash": (_hash(dfd, name) if hash and stat.S_ISREG(st.st_mode)
                         and path not in skip_hash else None),
            }
            out[path] = rec_
            if stat.S_ISDIR(st.st_mode) and (not one_file_system or st.st_dev == root_dev):
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
                try:
                    rec(fd, path)
                finally:
                    os.close(fd)

    try:
        rec(rootfd, b"")
    finally:
        os.close(rootfd)
    return out


def index_records(ix) -> dict[bytes, dict]:
    """The same shape from a TreeIndex."""
    out = {}
    for e in ix:
        out[e.path] = {
            "mode": e.mode, "uid": e.uid, "gid": e.gid, "size": e.size, "mtime_ns": e.mtime_ns,
            "ctime_ns": e.ctime_ns, "ino": e.ino, "dev": e.dev, "nlink": e.nlink, "rdev": e.rdev,
            "link_target": e.link_target, "xattrs": e.xattrs, "hash": e.hash,
        }
    return out


def diff(a: dict[bytes, dict], b: dict[bytes, dict]) -> list[tuple[str, bytes]]:
    """Reference diff of two reference walks (with hashes): [(kind, path)] in tree order."""
    out = []
    for p in sorted(set(a) | set(b), key=tree_key):
        x, y = a.get(p), b.get(p)
        if x is None:
            out.append(("added", p))
        elif y is None:
            out.append(("deleted", p))
        elif stat.S_IFMT(x["mode"]) != stat.S_IFMT(y["mode"]):
            out.append(("type", p))
        else:
            content = (x["size"] != y["size"] if stat.S_ISREG(x["mode"]) else False) or \
                x["hash"] != y["hash"] or x["link_target"] != y["link_target"] or \
                (x["rdev"] != y["rdev"] and not stat.S_ISDIR(x["mode"]))
            meta = x["mode"] != y["mode"] or x["uid"] != y["uid"] or x["gid"] != y["gid"] or \
                x["mtime_ns"] != y["mtime_ns"] or x["xattrs"] != y["xattrs"]
            if content:
                out.append(("modified", p))
            elif meta:
                out.append(("metadata", p))
    return out
