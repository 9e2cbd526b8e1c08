"""The layer writer: csrc/sd_tar.c through snapdiff._core.TarWriter and snapdiff.layers.

Every stream is read back by readers that share no code with the writer: a block parser
written here from the ustar/PAX spec, Python's tarfile, GNU tar and bsdtar.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import socket
import stat
import subprocess
import tarfile

import pytest
from fstree import (
    BlockDev,
    CharDev,
    Dir,
    Fifo,
    File,
    Hardlink,
    Symlink,
    build,
)

from snapdiff import _core
from snapdiff.constants import LAYER_MEDIA_TYPES
from snapdiff.errors import FileChangedError, UnsafeLayerError, UnsupportedError
from snapdiff.layers import ItemKind, tree_items, write_layer

E, W, OPQ = ItemKind.ENTRY, ItemKind.WHITEOUT, ItemKind.OPAQUE
T2020 = 1577836800  # 2020-01-01T00:00:00Z


# --- helpers ---------------------------------------------------------------------------

def tar_bytes(root, items, **kw) -> bytes:
    buf = io.BytesIO()
    write_layer(root, items, buf, compression="none", **kw)
    return buf.getvalue()


def open_tar(data: bytes) -> tarfile.TarFile:
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8",
                        errors="surrogateescape")


def members(data: bytes) -> dict[bytes, tarfile.TarInfo]:
    with open_tar(data) as t:
        return {os.fsencode(m.name): m for m in t.getmembers()}


def parse_blocks(data: bytes) -> list[tuple[bytes, bytes, int]]:
    """(name, typeflag, size) of every header, checking checksums, padding and the end.

    Written from the POSIX ustar spec, independently of the writer."""
    assert len(data) % 512 == 0, "stream is not a whole number of blocks"
    out, pos = [], 0
    while True:
        hdr = data[pos:pos + 512]
        assert len(hdr) == 512, "stream ends without its two zero blocks"
        if hdr == bytes(512):
            assert data[pos + 512:pos + 1024] == bytes(512), "one zero block only"
            assert pos + 1024 == len(data), "bytes after the end-of-archive blocks"
            return out
        stored = int(hdr[148:156].split(b"\0")[0].strip() or b"0", 8)
        computed = sum(hdr[:148]) + 8 * 32 + sum(hdr[156:])
        assert stored == computed, f"bad checksum at offset {pos}"
        assert hdr[257:263] == b"ustar\0" and hdr[263:265] == b"00"
        assert hdr[265:297] == bytes(32) and hdr[297:329] == bytes(32), "uname/gname set"
        name = hdr[0:100].split(b"\0")[0]
        prefix = hdr[345:500].split(b"\0")[0]
        if prefix:
            name = prefix + b"/" + name
        size = int(hdr[124:136].split(b"\0")[0] or b"0", 8)
        typeflag = hdr[156:157]
        out.append((name, typeflag, size))
        padded = (size + 511) // 512 * 512
        assert data[pos + 512 + size:pos + 512 + padded] == bytes(padded - size), "padding"
        pos += 512 + padded


def pax_records(data: bytes) -> list[dict[bytes, bytes]]:
    """The records of every PAX 'x' header, in order."""
    out = []
    pos = 0
    while data[pos:pos + 512] != bytes(512):
        hdr = data[pos:pos + 512]
        size = int(hdr[124:136].split(b"\0")[0] or b"0", 8)
        if hdr[156:157] == b"x":
            body = data[pos + 512:pos + 512 + size]
            recs, i = {}, 0
            while i < len(body):
                sp = body.index(b" ", i)
                n = int(body[i:sp])
                rec = body[sp + 1:i + n - 1]
                assert body[i + n - 1:i + n] == b"\n"
                k, _, v = rec.partition(b"=")
                recs[k] = v
                i += n
            out.append(recs)
        pos += 512 + (size + 511) // 512 * 512
    return out


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


def lstat_fields(path: bytes) -> tuple:
    st = os.lstat(path)
    return (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
            st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0,
            st.st_mtime_ns if not stat.S_ISLNK(st.st_mode) else 0)


def xattrs(path: bytes) -> dict[str, bytes]:
    return {k: os.getxattr(path, k, follow_symlinks=False)
            for k in os.listxattr(path, follow_symlinks=False)}


# --- file types, modes, owners -------------------------------------------------------

@pytest.fixture
def all_types(tmp):
    root = str(tmp / "root")
    build(root, [
        Dir("d", mode=0o755, mtime=T2020 * 10**9),
        File("d/file", b"hello\n", mode=0o640, uid=1000, gid=1001),
        File("d/suid", b"#!x\n", mode=0o4755),
        File("d/sgid", b"", mode=0o2711),
        Dir("d/sticky", mode=0o1777),
        Symlink("d/link", "file"),
        Hardlink("d/hard", "d/file"),
        Fifo("d/fifo", mode=0o600),
        CharDev("d/null", 1, 3, mode=0o666),
        # keywords: fstree.BlockDev is a @dataclass, whose generated __init__ replaces
        # CharDev's positional (path, major, minor) one
        BlockDev(path="d/loop", major=7, minor=42, mode=0o660),
    ])
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.path.join(root, "d/sock"))
    s.close()
    os.utime(os.path.join(root, "d"), ns=(T2020 * 10**9, T2020 * 10**9))
    return root


@pytest.mark.needs("root", "mknod")
def test_every_file_type_reads_back_with_tarfile(all_types):
    items = tree_items(all_types)
    buf = io.BytesIO()
    info = write_layer(all_types, items, buf, compression="none")
    data = buf.getvalue()
    assert info.skipped == ((b"d/sock", "socket"),)
    m = members(data)
    assert set(m) == {b"d", b"d/file", b"d/fifo", b"d/hard", b"d/link", b"d/loop", b"d/null",
                      b"d/sgid", b"d/sticky", b"d/suid"}
    assert m[b"d"].isdir() and m[b"d"].mtime == T2020
    f = m[b"d/file"]
    assert f.isreg() and f.mode == 0o640 and (f.uid, f.gid) == (1000, 1001)
    assert f.uname == "" and f.gname == ""
    with open_tar(data) as t:
        assert t.extractfile("d/file").read() == b"hello\n"
    assert m[b"d/suid"].mode == 0o4755
    assert m[b"d/sgid"].mode == 0o2711
    assert m[b"d/sticky"].isdir() and m[b"d/sticky"].mode == 0o1777
    assert m[b"d/link"].issym() and m[b"d/link"].linkname == "file"
    assert m[b"d/hard"].islnk() and m[b"d/hard"].linkname == "d/file"
    assert m[b"d/hard"].size == 0
    assert m[b"d/fifo"].isfifo() and m[b"d/fifo"].mode == 0o600
    assert m[b"d/null"].ischr() and (m[b"d/null"].devmajor, m[b"d/null"].devminor) == (1, 3)
    assert m[b"d/loop"].isblk() and (m[b"d/loop"].devmajor, m[b"d/loop"].devminor) == (7, 42)
    # directories end with '/' in the raw stream; checksums, padding and the end are right
    names = [n for n, _, _ in parse_blocks(data)]
    assert b"d/" in names and b"d/sticky/" in names


@pytest.mark.needs("root", "mknod")
def test_gnu_tar_extracts_the_same_tree(all_types, tmp):
    os.unlink(os.path.join(all_types, "d/sock"))
    data = tar_bytes(all_types, tree_items(all_types))
    out = tmp / "out"
    out.mkdir()
    run("tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", "-", "-C",
        str(out), input=data)
    for rel, _ in tree_items(all_types):
        a, b = os.path.join(os.fsencode(all_types), rel), os.path.join(bytes(out), rel)
        assert lstat_fields(a) == lstat_fields(b), rel
    assert os.lstat(bytes(out) + b"/d/hard").st_ino == os.lstat(bytes(out) + b"/d/file").st_ino
    assert os.readlink(bytes(out) + b"/d/link") == b"file"


def test_bsdtar_lists_the_stream(tmp):
    if shutil.which("bsdtar") is None:
        pytest.skip("bsdtar is not installed (apt-get install libarchive-tools)")
    root = str(tmp / "root")
    long_name = "x" * 150 + "/" + "y" * 120
    build(root, [File("a", b"1"), File(long_name, b"22"), Symlink("s", "t" * 300)])
    data = tar_bytes(root, tree_items(root))
    out = run("bsdtar", "-tvf", "-", input=data).stdout.decode()
    assert "y" * 120 in out and "-> " + "t" * 300 in out
    assert sorted(line.split()[-1] for line in out.splitlines() if line.startswith("-")) == \
        sorted(["a", long_name])


# --- xattrs --------------------------------------------------------------------------

@pytest.mark.needs("root", "trusted_xattr")
def test_xattrs_kept_byte_for_byte_except_overlays(tmp):
    root = tmp / "root"
    build(str(root), [File("bin/ping", b"elf"), File("bin/ping3", b"elf"), Dir("etc"),
                      Symlink("lnk", "bin/ping")])
    run("setcap", "cap_net_raw+ep", str(root / "bin/ping"))
    run("setcap", "-n", "1000", "cap_net_raw+ep", str(root / "bin/ping3"))  # v3, rootid 1000
    os.setxattr(root / "etc", "user.comment", b"\x00\xffbinary=\n")
    os.setxattr(root / "etc", "trusted.overlay.opaque", b"y")
    os.setxattr(root / "etc", "user.overlay.origin", b"zz")
    os.setxattr(root / "etc", "trusted.keep", b"t")
    os.setxattr(root / "lnk", "trusted.onlink", b"L", follow_symlinks=False)
    run("setfacl", "-m", "u:1234:r", str(root / "bin/ping"))
    caps2 = os.getxattr(root / "bin/ping", "security.capability")
    caps3 = os.getxattr(root / "bin/ping3", "security.capability")
    assert caps2[3] == 2 and caps3[3] == 3  # VFS_CAP_REVISION_2 and _3
    acl = os.getxattr(root / "bin/ping", "system.posix_acl_access")

    data = tar_bytes(str(root), tree_items(root))
    m = members(data)
    enc = {name: {k: v.encode("utf-8", "surrogateescape") for k, v in ti.pax_headers.items()
                  if k.startswith("SCHILY.xattr.")} for name, ti in m.items()}
    assert enc[b"bin/ping"] == {"SCHILY.xattr.security.capability": caps2,
                                "SCHILY.xattr.system.posix_acl_access": acl}
    assert enc[b"bin/ping3"] == {"SCHILY.xattr.security.capability": caps3}
    assert enc[b"etc"] == {"SCHILY.xattr.trusted.keep": b"t",
                           "SCHILY.xattr.user.comment": b"\x00\xffbinary=\n"}
    assert enc[b"lnk"] == {"SCHILY.xattr.trusted.onlink": b"L"}
    assert b"overlay" not in data
    # records come sorted by name, so the order cannot depend on the filesystem
    keys = [k for r in pax_records(data) for k in r if k.startswith(b"SCHILY")]
    assert keys == [b"SCHILY.xattr.security.capability", b"SCHILY.xattr.system.posix_acl_access",
                    b"SCHILY.xattr.security.capability", b"SCHILY.xattr.trusted.keep",
                    b"SCHILY.xattr.user.comment", b"SCHILY.xattr.trusted.onlink"]

    out = tmp / "out"
    out.mkdir()
    run("tar", "--xattrs", "--xattrs-include=*", "-xpf", "-", "-C", str(out), input=data)
    assert os.getxattr(out / "bin/ping3", "security.capability") == caps3
    assert os.getxattr(out / "bin/ping", "security.capability") == caps2
    assert xattrs(bytes(out / "etc")) == {"user.comment": b"\x00\xffbinary=\n",
                                          "trusted.keep": b"t"}


# --- names, sizes, times -------------------------------------------------------------

def test_long_and_non_utf8_names(tmp):
    root = os.fsencode(tmp / "root")
    d120 = b"d" * 120
    fits_split = d120 + b"/" + b"f" * 90                     # 211 bytes: ustar prefix/name
    deep = b"/".join([b"%03d" % i + b"q" * 60 for i in range(6)])  # 383 bytes: PAX path
    latin1 = b"caf\xe9"
    long_latin1 = b"\xe9" * 200 + b"/" + b"\xff" * 200
    target = b"../" * 40 + b"t" * 50                         # 170 bytes: PAX linkpath
    build(root, [File(fits_split, b"a"), File(deep, b"b"), File(latin1, b"c"),
                 File(long_latin1, b"d"), Symlink(b"s", target),
                 Hardlink(d120 + b"/h", fits_split)])
    items = tree_items(root)
    data = tar_bytes(root, items)
    m = members(data)
    assert set(m) == {p for p, _ in items}
    assert os.fsencode(m[b"s"].linkname) == target
    assert m[d120 + b"/h"].islnk() and os.fsencode(m[d120 + b"/h"].linkname) == fits_split
    recs = pax_records(data)
    paths = [r[b"path"] for r in recs if b"path" in r]
    assert deep in paths and long_latin1 in paths and fits_split not in paths
    assert any(r.get(b"hdrcharset") == b"BINARY" and r.get(b"path") == long_latin1
               for r in recs)
    assert any(r.get(b"linkpath") == target for r in recs)
    assert any(r.get(b"linkpath") == fits_split for r in recs)  # hard link to a long name
    raw = [n for n, _, _ in parse_blocks(data)]
    assert fits_split in raw and latin1 in raw  # ustar fields carry raw bytes
    # GNU tar agrees on every name
    out = tmp / "out"
    out.mkdir()
    run("tar", "-xpf", "-", "-C", str(out), input=data)
    for p, _ in items:
        assert os.path.lexists(os.path.join(bytes(out), p)), p
    assert open(os.path.join(bytes(out), deep), "rb").read() == b"b"
    assert os.readlink(os.path.join(bytes(out), b"s")) == target


def test_nanosecond_mtime_and_big_ids(tmp):
    root = str(tmp / "root")
    ns = T2020 * 10**9 + 123456789
    build(root, [File("f", b"x", mtime=ns), File("whole", b"y", mtime=T2020 * 10**9),
                 File("big", b"z", uid=3_000_000, gid=4_000_000)])
    data = tar_bytes(root, tree_items(root))
    m = members(data)
    assert m[b"f"].pax_headers["mtime"] == "1577836800.123456789"
    assert "mtime" not in m[b"whole"].pax_headers and m[b"whole"].mtime == T2020
    assert (m[b"big"].uid, m[b"big"].gid) == (3_000_000, 4_000_000)
    out = tmp / "out"
    out.mkdir()
    run("tar", "--numeric-owner", "-xpf", "-", "-C", str(out), input=data)
    assert os.stat(out / "f").st_mtime_ns == ns
    assert (os.stat(out / "big").st_uid, os.stat(out / "big").st_gid) == (3_000_000, 4_000_000)


@pytest.mark.slow
def test_sparse_file_over_8gib_streams_with_pax_size(tmp):
    root = tmp / "root"
    size = 8 * 2**30 + 2**29  # 8.5 GiB, nearly all hole
    build(str(root), [File("sparse", b"head", sparse_size=size)])
    with open(root / "sparse", "r+b") as f:
        f.seek(size - 4)
        f.write(b"tail")
    assert os.stat(root / "sparse").st_blocks * 512 < 2**20  # really sparse
    head = bytearray()
    tail = bytearray()

    class Keep:  # keeps the first and the last few KiB of the 8.5 GiB stream
        def write(self, b):
            if len(head) < 8192:
                head.extend(b[:8192 - len(head)])
            tail.extend(b[-8192:])
            del tail[:-8192]
            return len(b)

        def flush(self):
            pass

    info = write_layer(str(root), [(b"sparse", E)], Keep(), compression="none")
    assert info.uncompressed_size == 512 * 3 + size + (-size % 512) + 1024
    assert pax_records(bytes(head))[0][b"size"] == str(size).encode()
    assert head[1024 + 124:1024 + 136] == b"00000000000\0"  # ustar size field: PAX wins
    assert head[1536:1540] == b"head"
    assert tail[-1024 - 4:] == b"tail" + bytes(1024)  # 8.5 GiB is a multiple of 512
    with tarfile.open(fileobj=io.BytesIO(bytes(head)), mode="r|") as t:  # headers only
        ti = t.next()
        assert ti.name == "sparse" and ti.size == size


# --- whiteouts, order, clamping --------------------------------------------------------

def test_whiteouts_and_opaque_markers_in_place(tmp):
    root = str(tmp / "root")
    build(root, [Dir("etc", mtime=T2020 * 10**9), File("etc/new", b"n"), Dir("var")])
    items = [(b"etc", E), (b"etc", OPQ), (b"etc/new", E), (b"etc/old", W), (b"gone", W),
             (b"var", E), (b"var", OPQ)]
    data = tar_bytes(root, items)
    names = [n for n, t, _ in parse_blocks(data) if t != b"x"]
    assert names == [b"etc/", b"etc/.wh..wh..opq", b"etc/new", b"etc/.wh.old", b".wh.gone",
                     b"var/", b"var/.wh..wh..opq"]
    m = members(data)
    wh = m[b"etc/.wh.old"]
    assert wh.isreg() and wh.size == 0 and wh.mode == 0o644 and (wh.uid, wh.gid) == (0, 0)
    assert wh.mtime == 0 and m[b"etc/.wh..wh..opq"].mtime == 0


def test_timestamp_clamps_every_mtime(tmp):
    root = str(tmp / "root")
    build(root, [File("old", b"o", mtime=(T2020 - 5) * 10**9),
                 File("new", b"n", mtime=(T2020 + 1000) * 10**9 + 7),
                 File("same_ns", b"s", mtime=T2020 * 10**9 + 1)])
    items = tree_items(root) + [(b"del", W)]
    m = members(tar_bytes(root, items, timestamp=T2020))
    assert m[b"old"].mtime == T2020 - 5
    assert m[b"new"].mtime == T2020 and "mtime" not in m[b"new"].pax_headers
    assert m[b"same_ns"].mtime == T2020 and "mtime" not in m[b"same_ns"].pax_headers
    assert m[b".wh.del"].mtime == T2020


def test_refuses_paths_a_layer_cannot_carry(tmp):
    root = str(tmp / "root")
    build(root, [File(".wh.x", b""), File("ok", b"")])
    bad = [(b".wh.x", E), (b"../etc/passwd", E), (b"a/../b", W), (b"/abs", E), (b"a//b", E),
           (b"", E), (b"./a", E), (b"a/.wh..wh..opq", W), (b"a\0b", E), (b"dir/.wh.y/z", E)]
    for path, kind in bad:
        dest = tmp / "layer.tar"
        with pytest.raises(UnsafeLayerError) as ei:
            write_layer(root, [(b"ok", E), (path, kind)], dest, compression="none")
        assert "add item" in str(ei.value) and "\n" not in str(ei.value)
        assert not dest.exists()
        assert os.listdir(tmp) == ["root"], "a temporary file was left behind"


def test_options_are_checked(tmp):
    root = str(tmp / "root")
    build(root, [File("f", b"")])
    with pytest.raises(UnsupportedError, match="compression 'lz4'"):
        write_layer(root, [], io.BytesIO(), compression="lz4")
    with pytest.raises(ValueError, match="gzip levels are 0..3"):
        write_layer(root, [], io.BytesIO(), compression="gzip", level=9)
    with pytest.raises(ValueError, match="timestamp -1"):
        write_layer(root, [], io.BytesIO(), compression="none", timestamp=-1)
    with pytest.raises(FileNotFoundError):
        write_layer(root, [(b"nope", E)], io.BytesIO(), compression="none")


# --- the stream itself -----------------------------------------------------------------

def test_tree_items_order(tmp):
    root = str(tmp / "root")
    build(root, [File("a-b", b""), File("a/b", b""), File("a/a/z", b""), File("B", b""),
                 Symlink("c", "a")])
    assert [p for p, _ in tree_items(root)] == [b"B", b"a", b"a/a", b"a/a/z", b"a/b", b"a-b",
                                                b"c"]


def test_small_reads_give_the_same_stream(tmp):
    root = str(tmp / "root")
    build(root, [File("a", os.urandom(5000)), File("b", b"x" * 513), Dir("c")])
    items = tree_items(root)
    whole = tar_bytes(root, items)
    with _core.TarWriter(root, read_chunk=7) as tw:
        tw.add_items(items)
        parts = []
        while chunk := tw.read(333):
            parts.append(chunk)
        assert tw.read(333) == b""
        assert tw.offset == len(whole)
    assert b"".join(parts) == whole


def test_same_tree_same_bytes(tmp):
    root = str(tmp / "root")
    build(root, [File(f"d{i % 7}/f{i}", os.urandom(100) * (i % 50), mtime=T2020 * 10**9)
                 for i in range(300)])
    items = tree_items(root)
    assert tar_bytes(root, items) == tar_bytes(root, items)


@pytest.mark.parametrize("compression,tool", [("gzip", "gzip"), ("zstd", "zstd")])
def test_compressed_output_independent_of_threads(tmp, compression, tool):
    root = str(tmp / "root")
    rnd = os.urandom(3 << 20)
    build(root, [File("text", b"".join(b"line %d\n" % i for i in range(600_000))),
                 File("random", rnd), File("zeros", bytes(5 << 20))])
    items = tree_items(root)
    outs = {}
    for threads in (1, 2, 5):
        buf = io.BytesIO()
        info = write_layer(root, items, buf, compression=compression, threads=threads)
        outs[threads] = buf.getvalue()
    assert outs[1] == outs[2] == outs[5]
    data = outs[1]
    assert info.media_type == LAYER_MEDIA_TYPES[compression]
    assert info.size == len(data) < info.uncompressed_size
    assert info.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    tar = run(tool, "-dc", input=data).stdout
    assert info.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert info.uncompressed_size == len(tar)
    assert tar == tar_bytes(root, items)


def test_digest_of_a_path_dest_and_uncompressed(tmp):
    root = str(tmp / "root")
    build(root, [File("f", b"abc" * 100000)])
    dest = tmp / "blob"
    info = write_layer(root, tree_items(root), dest, compression="none")
    data = dest.read_bytes()
    assert info.digest == info.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert info.size == info.uncompressed_size == len(data)
    assert info.media_type == "application/vnd.oci.image.layer.v1.tar"
    assert sorted(os.listdir(tmp)) == ["blob", "root"]


# --- files that change while they are written --------------------------------------------

def test_file_that_shrinks_or_grows_mid_read_fails(tmp):
    root = tmp / "root"
    build(str(root), [File("f", b"x" * 100_000)])
    for change in ("shrink", "grow"):
        with _core.TarWriter(str(root), read_chunk=1000) as tw:
            tw.add_items([(b"f", E)])
            assert len(tw.read(2048)) == 2048  # header and the first bytes
            with open(root / "f", "r+b") as f:
                if change == "shrink":
                    f.truncate(50_000)
                else:
                    f.seek(0, 2)
                    f.write(b"more")
            with pytest.raises(FileChangedError, match="read 'f': file changed while being"):
                while tw.read(1 << 16):
                    pass
            with pytest.raises(FileChangedError):  # failed for good
                tw.read(10)
        with open(root / "f", "wb") as f:
            f.write(b"x" * 100_000)


def test_change_during_write_layer_leaves_no_output(tmp):
    root = tmp / "root"
    # bigger than the chunks read ahead, so the change lands before the file is read
    build(str(root), [File("big", b"\1" * (40 << 20)), File("other", b"o")])
    dest = tmp / "layer.tar.gz"
    calls = []

    def progress(done):
        if not calls:
            os.truncate(root / "big", 1 << 20)
        calls.append(done)

    with pytest.raises(FileChangedError, match="big"):
        write_layer(str(root), tree_items(root), dest, compression="gzip", progress=progress)
    assert calls and not dest.exists()
    assert os.listdir(tmp) == ["root"]


def test_root_missing_is_a_clean_oserror(tmp):
    with pytest.raises(FileNotFoundError):
        write_layer(str(tmp / "nope"), [], io.BytesIO())


def test_sparse_file_content_is_exact(tmp):
    root = tmp / "root"
    root.mkdir()
    size = 20 << 20
    with open(root / "s", "wb") as f:
        f.truncate(size)
        for off in (3, 5 << 20, (5 << 20) + 4097, (12 << 20) - 7, size - 1):
            f.seek(off)
            f.write(os.urandom(5000)[: size - off])
    assert os.stat(root / "s").st_blocks * 512 < size  # the writer takes its hole path
    expected = (root / "s").read_bytes()
    with _core.TarWriter(str(root), read_chunk=1 << 16) as tw:
        tw.add_items([(b"s", E)])
        data = b"".join(iter(lambda: tw.read(100_000), b""))
    with open_tar(data) as t:
        assert t.extractfile("s").read() == expected
    # a sparse file that shrinks while it is written fails too
    with _core.TarWriter(str(root), read_chunk=1 << 16) as tw:
        tw.add_items([(b"s", E)])
        tw.read(1 << 20)
        os.truncate(root / "s", 6 << 20)
        with pytest.raises(FileChangedError):
            while tw.read(1 << 20):
                pass


def test_parents_are_never_followed_through_symlinks(tmp):
    root = tmp / "root"
    outside = tmp / "outside"
    build(str(outside), [File("secret", b"s")])
    build(str(root), [Symlink("lnk", str(outside)), Symlink("rel", "../outside"), Dir("d")])
    for path in (b"lnk/secret", b"rel/secret"):
        with pytest.raises(OSError) as ei:
            tar_bytes(str(root), [(b"d", E), (path, E)])
        assert ei.value.errno in (errno.ELOOP, errno.ENOTDIR)
        assert "openat '" + path.split(b"/")[0].decode() + "'" in str(ei.value)
    # the symlink itself is an entry like any other
    assert members(tar_bytes(str(root), [(b"lnk", E)]))[b"lnk"].linkname == str(outside)


def test_hard_links_point_at_the_first_path_written(tmp):
    root = str(tmp / "root")
    build(root, [File("z/orig", b"data"), Hardlink("a/one", "z/orig"), Hardlink("m", "z/orig"),
                 Symlink("s", "x"), Hardlink("s2", "s")])
    data = tar_bytes(root, tree_items(root))
    m = members(data)
    assert m[b"a/one"].isreg() and m[b"a/one"].size == 4  # first in tree order: the content
    assert m[b"m"].islnk() and m[b"m"].linkname == "a/one"
    assert m[b"z/orig"].islnk() and m[b"z/orig"].linkname == "a/one"
    assert m[b"s"].issym() and m[b"s2"].islnk() and m[b"s2"].linkname == "s"
    with open_tar(data) as t:
        assert t.extractfile("a/one").read() == b"data"


def test_cli_write_layer(tmp, monkeypatch):
    from click.testing import CliRunner

    from snapdiff.cli import cli

    root = str(tmp / "root")
    build(root, [File("f", b"x", mtime=(T2020 + 99) * 10**9)])
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.path.join(root, "sock"))
    s.close()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(T2020))
    r = CliRunner().invoke(cli, ["write-layer", root, str(tmp / "l.tar"), "--compression",
                                 "none"])
    assert r.exit_code == 0, r.output
    data = (tmp / "l.tar").read_bytes()
    assert f"digest: sha256:{hashlib.sha256(data).hexdigest()}" in r.stdout
    assert "skipped 'sock': socket" in r.stderr
    assert members(data)[b"f"].mtime == T2020
    r = CliRunner().invoke(cli, ["write-layer", root, str(tmp / "l2"), "--compression", "gzip",
                                 "--level", "7"])
    assert r.exit_code == 1 and r.stderr == "snapdiff: write layer: level 7: gzip levels are " \
        "0..3\n"


def test_content_hashes_are_computed_while_streaming(tmp_path):
    import numpy as np

    from snapdiff.layers import LayerItems

    root = tmp_path / "root"
    root.mkdir()
    (root / "a").write_bytes(os.urandom(5_000_000))
    (root / "empty").write_bytes(b"")
    (root / "d").mkdir()
    (root / "d" / "b").write_bytes(b"bee")
    os.link(root / "a", root / "hard")
    with open(root / "sparse", "wb") as f:
        f.write(b"x")
        f.truncate(3 << 20)
    paths = [b"a", b"d", b"d/b", b"empty", b"hard", b"sparse"]
    blob = b"".join(paths)
    lens = np.array([len(p) for p in paths], dtype=np.uint32)
    offs = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.uint64)
    items = LayerItems(blob, offs, lens, np.zeros(len(paths), dtype=np.uint8))
    info = write_layer(str(root), items, str(tmp_path / "l.tar"), compression="none",
                       hash_content=True)
    hashes, flags = info.content_hashes
    assert list(flags) == [1, 0, 1, 1, 0, 1]  # dirs carry no content, "hard" is a link
    for i, p in enumerate(paths):
        if flags[i]:
            assert hashes[16 * i:16 * i + 16] == _core.hash_file(root / os.fsdecode(p)), p
    # the same items as pairs give the same bytes
    info2 = write_layer(str(root), [(p, ItemKind.ENTRY) for p in paths],
                        str(tmp_path / "l2.tar"), compression="none")
    assert info2.digest == info.digest and info2.content_hashes is None
    with _core.TarWriter(str(root)) as tw, pytest.raises(ValueError, match="outside the blob"):
        tw.add_item_arrays(blob, np.array([0], np.uint64), np.array([999], np.uint32),
                           np.zeros(1, np.uint8))
