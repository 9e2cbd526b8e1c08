"""Seeded trees and change scenarios shared by the commit benchmarks.

The base image is a busybox root filesystem (tests/conftest.py's make_busybox_rootfs) plus
``nfiles`` generated regular files of seeded random sizes 0-16 KiB under ``data/``, 100 per
leaf directory, 100 leaf directories per top directory:

    data/t000/l00000/f000 ... data/t001/l00100/f099 ...

Every name is a pure function of (nfiles, index), so a scenario can pick base files without
walking the base.  Scenarios write into a directory that is an overlay merged mount (a
snapdiff container's or a buildah working container's): what they leave in the upper
directory is what a commit must turn into a layer.
"""

from __future__ import annotations

import os
import random
import shutil
import sys

import numpy as np

PER_DIR = 100
DIRS_PER_TOP = 100
MAX_SIZE = 16 << 10


def base_file(i: int) -> str:
    """Relative path of generated base file number i."""
    leaf = i // PER_DIR
    return f"data/t{leaf // DIRS_PER_TOP:03d}/l{leaf:05d}/f{i % PER_DIR:03d}"


def leaf_dir(leaf: int) -> str:
    return f"data/t{leaf // DIRS_PER_TOP:03d}/l{leaf:05d}"


def build_base_rootfs(root: str, nfiles: int, seed: int = 1) -> int:
    """A busybox rootfs plus nfiles seeded files of 0-16 KiB; returns the number of
    entries written under data/ (files only)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    try:
        from conftest import make_busybox_rootfs
    finally:
        sys.path.pop(0)
    make_busybox_rootfs(root)
    rnd = random.Random(seed)
    pool = rnd.randbytes(8 << 20)  # contents are slices of one seeded pool: fast and fixed
    for i in range(nfiles):
        if i % PER_DIR == 0:
            os.makedirs(os.path.join(root, leaf_dir(i // PER_DIR)), exist_ok=True)
        size = rnd.randrange(0, MAX_SIZE + 1)
        off = rnd.randrange(0, len(pool) - size)
        with open(os.path.join(root, base_file(i)), "wb") as f:
            f.write(pool[off:off + size])
    return nfiles


# --- scenarios: each writes into a merged overlay mount ------------------------------

def s1_small(merged: str, nfiles: int, seed: int = 11) -> dict:
    """100 new 4 KiB files (in 10 existing directories), 10 modified, 10 deleted, one
    directory of 100 files removed."""
    rng = np.random.default_rng(seed)
    leaves = nfiles // PER_DIR
    for k in range(100):
        d = leaf_dir((k % 10) * (leaves // 10))
        with open(os.path.join(merged, d, f"new{k:03d}"), "wb") as f:
            f.write(rng.bytes(4096))
    step = nfiles // 40
    for k in range(10):  # modified: new content of another size
        with open(os.path.join(merged, base_file(step * k + 1)), "wb") as f:
            f.write(rng.bytes(1000 + 37 * k))
    for k in range(10):
        os.unlink(os.path.join(merged, base_file(step * (k + 10) + 2)))
    shutil.rmtree(os.path.join(merged, leaf_dir(leaves - 1)))
    return {"added": 100, "modified": 10, "deleted": 10, "removed_dirs": 1}


def s2_big(merged: str, nfiles: int, seed: int = 12, total: int = 1 << 30,
           count: int = 2000) -> dict:
    """`total` bytes of random data in `count` new files (20 directories)."""
    rng = np.random.default_rng(seed)
    size = total // count
    for k in range(count):
        d = os.path.join(merged, "big", f"b{k % 20:02d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"blob{k:05d}"), "wb") as f:
            f.write(rng.bytes(size))
    return {"added": count, "bytes": size * count}


def s3_many(merged: str, nfiles: int, seed: int = 13, count: int = 50000) -> dict:
    """`count` new 1 KiB files, 500 per directory."""
    rng = np.random.default_rng(seed)
    pool = rng.bytes(4 << 20)
    for k in range(count):
        if k % 500 == 0:
            d = os.path.join(merged, "many", f"m{k // 500:03d}")
            os.makedirs(d)
        off = (k * 1031) % (len(pool) - 1024)
        with open(os.path.join(d, f"s{k:05d}"), "wb") as f:
            f.write(pool[off:off + 1024])
    return {"added": count, "bytes": count * 1024}


def s4_noop(merged: str, nfiles: int, count: int = 5000) -> dict:
    """`count` base files copied up and left equal to the base: a third chowned away and
    back, a third chmodded away and back, a third rewritten identically with the mtime
    restored (os.utime with the original nanoseconds)."""
    count = min(count, nfiles)
    stride = nfiles // count
    for k in range(count):
        p = os.path.join(merged, base_file(k * stride))
        st = os.lstat(p)
        if k % 3 == 0:
            os.chown(p, st.st_uid + 1000, st.st_gid + 1000)
            os.chown(p, st.st_uid, st.st_gid)
        elif k % 3 == 1:
            os.chmod(p, (st.st_mode & 0o7777) ^ 0o077)
            os.chmod(p, st.st_mode & 0o7777)
        else:
            with open(p, "rb") as f:
                data = f.read()
            with open(p, "wb") as f:
                f.write(data)
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    return {"copied_up": count}


SCENARIOS = {"S1": s1_small, "S2": s2_big, "S3": s3_many, "S4": s4_noop}
