"""Shared fixtures and capability probes.

A test that needs a privilege declares it with ``@pytest.mark.needs("mknod", ...)``.
Each capability is probed once per session by trying the real operation; the test is
skipped with the errno the probe got.  With SNAPDIFF_REQUIRE_ROOT=1 (as CI sets it) a
missing capability fails the test instead of skipping it.
"""

from __future__ import annotations

import errno
import functools
import os
import subprocess
import sys
import tempfile

import pytest

REQUIRE_ROOT = os.environ.get("SNAPDIFF_REQUIRE_ROOT") == "1"
sys.path.insert(0, os.path.dirname(__file__))


def _errname(e: OSError) -> str:
    return f"{errno.errorcode.get(e.errno, e.errno)}"


def _probe_root() -> str | None:
    return None if os.geteuid() == 0 else f"needs root: euid is {os.geteuid()}"


def _probe_mknod() -> str | None:
    with tempfile.TemporaryDirectory() as d:
        try:
            os.mknod(os.path.join(d, "c"), 0o600 | 0o020000, os.makedev(0, 0))
        except OSError as e:
            return f"needs CAP_MKNOD: mknod(c 0 0): {_errname(e)}"
    return None


def _probe_trusted_xattr() -> str | None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("SNAPDIFF_TEST_TMP")) as d:
        try:
            os.setxattr(d, "trusted.snapdiff.probe", b"y")
        except OSError as e:
            return f"needs trusted.* xattrs (CAP_SYS_ADMIN): setxattr: {_errname(e)}"
    return None


def _probe_user_xattr() -> str | None:
    with tempfile.TemporaryDirectory() as d:
        try:
            os.setxattr(d, "user.snapdiff.probe", b"y")
        except OSError as e:
            return f"needs user.* xattrs on the test filesystem: setxattr: {_errname(e)}"
    return None


def _probe_overlay() -> str | None:
    with tempfile.TemporaryDirectory() as d:
        for sub in ("l", "u", "w", "m"):
            os.mkdir(os.path.join(d, sub))
        opts = f"lowerdir={d}/l,upperdir={d}/u,workdir={d}/w"
        r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, f"{d}/m"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return f"needs overlayfs mounts: mount -t overlay: {r.stderr.strip()}"
        subprocess.run(["umount", f"{d}/m"], check=False)
    return None


def _probe_unshare() -> str | None:
    r = subprocess.run(["unshare", "--mount", "--pid", "--fork", "--uts", "--ipc", "--net",
                        "true"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"needs new namespaces: unshare: {r.stderr.strip()}"
    return None


_PROBES = {
    "root": _probe_root,
    "mknod": _probe_mknod,
    "trusted_xattr": _probe_trusted_xattr,
    "user_xattr": _probe_user_xattr,
    "overlay": _probe_overlay,
    "unshare": _probe_unshare,
}


@functools.cache
def probe(cap: str) -> str | None:
    """None when the capability is there, else the reason it is not."""
    if cap not in _PROBES:
        raise ValueError(f"unknown capability {cap!r}")
    return _PROBES[cap]()


def require(*caps: str) -> None:
    """Skip (or, under SNAPDIFF_REQUIRE_ROOT=1, fail) unless every capability is there."""
    for cap in caps:
        reason = probe(cap)
        if reason is not None:
            if REQUIRE_ROOT:
                pytest.fail(f"SNAPDIFF_REQUIRE_ROOT=1 but {reason}", pytrace=False)
            pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers(name="needs"):
        require(*mark.args)


@pytest.fixture
def tmp(tmp_path):
    """A temporary directory on the same filesystem as the store tests use."""
    return tmp_path


BUSYBOX = "/bin/busybox"


def make_busybox_rootfs(root: str) -> str:
    """A tiny runnable root filesystem: busybox-static and its applet links."""
    import shutil

    if not os.path.exists(BUSYBOX):
        pytest.fail("busybox-static is not installed (apt-get install busybox-static)",
                    pytrace=False)
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root", "var/log"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    shutil.copy2(BUSYBOX, os.path.join(root, "bin/busybox"))
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for a in applets:
        p = os.path.join(root, "bin", a)
        if not os.path.lexists(p):
            os.symlink("busybox", p)
    with open(os.path.join(root, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    with open(os.path.join(root, "etc/group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\n")
    return root


@pytest.fixture
def busybox_rootfs(tmp_path) -> str:
    return make_busybox_rootfs(str(tmp_path / "busybox-rootfs"))
