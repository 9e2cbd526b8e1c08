"""The walker and hasher against the pure-Python reference, field by field."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest
import reference
from fstree import (
    CAP_NET_RAW_V2,
    BlockDev,
    CharDev,
    Dir,
    Fifo,
    File,
    Hardlink,
    Symlink,
    build,
)

import snapdiff
from snapdiff import _core
from snapdiff.index import ENTRY_DTYPE, HASHED, snapshot

GiB = 1 << 30


def _every_kind(root: str) -> None:
    """A tree with every file type and the awkward cases the walker must record."""
    build(root, [
        File("empty", b""),
        File("small", b"hello\n", mode=0o640, mtime=1_600_000_000_123_456_789),
        File("setuid", b"#!/bin/sh\n", mode=0o4755),
        File("setgid", b"x", mode=0o2711),
        Dir("sticky", mode=0o1777),
        File("owned", b"o", uid=1234, gid=5678),
        File("caps", b"\x7fELF", xattrs={"security.capability": CAP_NET_RAW_V2}),
        File("user-xattr", b"u", xattrs={"user.mime": b"text/plain", "user.empty": b"",
                                         "user.bin": bytes(range(256))}),
        File("trusted-xattr", b"t", xattrs={"trusted.overlay.opaque": b"y"}),
        Symlink("link-rel", "small"),
        Symlink("link-abs", "/etc/passwd"),
        Symlink("link-dangling", "does/not/exist"),
        Symlink("link-dir", "sticky"),
        Hardlink("hard", "small"),
        Fifo("fifo"),
        CharDev("null", 1, 3),
        BlockDev("loop", 7, 0),
        File(b"non-utf8-\xff\xfe", b"bytes"),
        File("name with spaces", b"s"),
        File("new\nline", b"n"),
        File("back\\slash", b"b"),
        File("a-b", b"sorts after a/ in tree order"),
        File("a/b", b"child of a"),
        File("sparse", b"head", sparse_size=10 * GiB),
    ])
    # an ACL, stored as system.posix_acl_access
    subprocess.run(["setfacl", "-m", "u:1234:r", os.path.join(root, "small")], check=True)
    # a path deeper than PATH_MAX (4096 bytes): 24 levels of 200-byte names
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for i in range(24):
        name = (f"{i:02d}" + "d" * 198).encode()
        os.mkdir(name, dir_fd=fd)
        nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    wfd = os.open("deep-file", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd)
    os.write(wfd, b"deep")
    os.close(wfd)
    os.close(fd)
    # a socket
    import socket
    s = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        s.bind("sock")
    finally:
        os.chdir(cwd)
        s.close()


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory):
    from conftest import require

    require("root", "mknod", "trusted_xattr")
    root = str(tmp_path_factory.mktemp("every") / "tree")
    _every_kind(root)
    return root


@pytest.mark.needs("root", "mknod", "trusted_xattr")
def test_walker_matches_reference_field_by_field(every_kind):
    ix = snapshot(every_kind)
    sparse_hash = bytes.fromhex(subprocess.run(
        ["xxh128sum", os.path.join(every_kind, "sparse")], capture_output=True, text=True,
        check=True).stdout.split()[0])
    ref = reference.walk(every_kind, skip_hash={b"sparse"})
    ref[b"sparse"]["hash"] = sparse_hash  # xxh128sum is the independent oracle for 10 GiB
    got = reference.index_records(ix)
    assert list(got) == sorted(ref, key=reference.tree_key)
    for path, want in ref.items():
        for field in reference.FIELDS:
            assert got[path][field] == want[field], (path, field)
    assert ix.problems == []


@pytest.mark.needs("root", "mknod", "trusted_xattr")
def test_walker_records_what_the_tree_holds(every_kind):
    """Spot checks that do not depend on the reference being right."""
    ix = snapshot(every_kind)
    assert ix[b"setuid"].mode == stat.S_IFREG | 0o4755
    assert ix[b"sticky"].mode == stat.S_IFDIR | 0o1777
    assert ix[b"caps"].xattrs[b"security.capability"] == CAP_NET_RAW_V2
    assert ix[b"trusted-xattr"].xattrs == {b"trusted.overlay.opaque": b"y"}
    assert b"system.posix_acl_access" in ix[b"small"].xattrs
    assert ix[b"small"].mtime_ns == 1_600_000_000_123_456_789
    assert ix[b"link-dangling"].link_target == b"does/not/exist"
    assert ix[b"null"].rdev == os.makedev(1, 3) and ix[b"null"].type == "char"
    assert ix[b"loop"].type == "block"
    assert ix[b"fifo"].type == "fifo" and ix[b"sock"].type == "socket"
    assert ix[b"hard"].ino == ix[b"small"].ino and ix[b"small"].nlink == 2
    assert ix[b"non-utf8-\xff\xfe"].size == 5
    assert ix[b"new\nline"].hash is not None
    assert ix[b"sparse"].size == 10 * GiB
    assert ix[b"empty"].hash == bytes.fromhex("99aa06d3014798d86001c324468d497f")  # XXH3-128("")
    deep = [e for e in ix if e.path.endswith(b"deep-file")]
    assert len(deep) == 1 and len(deep[0].path) > 4096 and deep[0].hash is not None
    # tree order: a directory directly followed by its children, siblings in byte order
    paths = list(ix.iter_paths())
    assert paths.index(b"a") + 1 == paths.index(b"a/b") < paths.index(b"a-b")
    assert paths == sorted(paths, key=reference.tree_key)


@pytest.mark.needs("root", "mknod", "trusted_xattr")
def test_symlinks_are_never_followed(every_kind):
    ix = snapshot(every_kind)
    assert not any(p.startswith(b"link-dir/") for p in ix.iter_paths())
    assert ix[b"link-abs"].type == "symlink" and ix[b"link-abs"].hash is None


def test_entry_record_is_compact():
    # at most 120 bytes per entry plus the path bytes
    assert ENTRY_DTYPE.itemsize <= 120


def test_hash_threads_and_selection(tmp_path):
    build(tmp_path, [File(f"d{i % 7}/f{i}", os.urandom(i * 37 % 5000)) for i in range(300)])
    one = snapshot(tmp_path, threads=1)
    many = snapshot(tmp_path, threads=8)
    assert np.array_equal(one.entries["hash"], many.entries["hash"])
    assert one.hashed.sum() == 300
    for e in one:
        if e.type == "file":
            with open(os.path.join(tmp_path, os.fsdecode(e.path)), "rb") as f:
                import xxhash
                assert e.hash == xxhash.xxh3_128_digest(f.read())
    none = snapshot(tmp_path, hash=False)
    assert not none.hashed.any()
    some = snapshot(tmp_path, hash=[b"d0/f0", "d1/f1", "no/such/file"])
    assert sorted(e.path for e in some if e.hash) == [b"d0/f0", b"d1/f1"]


def test_lookup(tmp_path):
    build(tmp_path, [File(f"x/{i:04d}", b"") for i in range(500)] + [File("x-y", b"")])
    ix = snapshot(tmp_path, hash=False)
    for i, p in enumerate(ix.iter_paths()):
        assert ix.find(p) == i
        assert ix.find("/" + os.fsdecode(p)) == i
    assert ix.find(b"x/9999") == -1 and ix.find(b"") == -1 and b"nope" not in ix
    with pytest.raises(KeyError):
        ix[b"nope"]


@pytest.mark.needs("root")
def test_one_file_system(tmp_path):
    build(tmp_path, [File("outer", b"o"), Dir("mnt")])
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tmp_path / "mnt")], check=True)
    try:
        (tmp_path / "mnt" / "inner").write_bytes(b"i")
        paths = set(snapshot(tmp_path).iter_paths())
        assert b"mnt" in paths and b"mnt/inner" not in paths
        paths = set(snapshot(tmp_path, one_file_system=False).iter_paths())
        assert b"mnt/inner" in paths
    finally:
        subprocess.run(["umount", str(tmp_path / "mnt")], check=True)


_UNPRIVILEGED_WALK = """
import os, sys
from snapdiff.index import snapshot  # before dropping privileges: python is under /root
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)  # the tmp dir's parents are 0700
os.setgroups([]); os.setgid(65534); os.setuid(65534)
ix = snapshot(f"/proc/self/fd/{fd}")
print(sorted(p.decode() for p in ix.iter_paths()))
print(sorted((p.path.decode(), p.op, p.errno) for p in ix.problems))
"""


@pytest.mark.needs("root")
def test_unreadable_entries_are_reported_and_the_walk_goes_on(tmp_path):
    os.chmod(tmp_path, 0o755)
    build(tmp_path / "t", [File("ok/a", b"a"), File("locked/secret", b"s"),
                           File("unreadable", b"u", mode=0o000), File("z", b"z")])
    os.chmod(tmp_path / "t" / "locked", 0o700)
    r = subprocess.run([sys.executable, "-c", _UNPRIVILEGED_WALK, str(tmp_path / "t")],
                       capture_output=True, text=True, check=True)
    paths, problems = (eval(line) for line in r.stdout.splitlines())
    assert paths == ["locked", "ok", "ok/a", "unreadable", "z"]
    import errno
    assert ("locked", "openat", errno.EACCES) in problems
    assert ("unreadable", "open", errno.EACCES) in problems


def test_entries_vanishing_during_the_walk(tmp_path):
    """A tree that changes under the walker: never an error, and every entry it reports
    existed (its path was created by the churner at some point)."""
    build(tmp_path, [File(f"d{i}/f{j}", b"x") for i in range(20) for j in range(50)])
    stop = threading.Event()

    def churn():
        k = 0
        while not stop.is_set():
            d = tmp_path / f"d{k % 20}"
            for j in range(50):
                try:
                    (d / f"f{j}").unlink()
                except FileNotFoundError:
                    (d / f"f{j}").write_bytes(b"y")
            k += 1

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(20):
            ix = snapshot(tmp_path)
            for p in ix.iter_paths():
                assert p.startswith(b"d")
    finally:
        stop.set()
        t.join()


def test_walk_of_missing_or_non_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such"):
        snapshot(tmp_path / "no-such")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        snapshot(tmp_path / "file")


def test_hash_file_changed_size_is_a_problem(tmp_path):
    build(tmp_path, [File("grows", b"a" * 100)])
    ix = snapshot(tmp_path, hash=False)
    with open(tmp_path / "grows", "ab") as f:
        f.write(b"more")
    ix.hash()
    assert ix.get(b"grows").hash is None
    assert [(p.path, p.op) for p in ix.problems] == [(b"grows", "changed")]
    assert int(ix.entries["flags"][0]) & HASHED == 0


def test_hash_file_matches_xxh128sum(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(os.urandom(3_000_000))
    out = subprocess.run(["xxh128sum", str(p)], capture_output=True, text=True, check=True)
    assert _core.hash_file(p).hex() == out.stdout.split()[0]


def test_public_api_exports():
    for name in ("snapshot", "diff", "TreeIndex", "Change", "Diff", "Entry"):
        assert hasattr(snapdiff, name)
