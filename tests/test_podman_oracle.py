"""`snapdiff diff CONTAINER` against `podman diff`, an independent implementation.

The same image goes into both (imported into a snapdiff store, exported as an
oci-archive, `podman load`ed into a private podman storage on the overlay driver), the
same shell script runs in a container of each, and the two diffs are compared.

How podman computes the lines (containers/storage pkg/archive/changes.go `changes` with
changes_linux.go `OverlayChanges`; moby's pkg/archive is the same code): it walks the
container's upper directory only and, for each entry,
  - a whiteout is `D`; an opaque directory that shadows a lower path is also `D`
    (overlayDeletedFile), and the directory itself is not listed otherwise;
  - otherwise `C` if os.Stat(lower/path) succeeds in some lower layer, else `A`; a
    directory whose size, mode and mtime equal the lower one's is skipped (uid, gid and
    xattrs are not compared); a non-directory is never compared: every copy-up is `C`;
  - every ancestor of an `A` or `D` entry is listed as `C`; an ancestor of a `C` entry
    is listed only if it changed itself.

Each scenario pins podman's lines (so a change in the oracle shows up) and then either
asserts snapdiff's lines are equal, or asserts the exact documented difference (`why`),
or is a strict xfail naming a snapdiff bug (`bug`): the day it is fixed, the XPASS fails
and the marker must go.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from conftest import make_busybox_rootfs
from fstree import Dir, File, Symlink, build
from podman_util import Podman, PodmanError

from snapdiff import Store

pytestmark = pytest.mark.needs("root", "mknod", "overlay", "unshare")

SEC = 10**9
BASE_MTIME = 1_600_000_000 * SEC
IMAGE = "localhost/base:1"  # the name podman gives the exported base:1


def _base_tree(root: str) -> None:
    make_busybox_rootfs(root)
    build(root, [
        File("etc/app/conf", b"base\n", mtime=BASE_MTIME),
        File("data/tree/a", b"a\n", mtime=BASE_MTIME),
        File("data/tree/b/c", b"c\n", mtime=BASE_MTIME),
        Symlink("data/link", "tree/a"),
        Symlink("data/abs", "/nonexistent/x"),
        Dir("data/empty", mtime=BASE_MTIME),
        # what podman bind-mounts or links into every container: present in the image, so
        # podman creates nothing in /etc or /run (their mtime would make them `C`)
        File("etc/hosts", b""), File("etc/hostname", b""), File("etc/resolv.conf", b""),
        Symlink("etc/mtab", "/proc/mounts"), File("run/.containerenv", b""),
    ])
    for d in ("etc/app", "data/tree/b", "data/tree", "data", "etc", "run"):
        os.utime(os.path.join(root, d), ns=(BASE_MTIME, BASE_MTIME))


def _setcap(merged: str) -> None:
    subprocess.run(["setcap", "cap_net_raw+ep", os.path.join(merged, "bin/busybox")],
                   check=True)


def _dir_xattr(merged: str) -> None:
    os.setxattr(os.path.join(merged, "data/tree"), "user.origin", b"test")


@dataclass
class Case:
    name: str
    script: str
    podman: list[str] | str            # podman's lines, or the error `podman diff` gives
    snapdiff: list[str] | None = None  # None: the same as podman's
    why: str = ""                      # why snapdiff differs on purpose
    bug: str = ""                      # a snapdiff bug: strict xfail
    host: object = None                # a step on the merged tree after the script


NOOP = ("no-op copy-up: content and metadata equal the lower file, snapdiff drops it "
        "(DESIGN.md commit step 3); podman never compares non-directories, so it is `C`")
DIR_META = ("podman compares directories by size, mode and mtime only, so a directory "
            "whose owner or xattrs changed is invisible to it; snapdiff compares all metadata")

CASES = [
    Case("nothing", "true", []),
    Case("add", "echo new > /newfile", ["A /newfile"]),
    Case("add-deep", "echo z > /data/tree/b/z",
         ["C /data", "C /data/tree", "C /data/tree/b", "A /data/tree/b/z"]),
    Case("modify", "echo changed > /etc/app/conf", ["C /etc/app/conf"]),
    Case("append", "echo more >> /etc/app/conf", ["C /etc/app/conf"]),
    Case("modify-deep", "echo z > /data/tree/b/c", ["C /data/tree/b/c"]),
    Case("chmod", "chmod 600 /etc/app/conf", ["C /etc/app/conf"]),
    Case("chown", "chown 1000:1000 /etc/app/conf", ["C /etc/app/conf"]),
    Case("touch", "touch -d '2021-01-01 00:00:00' /etc/app/conf", ["C /etc/app/conf"]),
    Case("identical-rewrite", "echo base > /etc/app/conf", ["C /etc/app/conf"]),
    Case("chmod-away-and-back", "chmod 600 /etc/app/conf; chmod 644 /etc/app/conf",
         ["C /etc/app/conf"], snapdiff=[], why=NOOP),
    Case("chown-away-and-back", "chown 5:5 /etc/app/conf; chown 0:0 /etc/app/conf",
         ["C /etc/app/conf"], snapdiff=[], why=NOOP),
    Case("dir-chmod", "chmod 700 /data/empty", ["C /data/empty"]),
    Case("dir-touch", "touch -d '2021-01-01 00:00:00' /data/tree", ["C /data/tree"]),
    Case("dir-chown", "chown 5:5 /data/empty", [], snapdiff=["C /data/empty"], why=DIR_META),
    Case("dir-xattr", "true", [], snapdiff=["C /data/tree"], host=_dir_xattr, why=DIR_META),
    Case("setcap", "true", ["C /bin/busybox"], host=_setcap),
    Case("delete-file", "rm /etc/app/conf", ["C /etc", "C /etc/app", "D /etc/app/conf"]),
    Case("delete-tree", "rm -rf /data/tree", ["C /data", "D /data/tree"]),
    Case("delete-recreate-dir", "rm -rf /data/tree && mkdir /data/tree && echo n > /data/tree/n",
         ["C /data", "D /data/tree", "A /data/tree/n"]),
    # /etc/app's mtime changed (it is `C` itself), /etc did not: podman leaves it out
    Case("delete-readd-file", "rm /etc/app/conf && echo base > /etc/app/conf",
         ["C /etc/app", "C /etc/app/conf"]),
    Case("file-to-dir", "rm /etc/app/conf && mkdir /etc/app/conf && echo x > /etc/app/conf/x",
         "not a directory",
         snapdiff=["C /etc", "C /etc/app", "D /etc/app/conf", "A /etc/app/conf/x"],
         why="podman bug: for /etc/app/conf/x its layerScan os.Stat()s lower/etc/app/conf/x, "
             "gets ENOTDIR (conf is a file there) and only tolerates ENOENT: `podman diff` "
             "fails"),
    Case("file-to-empty-dir", "rm /etc/app/conf && mkdir /etc/app/conf",
         ["C /etc", "C /etc/app", "D /etc/app/conf"]),
    Case("dir-to-file", "rm -rf /data/tree && echo f > /data/tree", ["C /data", "C /data/tree"]),
    Case("file-to-symlink", "rm /etc/app/conf && ln -s /etc/passwd /etc/app/conf",
         ["C /etc/app", "C /etc/app/conf"]),
    # mkdir over a whiteout makes an opaque directory
    Case("symlink-to-dir", "rm /data/link && mkdir /data/link", ["C /data", "D /data/link"]),
    Case("dangling-symlink-retarget", "ln -sfn /other /data/abs",
         ["C /data", "A /data/abs"], snapdiff=["C /data", "C /data/abs"],
         why="podman bug: layerScan uses os.Stat, which follows the lower symlink "
             "(/nonexistent/x, resolved on the host): it dangles, so podman calls the "
             "replaced symlink added"),
    Case("rename-file", "mv /etc/app/conf /etc/app/conf2",
         ["C /etc", "C /etc/app", "D /etc/app/conf", "A /etc/app/conf2"]),
    # without redirect_dir, rename(2) of a lower directory is EXDEV: mv copies and deletes
    Case("rename-dir", "mv /data/tree /data/moved",
         ["C /data", "A /data/moved", "A /data/moved/a", "A /data/moved/b",
          "A /data/moved/b/c", "D /data/tree"]),
    Case("hardlink-to-lower", "ln /etc/app/conf /etc/app/hl",
         ["C /etc", "C /etc/app", "C /etc/app/conf", "A /etc/app/hl"]),
    Case("hardlink-pair", "echo u > /u1 && ln /u1 /u2", ["A /u1", "A /u2"]),
    Case("setuid-copy", "cp /bin/busybox /bin/suid && chmod 4755 /bin/suid",
         ["C /bin", "A /bin/suid"]),
    Case("fifo-and-device", "mkfifo /fifo && mknod /nullish c 1 3", ["A /fifo", "A /nullish"]),
]


class Oracle:
    """Runs each scenario once in podman and once in snapdiff; caches the diffs."""

    def __init__(self, store: Store, podman: Podman):
        self.store = store
        self.podman = podman
        self.results: dict[str, tuple[list[str] | str, list[str]]] = {}

    def _podman(self, case: Case) -> list[str] | str:
        name = f"o-{case.name}"
        code = self.podman.run(IMAGE, case.script, name)
        assert code == 0, f"podman: {case.script}: exit {code}"
        if case.host is not None:
            merged = self.podman.mount(name)
            try:
                case.host(merged)
            finally:
                self.podman.umount(name)
        try:  # the containers are removed together at the end (one podman call, not 33)
            return self.podman.diff(name)
        except PodmanError as e:
            return str(e)

    def _snapdiff(self, case: Case) -> list[str]:
        c, code = self.store.run("base:1", ["/bin/sh", "-c", case.script], name=f"o-{case.name}")
        try:
            assert code == 0, c.logs()
            if case.host is not None:
                merged = c.mount()
                try:
                    case.host(merged)
                finally:
                    c.umount()
            return sorted(c.diff().lines(), key=lambda ln: ln[2:])
        finally:
            c.remove(force=True)

    def run_all(self, cases: list[Case]) -> None:
        """podman in a few threads (its commands mostly wait), snapdiff meanwhile, serially."""
        with ThreadPoolExecutor(2) as pool:
            futures = {c.name: pool.submit(self._podman, c) for c in cases}
            snap = {c.name: self._snapdiff(c) for c in cases}
            for c in cases:
                self.results[c.name] = (futures[c.name].result(), snap[c.name])

    def get(self, case: Case) -> tuple[list[str] | str, list[str]]:
        return self.results[case.name]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    from conftest import require

    require("root", "overlay", "unshare")
    root = tmp_path_factory.mktemp("podman-oracle")
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    podman = Podman()
    store = Store(str(root / "store"))
    rootfs = str(root / "rootfs")
    _base_tree(rootfs)
    store.import_(rootfs, "base:1")
    archive = store.export("base:1", f"oci-archive:{root}/base.tar")
    try:
        loaded = podman.load(archive)
        if loaded != IMAGE:
            raise PodmanError(f"podman load: loaded '{loaded}', expected '{IMAGE}'")
        code = podman.run(IMAGE, "true", "probe")
        if code != 0:
            raise PodmanError(f"podman run: 'true' exited with {code}")
    except PodmanError as e:
        podman.close()
        pytest.skip(f"podman cannot run containers here: {e}")
    except BaseException:
        podman.close()
        raise
    o = Oracle(store, podman)
    try:
        o.run_all(CASES)
        yield o
    finally:
        podman.close()
    for c in store.containers.list(all=True):
        c.remove(force=True)


def _params():
    out = []
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case.bug)] if case.bug else []
        out.append(pytest.param(case, marks=marks, id=case.name))
    return out


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_podman_says(oracle, case):
    """The oracle itself: podman's lines for each scenario are what we read in its code."""
    got, _ = oracle.get(case)
    if isinstance(case.podman, str):
        assert isinstance(got, str) and case.podman in got, got
    else:
        assert got == case.podman


@pytest.mark.parametrize("case", _params())
def test_snapdiff_matches_podman(oracle, case):
    podman_lines, snap_lines = oracle.get(case)
    if case.snapdiff is None:
        assert snap_lines == podman_lines
    else:
        assert case.why, f"{case.name}: a difference from podman needs its reason"
        assert snap_lines == case.snapdiff and snap_lines != podman_lines, case.why
