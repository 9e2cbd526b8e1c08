"""Store.push / Store.pull against a real registry (docker-registry on 127.0.0.1).

An image committed from a real container goes up from one store and comes down into a
fresh one, where its layers are unpacked and a container sees the committed change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from registry_fixture import FaultProxy, LocalRegistry, build_image, make_layer, sha256
from storeutil import tree_hash

from snapdiff import registry
from snapdiff.errors import DigestMismatchError, ImageNotFound, UnsupportedError
from snapdiff.store import Store

pytestmark = [
    pytest.mark.needs("root", "mknod", "trusted_xattr", "overlay", "unshare"),
    pytest.mark.skipif(not os.path.exists("/usr/bin/docker-registry"),
                       reason="needs docker-registry: /usr/bin/docker-registry missing"),
]


@pytest.fixture(autouse=True)
def _private_credentials(tmp_path, monkeypatch):
    """Never read or write the real ~/.config/snapdiff or ~/.docker."""
    monkeypatch.setenv("SNAPDIFF_AUTH_FILE", str(tmp_path / "cfg" / "auth.json"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    r = LocalRegistry(str(tmp_path_factory.mktemp("registry")))
    yield r
    r.stop()


@pytest.fixture(scope="module")
def src_store(tmp_path_factory):
    """base:1 (busybox), app:1 (base + /x) and app:2 (base + /y), both committed."""
    from conftest import make_busybox_rootfs, require

    require("root", "overlay", "unshare")
    root = tmp_path_factory.mktemp("src")
    store = Store(str(root / "store"))
    store.import_(make_busybox_rootfs(str(root / "rootfs")), "base:1")
    for name, cmd in (("app:1", "echo x > /x"), ("app:2", "echo y > /y")):
        c, code = store.run("base:1", ["/bin/sh", "-c", cmd])
        assert code == 0
        c.commit(name)
        c.remove(force=True)
    yield store


def _index_bytes(store: Store) -> bytes:
    with open(store.index_path, "rb") as f:
        return f.read()


def _blob_gets(reg: LocalRegistry, since: int) -> list[str]:
    return [p for m, p in reg.log_requests()[since:] if m == "GET" and "/blobs/" in p]


def _read_in_container(store: Store, image, path: str) -> bytes:
    c = store.containers.create(image, cmd=["true"])
    try:
        merged = c.mount()
        with open(os.path.join(merged, path.lstrip("/")), "rb") as f:
            return f.read()
    finally:
        c.umount()
        c.remove()


def test_push_then_pull_into_a_fresh_store(reg, src_store, tmp_path):
    app = src_store.image("app:1")
    r = src_store.push("app:1", f"{reg.host}/wire/app:1")
    assert r.manifest_digest == app.id
    assert sorted(r.uploaded + r.skipped) == sorted(
        {app.manifest["config"]["digest"]} | {d["digest"] for d in app.layers})

    store2 = Store(tmp_path / "fresh")
    seen = []
    img = store2.pull(f"{reg.host}/wire/app:1", progress=lambda d, t: seen.append((d, t)))
    assert img.id == app.id and img.name == "wire/app:1"
    assert img.diff_ids == app.diff_ids
    assert seen and seen[-1][0] == seen[-1][1] == sum(d["size"] for d in app.layers) + \
        app.manifest["config"]["size"]
    # every layer unpacked, identical to the source store's unpacked layer
    src_dirs = dict(zip(app.diff_ids, app.lower_dirs[::-1], strict=True))  # unpacks lazies
    for did in img.diff_ids:
        assert os.path.isdir(store2.layer_dir(did)) and os.listdir(src_dirs[did])
        assert tree_hash(store2.layer_dir(did)) == tree_hash(src_dirs[did])
    assert [m["digest"] for m in json.loads(_index_bytes(store2))["manifests"]] == [app.id]
    assert _read_in_container(store2, store2.image("wire/app:1"), "/x") == b"x\n"
    assert store2.containers.list(all=True) == []
    assert store2.fsck() == []


def test_second_image_uploads_only_its_new_layer_and_config(reg, src_store):
    app1, app2 = src_store.image("app:1"), src_store.image("app:2")
    assert app1.layers[0] == app2.layers[0] and app1.layers[1] != app2.layers[1]
    src_store.push("app:1", f"{reg.host}/share/app:1")
    before = len(reg.log_requests())
    r = src_store.push("app:2", f"{reg.host}/share/app:2")
    assert sorted(r.uploaded) == sorted([app2.layers[1]["digest"],
                                         app2.manifest["config"]["digest"]])
    assert r.skipped == [app2.layers[0]["digest"]] and r.mounted == []
    assert r.bytes_uploaded == app2.layers[1]["size"] + app2.manifest["config"]["size"]
    log = reg.log_requests()[before:]   # the registry's own view
    assert len([p for m, p in log if m == "PUT" and "/blobs/uploads/" in p]) == 2
    assert [p for m, p in log if m == "PUT" and "/manifests/" in p] == \
        ["/v2/share/app/manifests/2"]


def test_pull_twice_fetches_nothing_the_second_time(reg, src_store, tmp_path):
    src_store.push("app:1", f"{reg.host}/twice/app:1")
    store2 = Store(tmp_path / "fresh")
    first = store2.pull(f"{reg.host}/twice/app:1", "mine:1")
    assert len(first.transfer.fetched) == 3
    index, layers = _index_bytes(store2), sorted(os.listdir(store2.layers_dir))
    before = len(reg.log_requests())
    again = store2.pull(f"{reg.host}/twice/app:1", "mine:1")
    assert again.id == first.id and again.name == "mine:1"
    assert again.transfer.fetched == [] and again.transfer.bytes_fetched == 0
    assert _blob_gets(reg, before) == []
    assert _index_bytes(store2) == index and sorted(os.listdir(store2.layers_dir)) == layers
    # the same image under a second name: one more index entry, still nothing fetched
    third = store2.pull(f"{reg.host}/twice/app:1", "other:2")
    assert third.transfer.fetched == [] and _blob_gets(reg, before) == []
    assert sorted(r.name for r in store2.images()) == ["mine:1", "other:2"]


def test_pull_failing_midway_records_nothing_and_a_rerun_resumes(reg, src_store, tmp_path):
    app = src_store.image("app:2")
    src_store.push("app:2", f"{reg.host}/midway/app:2")
    top = app.layers[1]["digest"]
    proxy = FaultProxy(reg.host)
    try:
        proxy.add_fault("corrupt", "GET", f"/blobs/{top}$")
        store2 = Store(tmp_path / "fresh")
        with pytest.raises(DigestMismatchError, match=f"pull '.*': blob {top}: content hashes"):
            store2.pull(f"{proxy.host}/midway/app:2", jobs=1)
        assert store2.images() == []
        assert json.loads(_index_bytes(store2))["manifests"] == []
        assert os.listdir(store2.layers_dir) == []
        assert not os.path.exists(store2.blob_path(top))
        assert os.listdir(store2.tmp_dir) == []
        assert store2.fsck() == []
        proxy.clear()
        img = store2.pull(f"{proxy.host}/midway/app:2")
        assert img.id == app.id and img.name == "midway/app:2"
        assert img.transfer.fetched == [top]        # config and base kept from the failed run
        assert app.layers[0]["digest"] in img.transfer.reused
        assert _read_in_container(store2, img, "/y") == b"y\n"
        assert store2.fsck() == []
    finally:
        proxy.stop()


def test_layer_that_is_not_its_diff_id_is_refused(reg, tmp_path):
    """Blobs verify, but the config lies about a layer: nothing recorded, nothing unpacked."""
    layout = str(tmp_path / "layout")
    blob, _ = make_layer({"etc/hello": b"hi\n"})
    build_image(layout, "liar", [(blob, sha256(b"something else"))])
    registry.push(layout, "liar", f"{reg.host}/liar/app:1")
    store = Store(tmp_path / "store")
    with pytest.raises(DigestMismatchError, match="diff_id|hashes to"):
        store.pull(f"{reg.host}/liar/app:1")
    assert store.images() == [] and os.listdir(store.layers_dir) == []
    assert os.listdir(store.tmp_dir) == []
    # the verified blob stays (a re-run would not fetch it) until gc
    assert os.path.exists(store.blob_path(sha256(blob)))
    assert store.gc()["blobs"] >= 2 and not os.path.exists(store.blob_path(sha256(blob)))


def test_pull_names(reg, src_store, tmp_path):
    app = src_store.image("app:1")
    src_store.push("app:1", f"{reg.host}/team/names:v9")
    store = Store(tmp_path / "store")
    assert store.pull(f"{reg.host}/team/names@{app.id}").name is None
    assert store.pull(f"{reg.host}/team/names:v9").name == "team/names:v9"
    assert store.pull(f"{reg.host}/team/names:v9", "local/copy:3").name == "local/copy:3"
    with pytest.raises(UnsupportedError, match="image name 'Bad Name'"):
        store.pull(f"{reg.host}/team/names:v9", "Bad Name")
    with pytest.raises(ImageNotFound, match="manifest not found"):
        store.pull(f"{reg.host}/team/names:absent")
    assert sorted(r.name or "" for r in store.images()) == ["local/copy:3", "team/names:v9"]
    assert {r.id for r in store.images()} == {app.id}


def test_cli_push_pull(reg, src_store, tmp_path):
    env = dict(os.environ)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "snapdiff", *args], capture_output=True,
                              text=True, env=env)

    p = cli("--root", src_store.root, "push", "app:1", f"{reg.host}/cli/app:1")
    assert p.returncode == 0 and "pushed" in p.stdout, p.stderr
    root2 = str(tmp_path / "store2")
    p = cli("--root", root2, "pull", f"{reg.host}/cli/app:1")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == src_store.image("app:1").id
    assert Store(root2).image("cli/app:1").id == src_store.image("app:1").id
    p = cli("--root", root2, "push", "nope:1", f"{reg.host}/cli/app:2")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "nope:1" in p.stderr
    p = cli("logout", reg.host)
    assert p.returncode == 1 and p.stderr == f"snapdiff: logout '{reg.host}': not logged in\n"
