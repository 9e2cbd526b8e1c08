"""The image store: layout, naming, gc, fsck, import/export and failure atomicity."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time

import pytest
from click.testing import CliRunner
from storeutil import SAMPLE, commit_tree, describe, make_tree, tree_hash

from snapdiff import constants as C
from snapdiff.cli import cli
from snapdiff.errors import (
    DigestMismatchError,
    ImageNotFound,
    LayerFormatError,
    StoreError,
    UnsupportedError,
)
from snapdiff.store import Store

pytestmark = pytest.mark.needs("root", "mknod")


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store")


@pytest.fixture
def src(tmp_path):
    return make_tree(str(tmp_path / "src"))


def _index(store):
    with open(store.index_path) as f:
        return json.load(f)


def _blob(store, digest):
    with open(store.blob_path(digest), "rb") as f:
        return f.read()


def _run(store, *args, input=None):
    r = CliRunner().invoke(cli, ["--root", store.root, *args], input=input)
    return r.exit_code, r.output


# --- layout ---------------------------------------------------------------------------

def test_root_selection(tmp_path, monkeypatch):
    monkeypatch.setenv("SNAPDIFF_ROOT", str(tmp_path / "env"))
    assert Store().root == str(tmp_path / "env")
    assert Store(tmp_path / "arg").root == str(tmp_path / "arg")
    monkeypatch.delenv("SNAPDIFF_ROOT")
    assert Store().root == "/var/lib/snapdiff"  # we run as root
    assert not os.path.exists(tmp_path / "arg")  # created on first use only


def test_layout_is_an_oci_layout(store, src):
    img = commit_tree(store, src, name="app:1", created_by="make app")
    with open(os.path.join(store.oci_dir, "oci-layout")) as f:
        assert json.load(f) == {"imageLayoutVersion": "1.0.0"}
    index = _index(store)
    assert index["schemaVersion"] == 2
    [desc] = index["manifests"]
    assert desc["digest"] == img.id
    assert desc["annotations"][C.ANNOTATION_REF_NAME] == "app:1"
    assert desc["mediaType"] == C.MEDIA_TYPE_MANIFEST
    # every blob hashes to its name
    for name in os.listdir(store.blobs_dir):
        with open(os.path.join(store.blobs_dir, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == name
    manifest = json.loads(_blob(store, img.id))
    assert manifest == img.manifest
    assert manifest["config"]["mediaType"] == C.MEDIA_TYPE_CONFIG
    config = json.loads(_blob(store, manifest["config"]["digest"]))
    assert config["rootfs"] == {"type": "layers", "diff_ids": img.diff_ids}
    assert config["os"] == "linux" and config["architecture"] == "amd64"
    assert config["config"]["Cmd"] == ["/bin/sh"]
    assert [h["created_by"] for h in config["history"]] == ["make app"]
    assert img.config == config["config"] and img.config_blob == config
    [layer] = img.layers
    assert layer["mediaType"] == C.MEDIA_TYPE_LAYER_GZIP
    assert layer["size"] == os.path.getsize(store.blob_path(layer["digest"]))
    # unpacked once, with a saved index, and nothing left in tmp
    [lower] = img.lower_dirs
    assert lower == store.layer_dir(img.diff_ids[0])
    assert describe(lower) == describe(src)
    assert os.path.exists(os.path.join(os.path.dirname(lower), "index"))
    assert os.listdir(store.tmp_dir) == []


def test_resolve_by_name_id_prefix(store, src, tmp_path):
    a = commit_tree(store, src, name="app")
    assert a.name == "app:latest"
    assert store.image("app").id == a.id
    assert store.image("app:latest").id == a.id
    assert store.image(a.id).id == a.id
    assert store.image(a.id[7:19]).id == a.id
    assert store.image(a.id[:19]).name == "app:latest"
    with pytest.raises(ImageNotFound, match="no such image"):
        store.image("nope:1")
    with pytest.raises(ImageNotFound):
        store.image("sha256:" + "0" * 64)


def test_lower_dirs_top_first_and_shared(store, src, tmp_path):
    base = commit_tree(store, src, name="base")
    top_src = make_tree(str(tmp_path / "top"), [SAMPLE[1]])
    top = commit_tree(store, top_src, name="top", base=base)
    assert top.diff_ids[0] == base.diff_ids[0]
    assert top.lower_dirs == [store.layer_dir(top.diff_ids[1]), base.lower_dirs[0]]
    assert len(os.listdir(store.layers_dir)) == 2
    assert len(top.config_blob["history"]) == 2


def test_unpack_on_demand(store, src):
    img = commit_tree(store, src, name="app")
    pytest.importorskip("snapdiff.extraction")
    subprocess.run(["rm", "-rf", os.path.dirname(img.lower_dirs[0])], check=True)
    [lower] = store.image("app").lower_dirs
    assert describe(lower) == describe(src)


# --- names ------------------------------------------------------------------------------

def test_tag_and_rmi(store, src):
    img = commit_tree(store, src, name="app:1")
    store.tag("app:1", "app:2")
    assert sorted(r.name for r in store.images()) == ["app:1", "app:2"]
    assert store.image("app:2").id == img.id
    with pytest.raises(StoreError, match="several names"):
        store.rmi(img.id)
    assert store.rmi("app:1") == ["app:1"]
    assert [r.name for r in store.images()] == ["app:2"]
    # blobs stay until gc
    assert os.path.exists(store.blob_path(img.id))
    store.tag("app:2", "other")
    assert sorted(store.rmi(img.id[:12], force=True)) == ["app:2", "other:latest"]
    assert store.images() == []
    with pytest.raises(ImageNotFound):
        store.rmi("app:2")


def test_tag_moves_a_name(store, src, tmp_path):
    a = commit_tree(store, src, name="app")
    b = commit_tree(store, make_tree(str(tmp_path / "b"), [SAMPLE[1]]), name="b")
    store.tag("b", "app")
    assert store.image("app").id == b.id
    assert a.id not in [r.id for r in store.images()]


def test_bad_names_are_refused(store, src):
    with pytest.raises(UnsupportedError, match="not a valid"):
        commit_tree(store, src, name="Bad Name")
    assert _index(store)["manifests"] == []


# --- gc and fsck ------------------------------------------------------------------------

def test_gc_removes_only_unreferenced(store, src, tmp_path):
    base = commit_tree(store, src, name="base")
    top = commit_tree(store, make_tree(str(tmp_path / "top"), [SAMPLE[1]]), name="top",
                      base=base)
    other = commit_tree(store, make_tree(str(tmp_path / "o"), [SAMPLE[2]]), name="other")
    dead = os.path.join(store.tmp_dir, "999999999.deadbeef")
    os.mkdir(dead)
    live = store.tempdir()
    before_blobs = set(os.listdir(store.blobs_dir))
    assert store.gc() == {"blobs": 0, "layers": 0, "tmp": 1, "bytes": 0}
    assert not os.path.exists(dead) and os.path.exists(live)
    assert set(os.listdir(store.blobs_dir)) == before_blobs
    store.rmi("top")
    stats = store.gc()
    # top's manifest, config and layer blob; its unpacked layer
    assert stats["blobs"] == 3 and stats["layers"] == 1
    assert not os.path.exists(store.blob_path(top.id))
    assert not os.path.exists(store.layer_root(top.diff_ids[1]))
    for img in (base, other):
        for d in store.image(img.name).layers:
            assert os.path.exists(store.blob_path(d["digest"]))
        assert all(os.path.isdir(p) for p in store.image(img.name).lower_dirs)
    assert store.fsck() == []


def _image_files(store, img) -> list[str]:
    """The blobs of an image (manifest, config, layers) and its unpacked layer dirs."""
    blobs = [img.id, img.manifest["config"]["digest"]] + [d["digest"] for d in img.layers]
    return [store.blob_path(b) for b in blobs] + [store.layer_root(d) for d in img.diff_ids]


@pytest.mark.needs("root", "mknod", "trusted_xattr", "overlay", "unshare")
def test_gc_keeps_what_containers_use(store, busybox_rootfs):
    base = store.import_(busybox_rootfs, "base:1")
    c, code = store.run("base:1", ["/bin/sh", "-c", "echo x > /x"])
    assert code == 0
    app = c.commit("app:1")
    app_files = [p for p in _image_files(store, app) if p not in _image_files(store, base)]
    plain = store.containers.create(store.image("base:1"), cmd=["true"])
    on_app = store.containers.create(store.image("app:1"), cmd=["true"])
    store.rmi("base:1")
    store.rmi("app:1")
    assert store.images() == []
    stats = store.gc()
    assert stats["blobs"] == 0 and stats["layers"] == 0
    for p in _image_files(store, base) + app_files:
        assert os.path.exists(p), p
    for ctr in (c, plain, on_app):
        assert all(os.path.isdir(d) for d in ctr.lower_dirs)
        merged = ctr.mount()
        assert os.path.exists(os.path.join(merged, "bin/busybox"))
        ctr.umount()
    with open(os.path.join(on_app.mount(), "x"), "rb") as f:
        assert f.read() == b"x\n"
    on_app.umount()
    # c committed app:1: its commit keeps app:1 alive after on_app is gone
    on_app.remove()
    assert store.gc()["blobs"] == 0
    assert all(os.path.exists(p) for p in app_files)
    c.remove()
    stats = store.gc()
    assert stats["blobs"] == 3 and stats["layers"] == 1  # app:1's manifest, config, layer
    assert not any(os.path.exists(p) for p in app_files)
    assert all(os.path.exists(p) for p in _image_files(store, base))  # plain still uses it
    plain.remove()
    stats = store.gc()
    assert stats["blobs"] == 3 and stats["layers"] == 1
    assert os.listdir(store.blobs_dir) == [] and os.listdir(store.layers_dir) == []
    assert store.fsck() == []


def test_gc_refuses_a_container_it_cannot_read(store, src):
    commit_tree(store, src, name="base")
    bad = os.path.join(store.containers_dir, "a" * 64)
    os.makedirs(bad)
    with open(os.path.join(bad, "state.json"), "w") as f:
        f.write("{not json")
    store.rmi("base")
    blobs = set(os.listdir(store.blobs_dir))
    with pytest.raises(StoreError, match=f"gc: container '{'a' * 12}': cannot read state.json"):
        store.gc()
    assert set(os.listdir(store.blobs_dir)) == blobs


def test_gc_and_fsck_with_partial_downloads(store, src):
    import fcntl

    commit_tree(store, src, name="base")
    held = os.path.join(store.blobs_dir, "." + "1" * 64 + ".partial")
    dead = os.path.join(store.blobs_dir, "." + "2" * 64 + ".partial")
    for p in (held, dead):
        with open(p, "wb") as f:
            f.write(b"half a blob")
    assert store.fsck() == []   # temporaries are not blobs
    fd = os.open(held, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)   # what a running pull holds
        assert store.gc()["tmp"] == 1
        assert os.path.exists(held) and not os.path.exists(dead)
    finally:
        os.close(fd)
    assert store.gc()["tmp"] == 1 and not os.path.exists(held)


def test_fsck_finds_a_flipped_byte_in_a_blob(store, src):
    img = commit_tree(store, src, name="app")
    assert store.fsck() == []
    p = store.blob_path(img.layers[0]["digest"])
    data = bytearray(open(p, "rb").read())
    data[len(data) // 2] ^= 0x01
    os.chmod(p, 0o644)
    with open(p, "wb") as f:
        f.write(data)
    problems = store.fsck()
    assert [(pr.kind, pr.subject) for pr in problems] == [("blob", img.layers[0]["digest"])]
    code, out = _run(store, "fsck")
    assert code == 1 and "content hashes to" in out


def test_fsck_finds_a_changed_file_in_an_unpacked_layer(store, src):
    img = commit_tree(store, src, name="app")
    p = os.path.join(img.lower_dirs[0], "etc/passwd")
    st = os.stat(p)
    with open(p, "r+b") as f:
        f.write(b"R")  # same size
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime
    problems = store.fsck()
    assert len(problems) == 1
    assert problems[0].kind == "layer" and "etc/passwd" in problems[0].message
    assert _run(store, "fsck")[0] == 1


def test_cli_images_inspect_history(store, src):
    img = commit_tree(store, src, name="app:1", created_by="make app")
    code, out = _run(store, "images")
    assert code == 0 and "app:1" in out and img.id[7:19] in out
    code, out = _run(store, "inspect", "app:1")
    doc = json.loads(out)
    assert doc["Id"] == img.id and doc["Names"] == ["app:1"]
    assert doc["Layers"][0]["Unpacked"] is True
    code, out = _run(store, "history", "app:1")
    assert code == 0 and "make app" in out
    assert store.history("app:1")[0]["layer"] == img.layers[0]["digest"]
    code, out = _run(store, "inspect", "missing")
    assert code == 2 and out.count("\n") == 1 and "missing" in out
    code, out = _run(store, "tag", "app:1", "app:2")
    assert code == 0
    code, out = _run(store, "rmi", "app:2")
    assert code == 0 and "untagged app:2" in out
    code, out = _run(store, "gc")
    assert code == 0 and "removed 0 blobs" in out


# --- export (no extractor needed) --------------------------------------------------------

def test_export_oci_dir_adds_to_a_layout(store, src, tmp_path):
    a = commit_tree(store, src, name="app:1")
    out = tmp_path / "out"
    store.export("app:1", f"oci:{out}")
    store.export("app:1", f"oci:{out}:other")
    index = json.loads((out / "index.json").read_text())
    names = {m["annotations"][C.ANNOTATION_REF_NAME]: m["digest"] for m in index["manifests"]}
    assert names == {"app:1": a.id, "other": a.id}
    for d, _ in store._image_blobs(a):
        data = (out / "blobs/sha256" / d[7:]).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == d


def test_export_docker_archive_layout(store, src, tmp_path):
    img = commit_tree(store, src, name="app:1")
    dest = tmp_path / "d.tar"
    store.export("app:1", f"docker-archive:{dest}")
    with tarfile.open(dest) as t:
        [entry] = json.load(t.extractfile("manifest.json"))
        assert entry["RepoTags"] == ["app:1"]
        cfg = t.extractfile(entry["Config"]).read()
        assert json.loads(cfg)["rootfs"]["diff_ids"] == img.diff_ids
        layer = t.extractfile(entry["Layers"][0]).read()
        assert "sha256:" + hashlib.sha256(layer).hexdigest() == img.diff_ids[0]


# --- import -----------------------------------------------------------------------------

needs_extractor = pytest.mark.skipif(
    __import__("importlib").util.find_spec("snapdiff.extraction") is None,
    reason="needs snapdiff.extraction (branch extract) merged")


@needs_extractor
def test_import_rootfs_dir_and_tarballs(store, src, tmp_path):
    img = store.import_(src, "fromdir")
    assert describe(img.lower_dirs[0]) == describe(src)
    plain = tmp_path / "r.tar"
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "-C", src, "-cf", str(plain),
                    "."], check=True)
    for path in (plain, ):
        t = store.import_(str(path), "fromtar")
        assert describe(t.lower_dirs[0], dir_mtimes=False) == \
            describe(src, dir_mtimes=False)
        # a rootfs tarball is kept as it is, as the layer blob
        assert t.layers[0]["digest"] == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    gz = tmp_path / "r.tar.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    g = store.import_(str(gz))
    assert g.name is None and g.diff_ids == t.diff_ids
    assert g.layers[0]["mediaType"] == C.MEDIA_TYPE_LAYER_GZIP
    zst = tmp_path / "r.tar.zst"
    subprocess.run(["zstd", "-q", "-o", str(zst), str(plain)], check=True)
    z = store.import_(str(zst), "z")
    assert z.diff_ids == t.diff_ids and z.layers[0]["mediaType"] == C.MEDIA_TYPE_LAYER_ZSTD
    code, out = _run(store, "import", "-", "stdin:1", input=plain.read_bytes())
    assert code == 0, out
    assert store.image("stdin:1").diff_ids == t.diff_ids
    assert store.fsck() == []


@needs_extractor
def test_round_trip_oci_and_archives(store, src, tmp_path):
    img = store.import_(src, "app:1")
    store.export("app:1", f"oci:{tmp_path}/lay")
    store.export("app:1", f"oci-archive:{tmp_path}/a.tar")
    store.export("app:1", f"docker-archive:{tmp_path}/d.tar")
    other = Store(tmp_path / "other")
    a = other.import_(f"oci:{tmp_path}/lay:app:1")
    assert a.id == img.id and a.name == "app:1"
    b = other.import_(f"oci-archive:{tmp_path}/a.tar", "b")
    assert b.id == img.id
    c = other.import_(f"docker-archive:{tmp_path}/d.tar")
    assert c.name == "app:1" and c.diff_ids == img.diff_ids
    for i in (a, b, c):
        assert describe(i.lower_dirs[0]) == describe(src)
    assert other.fsck() == []


@needs_extractor
def test_export_rootfs_flattens(store, src, tmp_path):
    base = store.import_(src, "base")
    top = commit_tree(store, make_tree(str(tmp_path / "t"), [SAMPLE[1]]), name="top",
                      base=base)
    out = tmp_path / "flat.tar"
    store.export(top.id, str(out))
    x = tmp_path / "x"
    x.mkdir()
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "-C", str(x), "-xf", str(out)],
                   check=True)
    assert describe(str(x), dir_mtimes=False) == describe(src, dir_mtimes=False)


# --- bad input leaves the store byte-identical --------------------------------------------

def _oci_copy(store, tmp_path, name="app:1"):
    dest = tmp_path / f"lay-{random.getrandbits(32):x}"
    store.export(name, f"oci:{dest}")
    return dest


def _layer_blob(lay):
    index = json.loads((lay / "index.json").read_text())
    m = json.loads((lay / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    return lay / "blobs/sha256" / m["layers"][0]["digest"][7:]


def _break_wrong_digest(lay, tmp_path):
    p = _layer_blob(lay)
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF
    p.write_bytes(bytes(data))
    return f"oci:{lay}"


def _break_truncated(lay, tmp_path):
    # a truncated gzip with a consistent digest: the descriptor is rewritten to match
    p = _layer_blob(lay)
    data = p.read_bytes()[: len(p.read_bytes()) // 2]
    new = hashlib.sha256(data).hexdigest()
    (lay / "blobs/sha256" / new).write_bytes(data)
    index = json.loads((lay / "index.json").read_text())
    mpath = lay / "blobs/sha256" / index["manifests"][0]["digest"][7:]
    m = json.loads(mpath.read_bytes())
    m["layers"][0].update(digest="sha256:" + new, size=len(data))
    mb = json.dumps(m).encode()
    mh = hashlib.sha256(mb).hexdigest()
    (lay / "blobs/sha256" / mh).write_bytes(mb)
    index["manifests"][0].update(digest="sha256:" + mh, size=len(mb))
    (lay / "index.json").write_text(json.dumps(index))
    return f"oci:{lay}"


def _break_missing_blob(lay, tmp_path):
    _layer_blob(lay).unlink()
    return f"oci:{lay}"


def _not_an_archive(lay, tmp_path):
    p = tmp_path / "junk.tar"
    p.write_bytes(b"this is not a tar archive\n" * 100)
    return str(p)


def _not_an_archive_docker(lay, tmp_path):
    p = tmp_path / "junk2.tar"
    p.write_bytes(b"\x00garbage" * 300)
    return f"docker-archive:{p}"


def _unknown_transport(lay, tmp_path):
    return "docker://example.com/app:1"


def _image_not_found(lay, tmp_path):
    return f"oci:{lay}:nope"


BAD = {
    "wrong digest": (_break_wrong_digest, DigestMismatchError, 1),
    "truncated gzip": (_break_truncated, LayerFormatError, 1),
    "missing blob": (_break_missing_blob, LayerFormatError, 1),
    "not an archive": (_not_an_archive, LayerFormatError, 1),
    "not a docker archive": (_not_an_archive_docker, LayerFormatError, 1),
    "unknown transport": (_unknown_transport, UnsupportedError, 1),
    "image not found": (_image_not_found, ImageNotFound, 2),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_import_leaves_store_identical(store, src, tmp_path, case):
    if case == "truncated gzip" and __import__("importlib").util.find_spec(
            "snapdiff.extraction") is None:
        pytest.skip("needs snapdiff.extraction (branch extract) merged")
    commit_tree(store, src, name="app:1")
    breaker, exc, code = BAD[case]
    spec = breaker(_oci_copy(store, tmp_path), tmp_path)
    before = tree_hash(store.root)
    with pytest.raises(exc):
        store.import_(spec, "new:1")
    assert tree_hash(store.root) == before
    assert os.listdir(store.tmp_dir) == []
    rc, out = _run(store, "import", spec, "new:1")
    assert rc == code and out.startswith("snapdiff: ") and out.count("\n") == 1, out
    assert tree_hash(store.root) == before


# --- crash safety ------------------------------------------------------------------------

_IMPORT = """
import sys
from snapdiff.store import Store
Store(sys.argv[1]).import_(sys.argv[2], "crash:1")
"""


@needs_extractor
def test_sigkill_during_import(store, src, tmp_path, busybox_rootfs):
    commit_tree(store, src, name="app:1")
    source = busybox_rootfs
    rng = random.Random(1234)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    argv = [sys.executable, "-c", _IMPORT]
    t0 = time.monotonic()  # how long a whole import takes here, to kill inside it
    subprocess.run(argv + [str(tmp_path / "scratch"), source], env=env, check=True)
    whole = time.monotonic() - t0
    killed = 0
    # the interpreter's start is a good part of `whole`: aim at the import's own span
    for delay in sorted(rng.uniform(0.3 * whole, 0.9 * whole) for _ in range(6)):
        p = subprocess.Popen(argv + [store.root, source], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        was_killed = p.wait() == -signal.SIGKILL
        killed += was_killed
        assert Store(store.root).fsck() == [], f"after kill at {delay:.2f}s"
        assert store.image("app:1").name == "app:1"
        if not was_killed:  # it finished: undo it, so the next import does all the work
            Store(store.root).rmi("crash:1")
            Store(store.root).gc()
    assert killed >= 3, f"only {killed} of 6 imports were killed before they finished"
    img = Store(store.root).import_(source, "crash:1")
    assert describe(img.lower_dirs[0]) == describe(source)
    Store(store.root).gc()
    assert os.listdir(store.tmp_dir) == []
    assert Store(store.root).fsck() == []


def test_export_oci_archive_and_progress(store, src, tmp_path):
    seen = []
    img = commit_tree(store, src, name="app:1")
    store.export("app:1", f"oci-archive:{tmp_path}/a.tar")
    with tarfile.open(tmp_path / "a.tar") as t:
        names = t.getnames()
    assert "oci-layout" in names and "index.json" in names
    assert f"blobs/sha256/{img.id[7:]}" in names
    store.export("app:1", f"oci:{tmp_path}/p", progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1] > 0
