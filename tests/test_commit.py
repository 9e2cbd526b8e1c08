"""commit and container diff: a catalogue of changes, each made in a real container.

For each scenario: (1) `diff` lists exactly the expected changes; (2) the committed image,
unpacked by umoci (an independent implementation), equals the container's merged tree
field by field, hard-link groups included; (3) a container made from the new image sees
the same tree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import tarfile
import time

import pytest
from conftest import make_busybox_rootfs
from fstree import Dir, File, Symlink, build
from storeutil import describe, hardlink_groups

import snapdiff
from snapdiff import Store
from snapdiff.errors import ContainerNotFound, NameInUseError, UnsupportedError

pytestmark = pytest.mark.needs("root", "mknod", "trusted_xattr", "overlay", "unshare")

SEC = 10**9
BASE_MTIME = 1_600_000_000 * SEC


def _base_tree(root: str) -> None:
    make_busybox_rootfs(root)
    build(root, [
        File("etc/app/conf", b"base\n", mtime=BASE_MTIME),
        File("data/tree/a", b"a\n", mtime=BASE_MTIME),
        File("data/tree/b/c", b"c\n", mtime=BASE_MTIME),
        Symlink("data/link", "tree/a"),
        Dir("data/empty", mtime=BASE_MTIME),
    ])
    for d in ("etc/app", "data/tree/b", "data/tree", "data"):
        os.utime(os.path.join(root, d), ns=(BASE_MTIME, BASE_MTIME))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from conftest import require

    require("root", "overlay", "unshare")
    root = tmp_path_factory.mktemp("commit")
    s = Store(str(root / "store"))
    rootfs = str(root / "rootfs")
    _base_tree(rootfs)
    s.import_(rootfs, "base:1")
    yield s
    for c in s.containers.list(all=True):
        c.remove(force=True)


def _tree(path: str) -> tuple[dict, set]:
    """Everything a layer must carry, per path, and the hard-link groups; read with the
    plain Python walk of tests/storeutil.py, independent of snapdiff's own walker."""
    return describe(path), hardlink_groups(path)


def _umoci_tree(store: Store, ref: str, tmp) -> tuple[dict, set]:
    bundle = str(tmp / f"bundle-{ref.replace(':', '-')}")
    subprocess.run(["umoci", "unpack", "--image", f"{store.root}/oci:{ref}", bundle],
                   check=True, capture_output=True)
    return _tree(os.path.join(bundle, "rootfs"))


def _merged_tree(container) -> tuple[dict, set]:
    merged = container.mount()
    try:
        return _tree(merged)
    finally:
        container.umount()


def _run(store, script, name):
    c, code = store.run("base:1", ["/bin/sh", "-c", script], name=name)
    assert code == 0, c.logs()
    return c


def _in_merged(c, fn):
    merged = c.mount()
    try:
        fn(merged)
    finally:
        c.umount()


def _restore_conf_mtime(m):
    os.utime(os.path.join(m, "etc/app/conf"), ns=(BASE_MTIME, BASE_MTIME))


def _setcap(m):
    subprocess.run(["setcap", "cap_net_raw+ep", os.path.join(m, "bin/busybox")], check=True)


def _setxattr(m):
    os.setxattr(os.path.join(m, "etc/app/conf"), "user.origin", b"test")
    os.setxattr(os.path.join(m, "data/tree"), "trusted.snapdiff", b"\x00\x01")


CONF = ["C /etc/app/conf"]  # a changed file: its unchanged parents are not listed
LONG = "L" * 200

# name, script run in the container, host step on the merged tree, expected diff
SCENARIOS = [
    ("add", "echo new > /newfile", None, ["A /newfile"]),
    ("modify", "echo changed > /etc/app/conf", None, CONF),
    ("append", "echo more >> /etc/app/conf", None, CONF),
    ("truncate", ": > /etc/app/conf", None, CONF),
    ("chmod", "chmod 600 /etc/app/conf", None, CONF),
    ("chown", "chown 1000:1000 /etc/app/conf", None, CONF),
    ("touch-only", "touch -d '2021-01-01 00:00:00' /etc/app/conf", None, CONF),
    ("identical-rewrite", "echo base > /etc/app/conf", None, CONF),
    ("identical-rewrite-mtime-restored", "echo base > /etc/app/conf", _restore_conf_mtime, []),
    ("chmod-away-and-back", "chmod 600 /etc/app/conf; chmod 644 /etc/app/conf", None, []),
    ("chown-away-and-back", "chown 5:5 /etc/app/conf; chown 0:0 /etc/app/conf", None, []),
    ("delete-file", "rm /etc/app/conf", None, ["C /etc", "C /etc/app", "D /etc/app/conf"]),
    ("delete-tree", "rm -rf /data/tree", None, ["C /data", "D /data/tree"]),
    # a directory made again over a deleted one hides the old contents: D, as docker says
    ("delete-recreate-dir", "rm -rf /data/tree && mkdir /data/tree && echo n > /data/tree/n",
     None, ["C /data", "D /data/tree", "A /data/tree/n"]),
    ("file-to-dir", "rm /etc/app/conf && mkdir /etc/app/conf && echo x > /etc/app/conf/x",
     None, ["C /etc", "C /etc/app", "D /etc/app/conf", "A /etc/app/conf/x"]),
    ("dir-to-file", "rm -rf /data/tree && echo f > /data/tree", None,
     ["C /data", "C /data/tree"]),
    ("file-to-symlink", "rm /etc/app/conf && ln -s /etc/passwd /etc/app/conf", None,
     ["C /etc/app", "C /etc/app/conf"]),
    ("symlink-to-dir", "rm /data/link && mkdir /data/link", None, ["C /data", "D /data/link"]),
    ("rename-file", "mv /etc/app/conf /etc/app/conf2", None,
     ["C /etc", "C /etc/app", "D /etc/app/conf", "A /etc/app/conf2"]),
    ("rename-dir", "mv /data/tree /data/moved", None,
     ["C /data", "A /data/moved", "A /data/moved/a", "A /data/moved/b", "A /data/moved/b/c",
      "D /data/tree"]),
    ("hardlink-to-lower", "ln /etc/app/conf /etc/app/hl", None,
     ["C /etc", "C /etc/app", "C /etc/app/conf", "A /etc/app/hl"]),
    ("hardlink-in-upper", "echo u > /u1 && ln /u1 /u2", None, ["A /u1", "A /u2"]),
    ("setuid", "cp /bin/busybox /bin/suid && chmod 4755 /bin/suid", None,
     ["C /bin", "A /bin/suid"]),
    ("setcap", "true", _setcap, ["C /bin/busybox"]),
    ("xattrs", "true", _setxattr, ["C /data/tree"] + CONF),
    ("fifo-and-device", "mkfifo /fifo && mknod /nullish c 1 3", None, ["A /fifo", "A /nullish"]),
    ("long-and-odd-names", f"mkdir -p /{LONG}/{LONG} && echo l > /{LONG}/{LONG}/{LONG} && "
     "echo o > \"$(printf '/odd\\377name')\" && echo s > '/with space'", None,
     [f"A /{LONG}", f"A /{LONG}/{LONG}", f"A /{LONG}/{LONG}/{LONG}", "A /odd\udcffname",
      "A /with space"]),
    ("many-small-files", "mkdir /many && i=0; while [ $i -lt 500 ]; do echo $i > /many/f$i; "
     "i=$((i+1)); done", None, None),
]


@pytest.mark.parametrize("name,script,host,expected", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_scenario(store, tmp_path, name, script, host, expected):
    c = _run(store, script, f"s-{name}")
    if host is not None:
        _in_merged(c, host)
    lines = c.diff().lines()
    if expected is None:  # many files: check the shape
        assert lines[0] == "A /many" and len(lines) == 501
    else:
        assert lines == expected
    image = c.commit(f"scn-{name}:1", compression="gzip")
    assert image.changes.lines() == lines
    want = _merged_tree(c)
    assert _umoci_tree(store, f"scn-{name}:1", tmp_path) == want
    # a container made from the new image sees the same tree
    c2 = store.containers.create(store.image(f"scn-{name}:1"), cmd=["true"])
    try:
        assert _merged_tree(c2) == want
        assert c2.diff().lines() == []
    finally:
        c2.remove(force=True)
        c.remove(force=True)


@pytest.mark.slow
def test_sparse_9gib_file(store, tmp_path):
    c = _run(store, "truncate -s 9G /sparse && echo tail >> /sparse", "s-sparse")
    try:
        assert c.diff().lines() == ["A /sparse"]
        image = c.commit("scn-sparse:1", compression="zstd")
        assert image.layer_info.size < 50 << 20  # 9 GiB of zeros compress to little
        want = _merged_tree(c)
        c2 = store.containers.create(store.image("scn-sparse:1"), cmd=["true"])
        try:
            got = _merged_tree(c2)
            assert got == want
            st = os.stat(os.path.join(store.image("scn-sparse:1").lower_dirs[0], "sparse"))
            assert st.st_size == 9 * 2**30 + 5 and st.st_blocks * 512 < 64 << 20  # stays sparse
        finally:
            c2.remove(force=True)
    finally:
        c.remove(force=True)


def _layer_names(store, image) -> list[str]:
    blob = store.blob_path(image.layers[-1]["digest"])
    with tarfile.open(blob) as t:
        return [m.name.rstrip("/") for m in t.getmembers()]


def test_layer_carries_overlay_markers_as_oci_whiteouts(store):
    c = _run(store, "rm -rf /data/tree && mkdir /data/tree && echo n > /data/tree/n && "
                    "rm /etc/app/conf", "markers")
    try:
        image = c.commit("markers:1")
        names = _layer_names(store, image)
        assert names == ["data", "data/tree", "data/tree/.wh..wh..opq", "data/tree/n", "etc",
                         "etc/app", "etc/app/.wh.conf"]
        blob = store.blob_path(image.layers[-1]["digest"])
        with tarfile.open(blob) as t:
            for m in t.getmembers():
                assert not any(k.startswith(("SCHILY.xattr.trusted.overlay",
                                             "SCHILY.xattr.user.overlay"))
                               for k in m.pax_headers), m.name
    finally:
        c.remove(force=True)


def test_no_op_copy_ups_carry_no_content(store):
    script = ("for f in /data/tree/a /data/tree/b/c /etc/app/conf; do "
              "chmod 600 $f; chmod 644 $f; chown 7:7 $f; chown 0:0 $f; done")
    c = _run(store, script, "noop")
    try:
        assert c.diff().lines() == []
        image = c.commit("noop:1")
        assert image.changes.kept_bytes == 0 and _layer_names(store, image) == []
    finally:
        c.remove(force=True)


def test_incremental_commits(store, tmp_path):
    c = _run(store, "echo one > /one && echo changed > /etc/app/conf", "incr")
    try:
        img1 = c.commit("incr:1")
        assert _layer_names(store, img1) == ["etc", "etc/app", "etc/app/conf", "one"]
        # second round: change again, delete a file committed in the first layer, add one
        _in_merged(c, lambda m: (os.unlink(os.path.join(m, "one")),
                                 open(os.path.join(m, "two"), "w").write("two\n")))
        img2 = c.commit("incr:2")
        assert img2.diff_ids[:-1] == img1.diff_ids
        assert _layer_names(store, img2) == [".wh.one", "two"]
        # third round: revert conf to the base content and mtime, delete a base directory
        def third(m):
            with open(os.path.join(m, "etc/app/conf"), "w") as f:
                f.write("base\n")
            _restore_conf_mtime(m)
            import shutil
            shutil.rmtree(os.path.join(m, "data/tree"))
        _in_merged(c, third)
        img3 = c.commit("incr:3")
        assert _layer_names(store, img3) == ["data", "data/.wh.tree", "etc", "etc/app",
                                             "etc/app/conf"]
        assert len(img3.diff_ids) == len(img1.diff_ids) + 2
        # nothing changed: an empty layer
        img4 = c.commit("incr:4")
        assert _layer_names(store, img4) == []
        # the stack equals the container's tree, and a full commit gives the same tree
        want = _merged_tree(c)
        assert _umoci_tree(store, "incr:4", tmp_path) == want
        full = c.commit("incr:full", full=True)
        assert len(full.diff_ids) == len(store.image("base:1").diff_ids) + 1
        assert _umoci_tree(store, "incr:full", tmp_path) == want
    finally:
        c.remove(force=True)


def test_commit_of_running_container_pauses_it(store):
    c, _ = store.run("base:1", ["/bin/sh", "-c", "echo started > /started; sleep 30"],
                     name="live", detach=True)
    try:
        for _ in range(100):
            if "A /started" in c.diff().lines():
                break
            time.sleep(0.05)
        calls = []
        orig_pause, orig_resume = c.pause, c.resume
        c.pause = lambda: (calls.append("pause"), orig_pause())[1]
        c.resume = lambda: (calls.append("resume"), orig_resume())[1]
        img = c.commit("live:1")
        assert calls == ["pause", "resume"] and c.status == "running"
        assert "started" in _layer_names(store, img)
    finally:
        c.remove(force=True)


def test_config_changes_and_history(store):
    c = _run(store, "true", "cfg")
    try:
        img = c.commit("cfg:1", message="msg", author="Ann <a@example.org>",
                       changes=['CMD ["/bin/echo", "hi"]', "ENV A=1 B=two", "WORKDIR /data",
                                "LABEL k=v", "EXPOSE 80", "USER 1000"])
        cfg = img.config
        assert cfg["Cmd"] == ["/bin/echo", "hi"] and cfg["WorkingDir"] == "/data"
        assert "A=1" in cfg["Env"] and "B=two" in cfg["Env"] and cfg["User"] == "1000"
        assert cfg["Labels"] == {"k": "v"} and cfg["ExposedPorts"] == {"80/tcp": {}}
        hist = img.config_blob["history"][-1]
        assert hist["comment"] == "msg" and hist["author"] == "Ann <a@example.org>"
        c2, code = store.run("cfg:1", remove=True, stdout=subprocess.PIPE)
        assert code == 0
        with pytest.raises(UnsupportedError, match="unknown instruction"):
            c.commit("cfg:2", changes=["FROB x"])
    finally:
        c.remove(force=True)


def test_wh_names_are_refused(store):
    before = sorted(os.listdir(os.path.join(store.root, "oci/blobs/sha256")))
    c = _run(store, "echo x > /data/.wh.sneaky", "whname")
    try:
        with pytest.raises(UnsupportedError, match=r"\.wh\..*cannot be stored"):
            c.commit("whname:1")
        assert sorted(os.listdir(os.path.join(store.root, "oci/blobs/sha256"))) == before
        with pytest.raises(snapdiff.errors.ImageNotFound):
            store.image("whname:1")
    finally:
        c.remove(force=True)


def test_redirect_xattr_in_upper_is_refused(store):
    c = _run(store, "mkdir /moved", "redirect")
    try:
        os.setxattr(os.path.join(c.upper_dir, "moved"), "trusted.overlay.redirect", b"/x")
        with pytest.raises(UnsupportedError, match="redirect"):
            c.commit("redirect:1")
    finally:
        c.remove(force=True)


def test_missing_container_and_taken_name(store):
    with pytest.raises(ContainerNotFound):
        store.commit("no-such-container")
    c = _run(store, "echo 1 > /x", "taken")
    try:
        c.commit("taken:1")
        with pytest.raises(NameInUseError, match="taken"):
            c.commit("taken:1")
        moved = c.commit("taken:1", replace=True)
        assert store.image("taken:1").id == moved.id
    finally:
        c.remove(force=True)


def _cli(store, *args, check=False):
    return subprocess.run([sys.executable, "-m", "snapdiff", "--root", store.root, *args],
                          capture_output=True, text=True, check=check)


def test_cli_commit_and_diff(store):
    c = _run(store, "echo cli > /cli", "clicommit")
    try:
        r = _cli(store, "diff", "clicommit", check=True)
        assert r.stdout.splitlines() == ["A /cli"]
        r = _cli(store, "commit", "-m", "via cli", "--compression", "zstd", "clicommit",
                 "cli:1", check=True)
        assert r.stdout.strip() == store.image("cli:1").id
        assert store.image("cli:1").layers[-1]["mediaType"].endswith("+zstd")
        r = _cli(store, "commit", "no-such", "x:1")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no-such" in r.stderr
        r = _cli(store, "commit", "clicommit", "cli:1")
        assert r.returncode == 1 and "taken" in r.stderr and "Traceback" not in r.stderr
    finally:
        c.remove(force=True)


def _store_state(store) -> dict:
    out = {}
    for sub in ("oci", "layers"):
        top = os.path.join(store.root, sub)
        for dp, _dirs, fns in os.walk(top):
            for n in fns:
                p = os.path.join(dp, n)
                st = os.lstat(p)
                out[os.path.relpath(p, store.root)] = (st.st_size, st.st_mtime_ns)
    return out


def test_full_disk_leaves_store_unchanged(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(small)], check=True)
    try:
        s = Store(str(small / "store"))
        rootfs = str(tmp_path / "rootfs")
        make_busybox_rootfs(rootfs)
        s.import_(rootfs, "tiny:1", compression="none")
        c, code = s.run("tiny:1", ["/bin/sh", "-c", "echo small > /ok"], name="full")
        assert code == 0
        # 12 MiB of random data in the upper dir leaves too little room for its layer
        with open(os.path.join(c.upper_dir, "big"), "wb") as f:
            f.write(os.urandom(12 << 20))
        before = _store_state(s)
        with pytest.raises(OSError) as ei:
            c.commit("tiny:2", compression="none")
        assert ei.value.errno == 28
        assert _store_state(s) == before
        assert os.listdir(os.path.join(s.root, "tmp")) in ([], ["lock"]) or all(
            not n.startswith("commit-") for n in os.listdir(os.path.join(s.root, "tmp")))
        os.unlink(os.path.join(c.upper_dir, "big"))
        assert c.commit("tiny:2").changes.lines() == ["A /ok"]
        c.remove(force=True)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


_KILL_ME = """
import sys
from snapdiff import Store
Store(sys.argv[1]).commit(sys.argv[2], sys.argv[3], compression="gzip")
"""


@pytest.mark.slow
def test_sigkill_mid_commit(store):
    c = _run(store, "dd if=/dev/urandom of=/big bs=1M count=64 2>/dev/null", "killed")
    try:
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", _KILL_ME, store.root, c.id, "killed:probe"],
                       check=True)
        took = time.monotonic() - t0
        store.rmi("killed:probe")
        c.state.pop("commit", None)
        c.save_state()
        os.unlink(os.path.join(c.dir, "commit.idx"))
        killed_midway = 0
        for k in range(5):
            delay = took * (0.3 + 0.12 * k)  # past the interpreter's start, into the work
            p = subprocess.Popen([sys.executable, "-c", _KILL_ME, store.root, c.id,
                                  f"killed:{k}"])
            time.sleep(delay)
            p.send_signal(signal.SIGKILL)
            was_killed = p.wait() == -signal.SIGKILL
            killed_midway += was_killed
            assert [pr for pr in store.fsck()] == []
            assert c.reload().status == "exited"
            if not was_killed:  # it finished: undo it, so the next one commits everything
                store.rmi(f"killed:{k}")
                c.state.pop("commit", None)
                c.save_state()
        assert killed_midway >= 2
        img = c.commit("killed:final")
        assert "A /big" in img.changes.lines()
    finally:
        c.remove(force=True)


def test_library_api_example(store):
    """The README's library example, as a build system would use it."""
    c, code = store.run("base:1", ["/bin/sh", "-c", "echo built > /artifact"], name="lib")
    assert code == 0
    assert [ln for ln in c.diff().lines()] == ["A /artifact"]
    image = c.commit("lib:1", message="build step")
    assert image.name == "lib:1" and store.image("lib:1").id == image.id
    assert stat.S_ISREG(os.lstat(os.path.join(image.lower_dirs[0], "artifact")).st_mode)
    c.remove()


def test_commit_after_the_image_was_removed(store):
    """rmi of a container's image keeps what the container uses (gc too); commit works."""
    c = _run(store, "echo kept > /kept", "orphan")
    try:
        img = c.commit("orphan-base:1")
        c2 = _run_from(store, "orphan-base:1", "echo more > /more", "orphan2")
        store.rmi("orphan-base:1")
        store.gc()
        out = c2.commit("orphan-next:1")
        assert out.changes.lines() == ["A /more"]
        assert out.diff_ids[:-1] == img.diff_ids
    finally:
        c.remove(force=True)
        with contextlib.suppress(ContainerNotFound):
            store.container("orphan2").remove(force=True)


def _run_from(store, ref, script, name):
    c, code = store.run(ref, ["/bin/sh", "-c", script], name=name)
    assert code == 0, c.logs()
    return c


def test_commit_index_keeps_the_hashes_the_writer_computed(store):
    """The next commit knows unchanged files without reading them: the saved upper index
    holds the content hash of every file the layer carried, hard-link peers included."""
    from snapdiff import _core
    from snapdiff.index import TreeIndex

    c = _run(store, "echo one > /one && dd if=/dev/urandom of=/big bs=64k count=20 "
                    "2>/dev/null && ln /big /big2 && echo changed > /etc/app/conf", "hashes")
    try:
        c.commit("hashes:1")
        saved = TreeIndex.load(os.path.join(c.dir, "commit.idx"))
        for path in (b"one", b"big", b"big2", b"etc/app/conf"):
            e = saved[path]
            assert e.hash == _core.hash_file(os.path.join(c.upper_dir, os.fsdecode(path))), path
        assert saved[b"etc"].hash is None  # directories have none
    finally:
        c.remove(force=True)
