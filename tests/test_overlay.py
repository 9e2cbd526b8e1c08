"""overlay.py: mounts with the stated options, the check of what the kernel honoured, the
refusal of upper directories made with redirect_dir/metacopy, long layer lists."""

from __future__ import annotations

import errno
import os
import stat

import pytest
from fstree import Dir, File, build

from snapdiff import _core, overlay
from snapdiff.errors import MountError, UnsupportedError

pytestmark = pytest.mark.needs("root", "overlay")

GOOD = ("120 27 0:55 / /c/merged rw,relatime - overlay overlay "
        "rw,lowerdir=/l,upperdir=/c/upper,workdir=/c/work,uuid=on\n")
OFF = {"index": False, "redirect_dir": False, "metacopy": False}


@pytest.fixture
def dirs(tmp_path):
    lower = tmp_path / "lower"
    build(str(lower), [File("etc/motd", b"orig\n"), File("del/me", b"x"),
                       File("data/sub/f", b"f"), Dir("keep")])
    d = {k: str(tmp_path / k) for k in ("upper", "work", "merged")}
    d["lower"] = str(lower)
    yield d
    overlay.umount_overlay(d["merged"])


def _rdev(path):
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode), st.st_rdev


@pytest.mark.parametrize("api", ["fsconfig", "legacy"])
def test_writes_land_in_upper_as_overlay_markers(dirs, api):
    info = overlay.mount_overlay([dirs["lower"]], dirs["upper"], dirs["work"], dirs["merged"],
                                 api=api)
    assert info.fstype == "overlay"
    assert info.super_options["upperdir"] == dirs["upper"]
    m, u = dirs["merged"], dirs["upper"]
    with open(f"{m}/new", "w") as f:
        f.write("new")
    with open(f"{m}/etc/motd", "a") as f:
        f.write("more\n")
    os.unlink(f"{m}/del/me")
    os.unlink(f"{m}/data/sub/f")
    os.rmdir(f"{m}/data/sub")
    os.mkdir(f"{m}/data/sub")
    assert open(f"{u}/new").read() == "new"
    assert open(f"{u}/etc/motd").read() == "orig\nmore\n"          # copied up
    assert open(f"{dirs['lower']}/etc/motd").read() == "orig\n"    # lower untouched
    assert _rdev(f"{u}/del/me") == (True, 0)                       # whiteout 0:0
    assert os.getxattr(f"{u}/data/sub", "trusted.overlay.opaque") == b"y"
    assert not os.path.exists(f"{u}/keep")
    assert overlay.overlay_xattr_prefix(m) == b"trusted.overlay."


def test_userxattr_moves_markers_to_user_namespace(dirs):
    overlay.mount_overlay([dirs["lower"]], dirs["upper"], dirs["work"], dirs["merged"],
                          userxattr=True)
    assert overlay.overlay_xattr_prefix(dirs["merged"]) == b"user.overlay."
    m = dirs["merged"]
    os.unlink(f"{m}/data/sub/f")
    os.rmdir(f"{m}/data/sub")
    os.mkdir(f"{m}/data/sub")
    names = os.listxattr(f"{dirs['upper']}/data/sub")
    assert "user.overlay.opaque" in names and "trusted.overlay.opaque" not in names


def test_many_layers_beyond_page_size(tmp_path):
    # 80 layers with long paths: ~12 KiB of lowerdir, over a 4 KiB page
    lowers = []
    for i in range(80):
        d = tmp_path / ("layer-" + "x" * 120 + f"-{i:03d}")
        build(str(d), [File(f"f{i}", b"%d" % i), File("top", b"%d" % i)])
        lowers.append(str(d))
    lowers.reverse()   # top first: layer 79 is on top
    merged = str(tmp_path / "m")
    with pytest.raises(MountError, match="over the page size"):
        overlay.mount_overlay(lowers, str(tmp_path / "u"), str(tmp_path / "w"), merged,
                              api="legacy")
    assert not overlay.is_mounted(merged)
    overlay.mount_overlay(lowers, str(tmp_path / "u"), str(tmp_path / "w"), merged)
    try:
        assert open(f"{merged}/top").read() == "79"
        assert open(f"{merged}/f0").read() == "0"
        assert len(os.listdir(merged)) == 81
    finally:
        overlay.umount_overlay(merged)


@pytest.mark.parametrize("opt", ["redirect_dir=on", "redirect_dir=follow", "metacopy=on",
                                 "index=on", "metacopy"])
def test_check_refuses_an_option_the_kernel_did_not_honour(opt):
    line = GOOD.replace("uuid=on", f"uuid=on,{opt}")
    with pytest.raises(MountError, match=r"did not honour (index|redirect_dir|metacopy)=off"):
        overlay.check_mount_options(line, defaults=OFF)


def test_check_uses_module_default_for_absent_option():
    overlay.check_mount_options(GOOD, defaults=OFF)
    overlay.check_mount_options(GOOD.replace("uuid=on", "uuid=on,metacopy=off"),
                                defaults=dict(OFF, metacopy=True))
    with pytest.raises(MountError, match="module default is on"):
        overlay.check_mount_options(GOOD, defaults=dict(OFF, redirect_dir=True))
    with pytest.raises(MountError, match="not overlay"):
        overlay.check_mount_options(GOOD.replace("- overlay overlay", "- ext4 /dev/sda"),
                                    defaults=OFF)


def test_mountinfo_parsing_unescapes_and_rejects_garbage():
    info = overlay.parse_mountinfo_line(GOOD.replace("/c/merged", "/a\\040b"))
    assert info.mount_point == "/a b" and info.super_options["lowerdir"] == "/l"
    with pytest.raises(MountError, match="malformed"):
        overlay.parse_mountinfo_line("garbage\n")


@pytest.mark.parametrize("xattr", ["trusted.overlay.redirect", "user.overlay.metacopy",
                                   "trusted.overlay.metacopy"])
def test_upper_with_redirect_or_metacopy_is_refused(dirs, xattr):
    os.makedirs(f"{dirs['upper']}/a/b")
    os.setxattr(f"{dirs['upper']}/a/b", xattr, b"/elsewhere" if "redirect" in xattr else b"")
    with pytest.raises(UnsupportedError, match=f"'a/b' has {xattr}"):
        overlay.mount_overlay([dirs["lower"]], dirs["upper"], dirs["work"], dirs["merged"])
    assert not overlay.is_mounted(dirs["merged"])
    os.removexattr(f"{dirs['upper']}/a/b", xattr)
    overlay.check_upper(dirs["upper"])   # clean again


def test_missing_lower_and_double_mount(dirs, tmp_path):
    with pytest.raises(MountError, match="lower directory '.*nope' does not exist"):
        overlay.mount_overlay([str(tmp_path / "nope")], dirs["upper"], dirs["work"],
                              dirs["merged"])
    overlay.mount_overlay([dirs["lower"]], dirs["upper"], dirs["work"], dirs["merged"])
    with pytest.raises(MountError, match="already mounted"):
        overlay.mount_overlay([dirs["lower"]], dirs["upper"], dirs["work"], dirs["merged"])


def test_overlay_unavailable_is_a_clear_error(dirs, monkeypatch):
    def no_overlay(*a, **kw):
        e = MountError("mount overlay 'm': fsopen 'overlay': No such device")
        e.errno, e.step = errno.ENODEV, "fsopen"
        raise e

    monkeypatch.setattr(_core, "overlay_mount", no_overlay)
    with pytest.raises(MountError, match="^overlayfs is not available: "):
        overlay.mount_overlay([dirs["lower"]], dirs["upper"], dirs["work"], dirs["merged"])


def test_kernel_error_carries_its_message(dirs, tmp_path):
    # a work dir on another filesystem than upper is refused by the kernel itself
    with pytest.raises(MountError) as ei:
        overlay.mount_overlay([dirs["lower"]], dirs["upper"], "/dev/shm", dirs["merged"],
                              api="fsconfig")
    assert ei.value.step.startswith("fsconfig") or ei.value.step == "fsmount"
    assert ei.value.errno is not None


def test_umount_busy_detaches_lazily(dirs):
    overlay.mount_overlay([dirs["lower"]], dirs["upper"], dirs["work"], dirs["merged"])
    f = open(f"{dirs['merged']}/etc/motd")
    cwd = os.getcwd()
    os.chdir(dirs["merged"])
    try:
        assert overlay.umount_overlay(dirs["merged"]) is True
        assert not overlay.is_mounted(dirs["merged"])
        assert f.read() == "orig\n"   # still readable through the detached mount
    finally:
        os.chdir(cwd)
        f.close()
    assert overlay.umount_overlay(dirs["merged"]) is False
