"""Safe extraction of layer tars: round trips field by field, OCI whiteouts, and bad input.

Test tars come from two independent writers, GNU tar and Python's tarfile (PAX), or are
synthesised header by header where no writer would produce them (attacks, 9 GiB sparse).
Every bad-input test checks that nothing was written beside the target and that
extract_layer_to_new_dir left no partial directory.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import random
import stat
import subprocess
import sys
import tarfile

import pytest
import zstandard
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

from snapdiff import errors
from snapdiff._core import Extractor
from snapdiff.extraction import apply_layer, extract_layer_to_new_dir

NS = 1_600_000_000_123_456_789


# --- observing trees ---------------------------------------------------------------------

def snapshot(root) -> tuple[dict, set]:
    """{relpath: fields} of every entry (root "." included) and the hard-link groups."""
    root = os.fsencode(root)
    out, inodes = {}, {}
    for dirpath, dirnames, filenames, dfd in os.fwalk(root, follow_symlinks=False):
        names = [b"."] if dirpath == root else []
        for name in names + dirnames + filenames:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            rel = os.path.normpath(os.path.relpath(os.path.join(dirpath, name), root))
            full = os.path.join(dirpath, name)
            rec = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode),
                   "uid": st.st_uid, "gid": st.st_gid, "mtime": st.st_mtime_ns}
            if stat.S_ISREG(st.st_mode):
                fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
                with os.fdopen(fd, "rb") as f:
                    rec["sha"] = hashlib.file_digest(f, "sha256").hexdigest()
                rec["size"] = st.st_size
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                rec["target"] = os.readlink(name, dir_fd=dfd)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                rec["rdev"] = st.st_rdev
            if len(full) < 4000:
                rec["xattrs"] = {k: os.getxattr(full, k, follow_symlinks=False)
                                 for k in os.listxattr(full, follow_symlinks=False)}
            out[rel] = rec
    groups = {frozenset(v) for v in inodes.values() if len(v) > 1}
    return out, groups


def listing(path) -> dict:
    """What a directory holds, for 'nothing changed here' checks."""
    return {rel: (rec["type"], rec.get("sha"), rec["mtime"])
            for rel, rec in snapshot(path)[0].items()}


# --- writing tars --------------------------------------------------------------------------

def gnu_tar(src, *extra) -> bytes:
    return subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--format=posix",
                           "--numeric-owner", *extra, "-C", os.fsdecode(src), "-cf", "-", "."],
                          check=True, capture_output=True).stdout


def py_tar(src) -> bytes:
    """The same tree through tarfile (PAX), with exact nanosecond mtimes and xattrs."""
    src = os.fsencode(src)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tf:
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            names = ([b"."] if dirpath == src else []) + sorted(dirnames + filenames)
            for name in names:
                full = os.path.normpath(os.path.join(dirpath, name))
                arc = os.fsdecode(os.path.relpath(full, src))
                ti = tf.gettarinfo(os.fsdecode(full), arc)
                st = os.lstat(full)
                ti.pax_headers["mtime"] = f"{st.st_mtime_ns // 10**9}.{st.st_mtime_ns % 10**9:09d}"
                for k in os.listxattr(full, follow_symlinks=False):
                    v = os.getxattr(full, k, follow_symlinks=False)
                    ti.pax_headers["SCHILY.xattr." + k] = os.fsdecode(v)
                if ti.isreg():
                    with open(full, "rb") as f:
                        tf.addfile(ti, f)
                else:
                    tf.addfile(ti)
    return buf.getvalue()


def entry(name, kind=tarfile.REGTYPE, data=b"", *, link="", mode=0o644, pax=None) -> bytes:
    """One synthesised tar entry (PAX headers when needed), for inputs no writer produces."""
    ti = tarfile.TarInfo(name if isinstance(name, str) else os.fsdecode(name))
    ti.type, ti.size, ti.mode, ti.linkname, ti.mtime = kind, len(data), mode, link, 1_600_000_000
    if pax:
        ti.pax_headers = dict(pax)
    b = ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    if data:
        b += data + b"\0" * ((512 - len(data) % 512) % 512)
    return b


END = b"\0" * 1024


def layer(*entries: bytes) -> bytes:
    return b"".join(entries) + END


# --- round trips ---------------------------------------------------------------------------

def rich_tree(root) -> None:
    long_dir = "d" * 200 + "/" + "e" * 200
    build(root, [
        Dir("etc", mode=0o755, mtime=NS + 1),
        File("etc/passwd", b"root:x:0:0\n", mode=0o644, uid=0, gid=0, mtime=NS + 2),
        File("usr/bin/sudo", b"\x7fELF" + bytes(range(256)) * 40, mode=0o4755, mtime=NS + 3),
        File("usr/bin/wall", b"wall", mode=0o2755, uid=0, gid=5, mtime=NS + 4),
        File("usr/bin/ping", b"ping", mode=0o755, xattrs={"security.capability": CAP_NET_RAW_V2},
             mtime=NS + 5),
        File("usr/bin/cap3", b"cap3", mode=0o755, mtime=NS + 6),
        Dir("tmp", mode=0o1777, mtime=NS + 7),
        Dir("srv/shared", mode=0o2775, uid=1234, gid=5678, mtime=NS + 8),
        File("srv/shared/owned", b"x" * 5000, uid=1234, gid=5678, mode=0o640,
             xattrs={"user.comment": b"hello", "trusted.note": b"\x00\xff\x01"}, mtime=NS + 9),
        Hardlink("srv/shared/owned-link", "srv/shared/owned"),
        Symlink("usr/lib64", "lib", mtime=NS + 10),
        Symlink("etc/absolute", "/etc/passwd", uid=1234, gid=5678, mtime=NS + 11),
        Fifo("run/fifo", mode=0o600, mtime=NS + 12),
        CharDev("dev/null", 1, 3, mode=0o666, mtime=NS + 13),
        BlockDev("dev/loop0", major=7, minor=0, mode=0o660, gid=6, mtime=NS + 14),
        File(b"names/caf\xe9-latin1", b"non-utf8", mtime=NS + 15),
        File("names/sp ace\nnewline", b"odd", mtime=NS + 16),
        File(long_dir + "/" + "f" * 255, b"long", mtime=NS + 17),
        File("empty", b"", mtime=NS + 18),
        Dir("usr/lib", xattrs={"user.dirattr": b"1"}, mtime=NS + 19),
        Dir("usr/bin", mtime=NS + 20),
        Dir("usr", mtime=NS + 21),
    ])
    # a v3 capability (namespaced root uid 1000) set by the real tool
    subprocess.run(["setcap", "-n", "1000", "cap_net_admin+ep", os.path.join(root, "usr/bin/cap3")],
                   check=True, capture_output=True)
    os.utime(os.path.join(root, "usr/bin/cap3"), ns=(NS + 6, NS + 6))
    for d, t in (("usr/bin", NS + 20), ("usr", NS + 21), ("srv/shared", NS + 8),
                 ("names", NS + 22), ("dev", NS + 23), (".", NS + 24)):
        os.utime(os.path.join(root, d), ns=(t, t))


@pytest.mark.needs("root", "mknod", "trusted_xattr")
@pytest.mark.parametrize("writer", ["gnu", "tarfile"])
@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_round_trip_every_field(tmp_path, writer, compression):
    src = tmp_path / "src"
    rich_tree(src)
    raw = gnu_tar(src) if writer == "gnu" else py_tar(src)
    blob = {"none": lambda b: b, "gzip": gzip.compress,
            "zstd": zstandard.ZstdCompressor().compress}[compression](raw)
    want = snapshot(src)
    dst = tmp_path / "dst"
    res = extract_layer_to_new_dir(io.BytesIO(blob), dst,
                                   expect_digest="sha256:" + hashlib.sha256(blob).hexdigest(),
                                   expect_diff_id="sha256:" + hashlib.sha256(raw).hexdigest())
    got = snapshot(dst)
    assert got[0].keys() == want[0].keys()
    for rel in want[0]:
        assert got[0][rel] == want[0][rel], rel
    assert got[1] == want[1] and len(got[1]) == 1
    assert res.compression == compression and res.size == len(raw)
    assert res.skipped == []
    cap3 = os.getxattr(dst / "usr/bin/cap3", "security.capability")
    assert cap3[3] == 3  # VFS_CAP_REVISION_3 stays v3
    assert os.stat(dst / "usr/bin/sudo").st_mode & stat.S_ISUID


@pytest.mark.needs("root", "mknod", "trusted_xattr")
def test_any_chunking_gives_the_same_tree(tmp_path):
    src = tmp_path / "src"
    rich_tree(src)
    raw = gnu_tar(src)
    want = snapshot(src)
    rnd = random.Random(7)
    for i, no_openat2 in enumerate((False, True)):
        dst = tmp_path / f"dst{i}"
        dst.mkdir()
        with Extractor(str(dst), _no_openat2=no_openat2) as x:
            pos = 0
            while pos < len(raw):
                n = rnd.choice((1, 2, 511, 512, 513, 4095, 4097, rnd.randrange(1, 70000)))
                x.feed(raw[pos:pos + n])
                pos += n
            x.finish()
        assert snapshot(dst) == want


def test_devices_skipped_and_reported_without_root(tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    os.chown(dst, 65534, 65534)
    blob = layer(entry("dev/null", tarfile.CHRTYPE), entry("ok", data=b"fine"))
    code = (
        "import os, sys\n"
        "from snapdiff._core import Extractor  # before setuid: python lives in /root\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY)  # the test's tmp dir is 0700 root\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "with Extractor(fd) as x:\n"
        "    x.feed(sys.stdin.buffer.read()); x.finish(); print(x.skipped)\n")
    r = subprocess.run([sys.executable, "-c", code, str(dst)], input=blob, capture_output=True)
    assert r.returncode == 0, r.stderr
    assert b"(b'dev/null', 'device node not created: needs root')" in r.stdout
    assert os.listdir(dst) == ["ok"]


@pytest.mark.slow
def test_sparse_9gib_file_stays_sparse(tmp_path):
    size = 9 * 2**30
    chunks = {0: b"head", 5 * 2**30 + 4096: b"middle" * 1000, size - 3: b"end"}

    class SparseTar(io.RawIOBase):
        """A tarfile-made PAX header (size > 8 GiB), the content streamed mostly as zeros."""
        def __init__(self):
            ti = tarfile.TarInfo("big")
            ti.size, ti.mtime = size, 1_600_000_000
            self.parts = [(0, ti.tobuf(tarfile.PAX_FORMAT))]
            self.hdr_len = len(self.parts[0][1])
            self.total = self.hdr_len + size + END.__len__()
            self.pos = 0

        def readable(self):
            return True

        def readinto(self, b):
            mv = memoryview(b)
            n = min(len(mv), self.total - self.pos)
            mv[:n] = bytes(n) if n != len(mv) else b"\0" * n
            for base, data in [(0, self.parts[0][1])] + [(self.hdr_len + o, d)
                                                         for o, d in chunks.items()]:
                lo, hi = max(base, self.pos), min(base + len(data), self.pos + n)
                if lo < hi:
                    mv[lo - self.pos:hi - self.pos] = data[lo - base:hi - base]
            self.pos += n
            return n

    dst = tmp_path / "dst"
    res = extract_layer_to_new_dir(SparseTar(), dst)
    st = os.stat(dst / "big")
    assert st.st_size == size
    assert st.st_blocks * 512 < 4 * 2**20  # a few data blocks, not 9 GiB
    assert res.holes > size - 2**20
    with open(dst / "big", "rb") as f:
        for off, data in chunks.items():
            f.seek(off)
            assert f.read(len(data)) == data
        f.seek(2**30)
        assert f.read(4096) == bytes(4096)


def test_ten_thousand_byte_name(tmp_path):
    comps = [f"{i:02d}" + "n" * 198 for i in range(50)]
    name = "/".join(comps)
    assert len(name) > 10_000 - 100
    dst = tmp_path / "dst"
    extract_layer_to_new_dir(io.BytesIO(layer(entry(name, data=b"deep"))), dst)
    fd = os.open(dst, os.O_RDONLY)
    try:
        for c in comps[:-1]:
            nfd = os.open(c, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        with os.fdopen(os.open(comps[-1], os.O_RDONLY, dir_fd=fd), "rb") as f:
            assert f.read() == b"deep"
    finally:
        os.close(fd)


def test_component_over_255_bytes_fails_with_enametoolong(tmp_path):
    dst = tmp_path / "dst"
    with pytest.raises(OSError) as ei:
        extract_layer_to_new_dir(io.BytesIO(layer(entry("a/" + "x" * 256))), dst)
    assert ei.value.errno == errno.ENAMETOOLONG
    assert os.listdir(tmp_path) == []


def test_symlink_parent_inside_root_is_followed_within_root(tmp_path):
    dst = tmp_path / "dst"
    blob = layer(entry("usr/lib", tarfile.DIRTYPE, mode=0o755),
                 entry("lib", tarfile.SYMTYPE, link="/usr/lib"),
                 entry("lib/libc.so", data=b"libc"))
    extract_layer_to_new_dir(io.BytesIO(blob), dst)
    assert (dst / "usr/lib/libc.so").read_bytes() == b"libc"
    assert os.readlink(dst / "lib") == "/usr/lib"


def test_replacing_existing_entries(tmp_path):
    dst = tmp_path / "dst"
    build(dst, [File("dir2file/inner", b"x"), File("file2dir", b"y"),
                File("keep/old", b"old"), File("hard", b"shared"), Hardlink("hard2", "hard")])
    blob = layer(entry("dir2file", data=b"now a file"),
                 entry("file2dir", tarfile.DIRTYPE, mode=0o700),
                 entry("keep", tarfile.DIRTYPE, mode=0o750),
                 entry("keep/new", data=b"new"),
                 entry("hard", data=b"replaced"))
    apply_layer(io.BytesIO(blob), dst)
    assert (dst / "dir2file").read_bytes() == b"now a file"
    assert stat.S_IMODE(os.stat(dst / "file2dir").st_mode) == 0o700
    assert sorted(os.listdir(dst / "keep")) == ["new", "old"]
    assert stat.S_IMODE(os.stat(dst / "keep").st_mode) == 0o750
    assert (dst / "hard").read_bytes() == b"replaced"
    assert (dst / "hard2").read_bytes() == b"shared"  # the other link is untouched


# --- whiteouts -----------------------------------------------------------------------------

def lower_tree(root):
    build(root, [File("a/x", b"x"), File("a/y", b"y"), File("b/old1", b"1"),
                 File("b/sub/old2", b"2"), File("b/sub/keep-me-not", b"3"), File("c/z", b"z")])


WHITEOUT_LAYER = layer(
    entry("a/.wh.x", data=b""),
    entry("b", tarfile.DIRTYPE, mode=0o755),
    entry("b/early", data=b"before the marker"),
    entry("b/.wh..wh..opq"),
    entry("b/sub/deep", data=b"same layer"),
    entry("b/late", data=b"after the marker"),
    entry("c/.wh.not-there"),
)


def test_whiteouts_delete_and_opaque_keeps_this_layer(tmp_path):
    dst = tmp_path / "dst"
    lower_tree(dst)
    res = apply_layer(io.BytesIO(WHITEOUT_LAYER), dst)
    assert sorted(os.listdir(dst / "a")) == ["y"]
    assert sorted(os.listdir(dst / "b")) == ["early", "late", "sub"]
    assert os.listdir(dst / "b/sub") == ["deep"]
    assert os.listdir(dst / "c") == ["z"]
    assert res.whiteouts == 3


def test_whiteout_of_a_directory_removes_it_recursively(tmp_path):
    dst = tmp_path / "dst"
    lower_tree(dst)
    apply_layer(io.BytesIO(layer(entry(".wh.b"))), dst)
    assert sorted(os.listdir(dst)) == ["a", "c"]


@pytest.mark.needs("root", "mknod", "trusted_xattr")
def test_overlay_mode_writes_overlay_markers(tmp_path):
    dst = tmp_path / "dst"
    extract_layer_to_new_dir(io.BytesIO(WHITEOUT_LAYER), dst, overlay=True)
    st = os.lstat(dst / "a/x")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(dst / "b", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(dst / "b")) == ["early", "late", "sub"]
    assert stat.S_ISCHR(os.lstat(dst / "c/not-there").st_mode)
    assert not os.path.lexists(dst / "b/.wh..wh..opq")


@pytest.mark.needs("root", "trusted_xattr")
def test_overlay_xattrs_from_the_tar_are_dropped(tmp_path):
    dst = tmp_path / "dst"
    blob = layer(entry("d", tarfile.DIRTYPE, pax={"SCHILY.xattr.trusted.overlay.opaque": "y",
                                                   "SCHILY.xattr.user.ok": "1"}))
    res = extract_layer_to_new_dir(io.BytesIO(blob), dst, overlay=True)
    assert os.listxattr(dst / "d") == ["user.ok"]
    assert res.skipped == [(b"d", "xattr not set (overlay's own, or refused without root)")]


# --- bad input -----------------------------------------------------------------------------

@pytest.fixture
def sentinel(tmp_path):
    s = tmp_path / "sentinel"
    build(s, [File("keep", b"keep")])
    (s / "link-to-me").mkdir()
    return s


def assert_rejected(tmp_path, sentinel, blob, exc=errors.UnsafeLayerError, match=None):
    before = listing(sentinel)
    dest = tmp_path / "layer"
    with pytest.raises(exc, match=match) as ei:
        extract_layer_to_new_dir(io.BytesIO(blob), dest)
    assert sorted(os.listdir(tmp_path)) == ["sentinel"], "partial directory left behind"
    assert listing(sentinel) == before, "something was written outside the target"
    msg = str(ei.value)
    assert msg.startswith("apply layer '") and "\n" not in msg
    return ei.value


def test_absolute_path_is_rejected(tmp_path, sentinel):
    assert_rejected(tmp_path, sentinel, layer(entry("ok", data=b"1"),
                                              entry(str(sentinel / "evil"), data=b"x")),
                    match="absolute")


def test_dotdot_escape_is_rejected(tmp_path, sentinel):
    assert_rejected(tmp_path, sentinel, layer(entry("a/../../sentinel/evil", data=b"x")),
                    match=r"'\.\.'")


@pytest.mark.parametrize("target", ["abs", "rel"])
def test_symlink_entry_then_file_through_it(tmp_path, sentinel, target):
    link = str(sentinel) if target == "abs" else "../sentinel"
    assert_rejected(tmp_path, sentinel, layer(entry("evil", tarfile.SYMTYPE, link=link),
                                              entry("evil/x", data=b"pwned")),
                    match="symlink")


@pytest.mark.parametrize("no_openat2", [False, True])
def test_symlink_already_on_disk_is_not_followed_outside(tmp_path, sentinel, no_openat2):
    dst = tmp_path / "dst"
    build(dst, [Symlink("evil", str(sentinel)), Symlink("rel", "../../sentinel")])
    before = listing(sentinel)
    for name in ("evil/x", "rel/x", "evil/keep"):
        with Extractor(str(dst), _no_openat2=no_openat2) as x:
            with pytest.raises(errors.UnsafeLayerError, match="symlink"):
                x.feed(layer(entry(name, data=b"pwned")))
    assert listing(sentinel) == before
    assert sorted(os.listdir(dst)) == ["evil", "rel"]


def test_hard_link_to_etc_passwd_is_rejected(tmp_path, sentinel):
    nlink = os.stat("/etc/passwd").st_nlink
    assert_rejected(tmp_path, sentinel, layer(entry("pw", tarfile.LNKTYPE, link="/etc/passwd")),
                    match="absolute")
    assert_rejected(tmp_path, sentinel,
                    layer(entry("pw", tarfile.LNKTYPE, link="../../../../../../etc/passwd")),
                    match=r"'\.\.'")
    assert_rejected(tmp_path, sentinel, layer(entry("etc", tarfile.SYMTYPE, link="/etc"),
                                              entry("pw", tarfile.LNKTYPE, link="etc/passwd")),
                    match="symlink|not under the root")
    assert os.stat("/etc/passwd").st_nlink == nlink


def test_hard_link_to_a_missing_target_is_rejected(tmp_path, sentinel):
    assert_rejected(tmp_path, sentinel, layer(entry("h", tarfile.LNKTYPE, link="nope")),
                    match="not under the root")


@pytest.mark.parametrize("name", [".wh.", ".wh..", ".wh...", "d/.wh...", ".wh..wh.foo",
                                  "d/.wh..wh..opqx", ".wh.x/y"])
def test_invalid_whiteout_names_are_rejected(tmp_path, sentinel, name):
    assert_rejected(tmp_path, sentinel, layer(entry("d", tarfile.DIRTYPE), entry(name)),
                    match="whiteout")


@pytest.mark.parametrize("order", ["parent first", "child first"])
def test_whiteout_under_a_deleted_directory_is_rejected(tmp_path, sentinel, order):
    a, b = entry(".wh.d"), entry("d/.wh.x")
    blob = layer(a, b) if order == "parent first" else layer(b, a)
    assert_rejected(tmp_path, sentinel, blob, match="deletes|writes into")


@pytest.mark.parametrize("kind", [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE])
def test_duplicate_entries_are_rejected(tmp_path, sentinel, kind):
    e = entry("dup", kind, link="t" if kind == tarfile.SYMTYPE else "")
    assert_rejected(tmp_path, sentinel, layer(e, entry("other"), e), match="duplicate")


@pytest.mark.parametrize("order", ["whiteout first", "entry first"])
def test_whiteout_and_entry_of_one_name_are_rejected(tmp_path, sentinel, order):
    a, b = entry(".wh.f"), entry("f", data=b"1")
    blob = layer(a, b) if order == "whiteout first" else layer(b, a)
    assert_rejected(tmp_path, sentinel, blob, match="both a whiteout and an entry")


def test_empty_and_nul_names_are_rejected(tmp_path, sentinel):
    assert_rejected(tmp_path, sentinel, layer(entry("x", pax={"path": "a\0b"})), match="NUL")
    bad = bytearray(entry("placeholder"))
    bad[0:100] = b"\0" * 100
    bad[148:156] = b"        "
    bad[148:155] = f"{sum(bad):06o}\0".encode()
    assert_rejected(tmp_path, sentinel, layer(bytes(bad)), match="empty")


def _tree_tar(tmp_path) -> bytes:
    src = tmp_path / "src-tree"
    build(src, [File(f"f{i}", os.urandom(3000)) for i in range(20)])
    raw = gnu_tar(src)
    import shutil
    shutil.rmtree(src)
    return raw


def test_truncated_gzip_is_rejected(tmp_path, sentinel):
    blob = gzip.compress(_tree_tar(tmp_path))
    assert_rejected(tmp_path, sentinel, blob[:len(blob) // 2], errors.LayerFormatError,
                    match="truncated gzip")


def test_corrupt_zstd_is_rejected(tmp_path, sentinel):
    blob = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(_tree_tar(tmp_path)))
    blob[len(blob) // 2] ^= 0xFF
    assert_rejected(tmp_path, sentinel, bytes(blob), errors.LayerFormatError, match="zstd")


def test_truncated_zstd_is_rejected(tmp_path, sentinel):
    blob = zstandard.ZstdCompressor().compress(_tree_tar(tmp_path))
    assert_rejected(tmp_path, sentinel, blob[:-2], errors.LayerFormatError,
                    match="truncated zstd")


def test_truncated_plain_tar_is_rejected(tmp_path, sentinel):
    raw = _tree_tar(tmp_path)
    assert_rejected(tmp_path, sentinel, raw[:700], errors.LayerFormatError, match="truncated")
    assert_rejected(tmp_path, sentinel, raw[:-len(raw) + raw.rstrip(b"\0").__len__() + 100],
                    errors.LayerFormatError, match="truncated")


def test_garbage_is_not_a_tar(tmp_path, sentinel):
    assert_rejected(tmp_path, sentinel, os.urandom(4096), errors.LayerFormatError,
                    match="checksum")


@pytest.mark.parametrize("which", ["digest", "diff_id"])
def test_wrong_digest_is_rejected(tmp_path, sentinel, which):
    raw = _tree_tar(tmp_path)
    blob = gzip.compress(raw)
    wrong = "sha256:" + "0" * 64
    kw = {"expect_digest" if which == "digest" else "expect_diff_id": wrong}
    before = listing(sentinel)
    with pytest.raises(errors.DigestMismatchError, match=which):
        extract_layer_to_new_dir(io.BytesIO(blob), tmp_path / "layer", **kw)
    assert sorted(os.listdir(tmp_path)) == ["sentinel"]
    assert listing(sentinel) == before


BOMB = r"""
import io, os, resource, sys, tarfile
from snapdiff.extraction import extract_layer_to_new_dir

N = 100_000

class Bomb(io.RawIOBase):
    # 100,000 empty files, generated while read: the tar never sits in memory
    def __init__(self):
        self.buf, self.i = b"", 0
    def readable(self):
        return True
    def readinto(self, b):
        parts, have = [self.buf], len(self.buf)
        while have < len(b) and self.i <= N:
            if self.i == N:
                part = b"\0" * 1024
            else:
                ti = tarfile.TarInfo(f"d{self.i // 1000:03d}/f{self.i:06d}")
                ti.mtime = 1_600_000_000
                part = ti.tobuf(tarfile.USTAR_FORMAT)
            parts.append(part)
            have += len(part)
            self.i += 1
        self.buf = b"".join(parts)
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n

rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
res = extract_layer_to_new_dir(Bomb(), sys.argv[1])
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(res.files, (rss1 - rss0) // 1024)
"""


@pytest.mark.slow
def test_tar_bomb_of_100k_empty_files_uses_bounded_memory(tmp_path):
    dst = tmp_path / "dst"
    r = subprocess.run([sys.executable, "-c", BOMB, str(dst)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    files, growth_mib = map(int, r.stdout.split())
    assert files == 100_000
    assert growth_mib < 100, f"peak RSS grew by {growth_mib} MiB"
    assert len(os.listdir(dst)) == 100
    assert len(os.listdir(dst / "d099")) == 1000
