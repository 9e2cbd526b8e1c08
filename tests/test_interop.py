"""Independent oracles: skopeo, umoci and podman read what the store writes, and the store
imports what they write."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import tempfile

import pytest
from storeutil import SAMPLE, commit_tree, describe, hardlink_groups, make_tree

from snapdiff.store import Store

pytestmark = pytest.mark.needs("root", "mknod")

needs_extractor = pytest.mark.skipif(
    importlib.util.find_spec("snapdiff.extraction") is None,
    reason="needs snapdiff.extraction (branch extract) merged")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (apt-get install {name})", pytrace=False)
    return path


def _run(*argv, **kw) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{argv}: {r.stderr}"
    return r.stdout


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store")


@pytest.fixture
def src(tmp_path):
    return make_tree(str(tmp_path / "src"))


def _umoci_rootfs(layout_ref: str, bundle: str) -> str:
    _run(_tool("umoci"), "unpack", "--image", layout_ref, bundle)
    return os.path.join(bundle, "rootfs")


def test_skopeo_inspects_the_store(store, src):
    img = commit_tree(store, src, name="app:1")
    out = json.loads(_run(_tool("skopeo"), "inspect", f"oci:{store.oci_dir}:app:1"))
    assert out["Digest"] == img.id
    assert out["Layers"] == [d["digest"] for d in img.layers]
    assert out["Os"] == "linux" and out["Architecture"] == "amd64"
    raw = json.loads(_run(_tool("skopeo"), "inspect", "--config",
                          f"oci:{store.oci_dir}:app:1"))
    assert raw["rootfs"]["diff_ids"] == img.diff_ids


def test_umoci_unpacks_the_store_to_the_same_tree(store, src, tmp_path):
    base = commit_tree(store, src, name="base")
    top_src = make_tree(str(tmp_path / "top"), [SAMPLE[1]])
    commit_tree(store, top_src, name="app:1", base=base)
    rootfs = _umoci_rootfs(f"{store.oci_dir}:app:1", str(tmp_path / "bundle"))
    # umoci resets the mtime of the root's parent directories it creates; compare
    # everything else, then the mtimes of files
    assert describe(rootfs, dir_mtimes=False) == describe(src, dir_mtimes=False)
    assert hardlink_groups(rootfs) == hardlink_groups(src) == \
        {frozenset({"usr/bin/ping", "usr/bin/ping6"})}


def test_docker_archive_read_by_skopeo(store, src, tmp_path):
    img = commit_tree(store, src, name="app:1")
    dest = tmp_path / "d.tar"
    store.export("app:1", f"docker-archive:{dest}")
    out = json.loads(_run(_tool("skopeo"), "inspect", f"docker-archive:{dest}"))
    assert out["RepoTags"] == [] or "app" in json.dumps(out)
    cfg = json.loads(_run(_tool("skopeo"), "inspect", "--config", f"docker-archive:{dest}"))
    assert cfg["rootfs"]["diff_ids"] == img.diff_ids
    # and the copy it makes from it unpacks to the same tree
    _run(_tool("skopeo"), "copy", f"docker-archive:{dest}", f"oci:{tmp_path}/copy:c")
    rootfs = _umoci_rootfs(f"{tmp_path}/copy:c", str(tmp_path / "bundle"))
    assert describe(rootfs, dir_mtimes=False) == describe(src, dir_mtimes=False)


def test_docker_archive_loads_in_podman(store, busybox_rootfs, tmp_path):
    commit_tree(store, busybox_rootfs, name="snapdiff-interop:1")
    dest = tmp_path / "d.tar"
    store.export("snapdiff-interop:1", f"docker-archive:{dest}")
    runroot = tempfile.mkdtemp(prefix="sdpod-", dir="/tmp")  # podman wants it short
    podman = [_tool("podman"), "--root", str(tmp_path / "podman"), "--runroot", runroot,
              "--cgroup-manager", "cgroupfs", "--storage-driver", "vfs"]
    try:
        out = _run(*podman, "load", "-i", str(dest))
        assert "snapdiff-interop:1" in out
        images = _run(*podman, "images", "--format", "{{.Repository}}:{{.Tag}}")
        assert "localhost/snapdiff-interop:1" in images.split()
        # podman's own copy of it, saved again, has the same layer content
        _run(*podman, "save", "--format", "oci-archive", "-o", str(tmp_path / "p.tar"),
             "localhost/snapdiff-interop:1")
        cfg = json.loads(_run(_tool("skopeo"), "inspect", "--config",
                              f"oci-archive:{tmp_path}/p.tar"))
        assert cfg["rootfs"]["diff_ids"] == store.image("snapdiff-interop:1").diff_ids
    finally:
        shutil.rmtree(runroot, ignore_errors=True)


@needs_extractor
def test_import_an_image_umoci_made(store, src, tmp_path):
    umoci = _tool("umoci")
    lay = str(tmp_path / "umoci-layout")
    _run(umoci, "init", "--layout", lay)
    _run(umoci, "new", "--image", f"{lay}:u")
    bundle = str(tmp_path / "ub")
    _run(umoci, "unpack", "--image", f"{lay}:u", bundle)
    os.rmdir(os.path.join(bundle, "rootfs")) if not os.listdir(
        os.path.join(bundle, "rootfs")) else None
    subprocess.run(["cp", "-a", "--preserve=all", src, os.path.join(bundle, "rootfs")],
                   check=True)
    _run(umoci, "repack", "--image", f"{lay}:u", bundle)
    _run(umoci, "config", "--image", f"{lay}:u", "--config.cmd", "/bin/true")
    img = store.import_(f"oci:{lay}:u", "from-umoci:1")
    assert img.config["Cmd"] == ["/bin/true"]
    merged = str(tmp_path / "flat.tar")
    store.export("from-umoci:1", merged)
    x = tmp_path / "x"
    x.mkdir()
    _run("tar", "--xattrs", "--xattrs-include=*", "-C", str(x), "-xf", merged)
    # umoci's tars carry whole seconds
    assert describe(str(x), dir_mtimes=False, seconds=True) == \
        describe(src, dir_mtimes=False, seconds=True)
    assert describe(img.lower_dirs[0], dir_mtimes=False, seconds=True) == \
        describe(src, dir_mtimes=False, seconds=True)


@needs_extractor
def test_import_a_skopeo_copy_and_round_trip(store, src, tmp_path):
    commit_tree(store, src, name="app:1")
    # skopeo rewrites it (recompressing nothing, but a fresh manifest) into a new layout
    _run(_tool("skopeo"), "copy", f"oci:{store.oci_dir}:app:1", f"oci:{tmp_path}/sk:x")
    other = Store(tmp_path / "other")
    img = other.import_(f"oci:{tmp_path}/sk:x")
    assert img.name == "x:latest"
    assert describe(img.lower_dirs[0]) == describe(src)
    other.export(img.id, f"oci:{tmp_path}/back")
    again = Store(tmp_path / "third").import_(f"oci:{tmp_path}/back:x:latest")
    assert again.id == img.id
    rootfs = _umoci_rootfs(f"{tmp_path}/back:x:latest", str(tmp_path / "bundle"))
    assert describe(rootfs, dir_mtimes=False) == describe(src, dir_mtimes=False)
