"""Push and pull against a real registry (docker-registry on 127.0.0.1), skopeo as the peer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from registry_fixture import (
    FaultProxy,
    LocalRegistry,
    blob_names,
    build_image,
    make_layer,
    sha256,
    write_blob,
)

from snapdiff import auth, registry
from snapdiff.errors import DigestMismatchError, ImageNotFound, RegistryError

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/docker-registry"),
                                reason="needs docker-registry: /usr/bin/docker-registry missing")


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    r = LocalRegistry(str(tmp_path_factory.mktemp("registry")))
    yield r
    r.stop()


@pytest.fixture
def proxy(reg):
    p = FaultProxy(reg.host)
    yield p
    p.stop()


@pytest.fixture(autouse=True)
def _private_credentials(tmp_path, monkeypatch):
    """Never read or write the real ~/.config/snapdiff or ~/.docker."""
    monkeypatch.setenv("SNAPDIFF_AUTH_FILE", str(tmp_path / "cfg" / "auth.json"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))


BASE_FILES = {"etc/os-release": b"ID=test\n", "bin/tool": os.urandom(200_000),
              "usr/share/doc/readme": b"base layer\n" * 100}


@pytest.fixture(scope="module")
def base_layer():
    return make_layer(BASE_FILES)


def _index_entries(layout: str) -> list:
    with open(os.path.join(layout, "index.json")) as f:
        return json.load(f)["manifests"]


def _no_partials(layout: str) -> bool:
    return not [n for n in blob_names(layout) if n.endswith(".partial") or n.startswith(".tmp")]


def _tree(root: str) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for d, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(d, name), root)] = "dir"
        for name in files:
            p = os.path.join(d, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


def _umoci_tree(layout: str, ref: str, dest: str) -> dict:
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:{ref}", dest], check=True,
                   capture_output=True)
    return _tree(os.path.join(dest, "rootfs"))


# --- references and platforms ------------------------------------------------------

def test_parse_reference():
    r = registry.parse_reference("127.0.0.1:5000/team/app:v1")
    assert (r.registry, r.repository, r.tag, r.digest) == ("127.0.0.1:5000", "team/app", "v1", None)
    d = "sha256:" + "ab" * 32
    r = registry.parse_reference(f"localhost/app@{d}")
    assert (r.registry, r.repository, r.tag, r.digest, r.reference) == ("localhost", "app", None, d, d)
    r = registry.parse_reference("busybox")
    assert (r.registry, r.repository, r.tag) == ("docker.io", "library/busybox", "latest")
    for bad in ("127.0.0.1:5000/Upper/case", "host.io/app:bad tag", "host.io/app@sha256:12", "host.io/"):
        with pytest.raises(ValueError, match="parse reference"):
            registry.parse_reference(bad)


def test_host_platform_is_oci_name():
    import platform
    want = {"x86_64": "linux/amd64", "aarch64": "linux/arm64"}.get(platform.machine())
    if want:
        assert registry.host_platform() == want
    assert registry.host_platform().startswith("linux/")


# --- push and pull -----------------------------------------------------------------

def test_push_then_pull_round_trip(reg, tmp_path, base_layer):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    top = make_layer({"app/main.py": b"print('hi')\n", "etc/os-release": b"ID=changed\n"})
    mdesc = build_image(src, "v1", [base_layer, top])
    pushed = registry.push(src, "v1", f"{reg.host}/rt/app:v1")
    assert pushed.manifest_digest == mdesc["digest"]
    assert len(pushed.uploaded) + len(pushed.skipped) == 3  # config + 2 layers

    seen = []
    res = registry.pull(f"{reg.host}/rt/app:v1", dst, on_blob=lambda d, p: seen.append(d["digest"]))
    assert res.manifest["digest"] == mdesc["digest"]
    assert [d["digest"] for d in res.layers] == [sha256(base_layer[0]), sha256(top[0])]
    assert sorted(seen) == sorted([res.config["digest"]] + [d["digest"] for d in res.layers])
    assert _index_entries(dst) == []          # pull never records the image itself
    registry.record_in_layout(dst, res.manifest, "v1")
    assert [e["digest"] for e in _index_entries(dst)] == [mdesc["digest"]]
    assert blob_names(dst) - {n for n in blob_names(dst) if n.startswith(".")} == blob_names(src)
    for name in blob_names(src):
        with open(os.path.join(src, "blobs/sha256", name), "rb") as a, \
                open(os.path.join(dst, "blobs/sha256", name), "rb") as b:
            assert a.read() == b.read()
    tree_src = _umoci_tree(src, "v1", str(tmp_path / "b1"))
    tree_dst = _umoci_tree(dst, "v1", str(tmp_path / "b2"))
    assert tree_src == tree_dst
    assert tree_dst["etc/os-release"] == b"ID=changed\n" and tree_dst["bin/tool"] == BASE_FILES["bin/tool"]

    again = registry.pull(f"{reg.host}/rt/app:v1", dst)
    assert again.fetched == [] and len(again.reused) == 3


def test_second_image_uploads_only_new_blobs(reg, tmp_path, base_layer):
    src = str(tmp_path / "src")
    build_image(src, "one", [base_layer, make_layer({"a": b"first"})])
    new_layer = make_layer({"b": b"second image only"})
    m2 = build_image(src, "two", [base_layer, new_layer])
    with open(os.path.join(src, "blobs/sha256", m2["digest"][7:])) as f:
        config2 = json.load(f)["config"]["digest"]
    registry.push(src, "one", f"{reg.host}/share/app:one")
    before = len(reg.log_requests())
    calls = []
    r = registry.push(src, "two", f"{reg.host}/share/app:two",
                      trace=lambda m, u, s: calls.append((m, u, s)))
    assert sorted(r.uploaded) == sorted([sha256(new_layer[0]), config2])
    assert r.skipped == [sha256(base_layer[0])] and r.mounted == []
    # the client's view: 2 upload sessions, 2 blob PUTs, 1 manifest PUT
    assert len([c for c in calls if c[0] == "POST"]) == 2
    assert len([c for c in calls if c[0] == "PUT" and "/blobs/uploads/" in c[1]]) == 2
    # the registry's view, from its access log
    log = reg.log_requests()[before:]
    assert len([m for m, p in log if m == "POST" and "/blobs/uploads/" in p]) == 2
    assert len([m for m, p in log if m == "PUT" and "/blobs/uploads/" in p]) == 2
    assert [p for m, p in log if m == "PUT" and "/manifests/" in p] == ["/v2/share/app/manifests/two"]


def test_push_to_other_repo_mounts_blobs(reg, tmp_path, base_layer):
    src = str(tmp_path / "src")
    build_image(src, "v1", [base_layer])
    cache = str(tmp_path / "mounts.json")
    registry.push(src, "v1", f"{reg.host}/mount-a/app:v1", mount_cache=cache)
    before = len(reg.log_requests())
    r = registry.push(src, "v1", f"{reg.host}/mount-b/app:v1", mount_cache=cache)
    assert len(r.mounted) == 2 and r.uploaded == [] and r.skipped == []
    log = reg.log_requests()[before:]
    assert len([p for m, p in log if m == "POST" and "mount=" in p and "from=mount-a" in p]) == 2
    assert not [p for m, p in log if m in ("PUT", "PATCH") and "/blobs/uploads/" in p]
    with open(cache) as f:
        assert sorted(json.load(f)[reg.host][sha256(base_layer[0])]) == ["mount-a/app", "mount-b/app"]


def test_chunked_upload_of_large_blob(reg, tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    big = make_layer({"big": os.urandom(700_000)})
    build_image(src, "v1", [big])
    before = len(reg.log_requests())
    r = registry.push(src, "v1", f"{reg.host}/chunked/app:v1", chunk_size=256 << 10)
    assert sha256(big[0]) in r.uploaded
    patches = [p for m, p in reg.log_requests()[before:] if m == "PATCH"]
    assert len(patches) == 3          # 700 KB in 256 KiB chunks
    res = registry.pull(f"{reg.host}/chunked/app:v1", dst)
    with open(os.path.join(dst, "blobs/sha256", sha256(big[0])[7:]), "rb") as f:
        assert f.read() == big[0]
    assert res.manifest["digest"] == r.manifest_digest


def test_pull_by_digest_and_missing_tag(reg, tmp_path, base_layer):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    m = build_image(src, "v1", [base_layer])
    registry.push(src, "v1", f"{reg.host}/bydigest/app:v1")
    res = registry.pull(f"{reg.host}/bydigest/app@{m['digest']}", dst)
    assert res.manifest["digest"] == m["digest"]
    with pytest.raises(ImageNotFound, match="manifest not found"):
        registry.pull(f"{reg.host}/bydigest/app:nope", dst)
    with pytest.raises(ImageNotFound, match="no such image"):
        registry.push(src, "absent", f"{reg.host}/bydigest/app:x")


def test_multi_platform_index(reg, tmp_path):
    src = str(tmp_path / "src")
    amd = build_image(src, "", [make_layer({"arch": b"amd64"})], arch="amd64", record=False)
    arm = build_image(src, "", [make_layer({"arch": b"arm64"})], arch="arm64", record=False)
    amd["platform"] = {"os": "linux", "architecture": "amd64"}
    arm["platform"] = {"os": "linux", "architecture": "arm64", "variant": "v8"}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [amd, arm]}
    idesc = write_blob(src, json.dumps(index).encode())
    idesc["mediaType"] = index["mediaType"]
    registry.record_in_layout(src, idesc, "multi")
    r = registry.push(src, "multi", f"{reg.host}/multi/app:v1")
    assert r.manifest_digest == idesc["digest"]
    for plat, want in (("linux/arm64", arm), ("linux/arm64/v8", arm), ("linux/amd64", amd)):
        dst = str(tmp_path / plat.replace("/", "_"))
        res = registry.pull(f"{reg.host}/multi/app:v1", dst, platform=plat)
        assert res.manifest["digest"] == want["digest"]
        assert res.manifest["platform"] == want["platform"]
    default = registry.pull(f"{reg.host}/multi/app:v1", str(tmp_path / "host"))
    assert default.manifest["platform"]["architecture"] == registry.host_platform().split("/")[1]
    with pytest.raises(ImageNotFound, match=r"no manifest for platform linux/s390x \(has: linux/amd64, linux/arm64/v8\)"):
        registry.pull(f"{reg.host}/multi/app:v1", str(tmp_path / "x"), platform="linux/s390x")


# --- interoperability with skopeo ---------------------------------------------------

needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo: not on PATH")


def _skopeo(*args: str) -> str:
    p = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout


@needs_skopeo
@pytest.mark.parametrize("fmt", ["oci", "v2s2"])
def test_skopeo_pushes_we_pull(reg, tmp_path, base_layer, fmt):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    build_image(src, "v1", [base_layer, make_layer({"x": fmt.encode()})])
    _skopeo("copy", "--dest-tls-verify=false", "--format", fmt, f"oci:{src}:v1",
            f"docker://{reg.host}/skopeo-{fmt}/app:v1")
    remote = json.loads(_skopeo("inspect", "--tls-verify=false", f"docker://{reg.host}/skopeo-{fmt}/app:v1"))
    res = registry.pull(f"{reg.host}/skopeo-{fmt}/app:v1", dst)
    assert res.manifest["digest"] == remote["Digest"]
    want_type = {"oci": "application/vnd.oci.image.manifest.v1+json",
                 "v2s2": "application/vnd.docker.distribution.manifest.v2+json"}[fmt]
    assert res.manifest["mediaType"] == want_type
    assert [d["digest"] for d in res.layers] == remote["Layers"]
    registry.record_in_layout(dst, res.manifest, "v1")
    if fmt == "oci":  # umoci reads only OCI media types
        assert _umoci_tree(dst, "v1", str(tmp_path / "b1")) == _umoci_tree(src, "v1", str(tmp_path / "b2"))


@needs_skopeo
def test_we_push_skopeo_pulls(reg, tmp_path, base_layer):
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    m = build_image(src, "v1", [base_layer, make_layer({"y": b"ours"})])
    registry.push(src, "v1", f"{reg.host}/ours/app:v1")
    remote = json.loads(_skopeo("inspect", "--tls-verify=false", f"docker://{reg.host}/ours/app:v1"))
    assert remote["Digest"] == m["digest"]
    _skopeo("copy", "--src-tls-verify=false", f"docker://{reg.host}/ours/app:v1", f"oci:{out}:v1")
    local = json.loads(_skopeo("inspect", f"oci:{out}:v1"))
    assert local["Digest"] == m["digest"] and local["Layers"] == remote["Layers"]
    assert blob_names(out) == blob_names(src)


# --- authentication -----------------------------------------------------------------

@pytest.fixture(scope="module")
def auth_reg(tmp_path_factory):
    r = LocalRegistry(str(tmp_path_factory.mktemp("authreg")), users={"alice": "s3cret"})
    yield r
    r.stop()


def test_basic_auth(auth_reg, tmp_path, base_layer):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    build_image(src, "v1", [base_layer])
    dest = f"{auth_reg.host}/private/app:v1"
    with pytest.raises(RegistryError, match=f"authentication required .*snapdiff login {auth_reg.host}"):
        registry.push(src, "v1", dest)
    with pytest.raises(RegistryError, match="access denied as 'alice'"):
        registry.push(src, "v1", dest, auth=("alice", "wrong"))
    with pytest.raises(RegistryError, match="access denied"):
        registry.login(auth_reg.host, "alice", "wrong")
    assert not os.path.exists(auth.auth_file())
    path = registry.login(auth_reg.host, "alice", "s3cret")
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    with open(path) as f:
        assert json.load(f)["auths"][auth_reg.host]["auth"] == "YWxpY2U6czNjcmV0"  # alice:s3cret
    r = registry.push(src, "v1", dest)       # credentials come from the saved file
    res = registry.pull(dest, dst)
    assert res.manifest["digest"] == r.manifest_digest
    assert auth.remove(auth_reg.host) and auth.lookup(auth_reg.host) is None


def test_docker_config_credentials_are_read(auth_reg, tmp_path, base_layer, monkeypatch):
    os.makedirs(tmp_path / "docker")
    with open(tmp_path / "docker" / "config.json", "w") as f:
        json.dump({"auths": {f"https://{auth_reg.host}/v1/": {"auth": "YWxpY2U6czNjcmV0"}}}, f)
    assert auth.lookup(auth_reg.host) == auth.Credentials("alice", "s3cret")
    src = str(tmp_path / "src")
    build_image(src, "v1", [base_layer])
    assert registry.push(src, "v1", f"{auth_reg.host}/fromdocker/app:v1").manifest_digest


def test_bearer_token_auth(reg, tmp_path, base_layer):
    p = FaultProxy(reg.host, bearer=True, users={"bob": "pw"})
    try:
        src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
        build_image(src, "v1", [base_layer, make_layer({"t": b"token"})])
        with pytest.raises(RegistryError, match="token from .*401"):
            registry.push(src, "v1", f"{p.host}/tok/app:v1")
        p.token_requests.clear()
        registry.push(src, "v1", f"{p.host}/tok/app:v1", auth=("bob", "pw"))
        # one token per scope, cached across the push's requests
        assert p.token_requests == ["repository:tok/app:pull,push"]
        res = registry.pull(f"{p.host}/tok/app:v1", dst, auth=("bob", "pw"))
        assert p.token_requests[-1] == "repository:tok/app:pull" and len(p.token_requests) == 2
        assert len(res.fetched) == 3
        assert not [r for r in p.requests if r[2] == 401 and "/blobs/" in r[1]]
    finally:
        p.stop()


# --- failures: nothing recorded, nothing half-written --------------------------------

@pytest.fixture(scope="module")
def big_layer():
    return make_layer({"f": os.urandom(1_500_000)})


@pytest.fixture
def pushed(reg, tmp_path, base_layer, big_layer):
    src = str(tmp_path / "src")
    m = build_image(src, "v1", [base_layer, big_layer])
    registry.push(src, "v1", f"{reg.host}/faulty/app:v1")
    return m


def _assert_clean(dst: str, layer_digest: str) -> None:
    assert _index_entries(dst) == []
    assert _no_partials(dst)
    assert layer_digest[7:] not in blob_names(dst)


@pytest.mark.parametrize("kind,err,msg", [
    ("corrupt", DigestMismatchError, "content hashes to"),
    ("500", RegistryError, r"500 .*after 3 attempts|after 4 attempts"),
    ("truncate", RegistryError, "after 4 attempts|body ended"),
    ("reset", RegistryError, "after 4 attempts|Connection"),
])
def test_faulty_blob_fails_cleanly(proxy, pushed, big_layer, tmp_path, kind, err, msg):
    dst = str(tmp_path / "dst")
    digest = sha256(big_layer[0])
    proxy.add_fault(kind, "GET", f"/blobs/{digest}$")
    with pytest.raises(err, match=msg) as exc:
        registry.pull(f"{proxy.host}/faulty/app:v1", dst, retries=3)
    assert "\n" not in str(exc.value) and str(exc.value).startswith(f"pull '{proxy.host}/faulty/app:v1'")
    _assert_clean(dst, digest)


def test_corrupt_manifest_is_refused(proxy, pushed, tmp_path):
    dst = str(tmp_path / "dst")
    proxy.add_fault("corrupt", "GET", "/manifests/v1$")
    with pytest.raises((DigestMismatchError, RegistryError)):
        registry.pull(f"{proxy.host}/faulty/app:v1", dst)
    assert _index_entries(dst) == [] and pushed["digest"][7:] not in blob_names(dst)


@pytest.mark.parametrize("kind", ["500", "truncate", "reset"])
def test_transient_failure_is_retried(proxy, pushed, big_layer, tmp_path, kind):
    dst = str(tmp_path / "dst")
    digest = sha256(big_layer[0])
    proxy.add_fault(kind, "GET", f"/blobs/{digest}$", times=1)
    res = registry.pull(f"{proxy.host}/faulty/app:v1", dst)
    assert res.manifest["digest"] == pushed["digest"] and digest[7:] in blob_names(dst)
    assert len([r for r in proxy.requests if r[0] == "GET" and r[1].endswith(digest)]) == 2
    if kind == "truncate":   # the second request asked only for what was missing
        assert proxy.ranges and proxy.ranges[-1][1] != "bytes=0-"


def test_push_retries_a_500_then_fails_cleanly(proxy, tmp_path):
    src = str(tmp_path / "src")
    build_image(src, "v1", [make_layer({"p": os.urandom(10_000)})])
    proxy.add_fault("500", "PUT", "/blobs/uploads/", times=1)
    assert registry.push(src, "v1", f"{proxy.host}/pushretry/app:v1").manifest_digest
    proxy.add_fault("500", "PUT", "/manifests/", times=-1)
    with pytest.raises(RegistryError, match="500 .*after 4 attempts"):
        registry.push(src, "v1", f"{proxy.host}/pushretry/app:v2", retries=3)


def test_killed_pull_resumes(proxy, reg, tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    layers = [make_layer({f"l{i}": os.urandom(3 << 20)}, compress=False) for i in range(3)]
    m = build_image(src, "v1", layers, compress=False)
    registry.push(src, "v1", f"{reg.host}/resume/app:v1")
    second = sha256(layers[1][0])
    script = textwrap.dedent(f"""
        import os, signal
        from snapdiff import registry
        def progress(digest, done, total):
            if digest == {second!r} and done >= (1 << 20):
                os.kill(os.getpid(), signal.SIGKILL)
        registry.pull({f"{proxy.host}/resume/app:v1"!r}, {dst!r}, jobs=1, progress=progress)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert p.returncode == -9, p.stderr
    partial = os.path.join(dst, "blobs/sha256", f".{second[7:]}.partial")
    assert os.path.getsize(partial) >= 1 << 20
    assert _index_entries(dst) == []
    proxy.ranges.clear()
    res = registry.pull(f"{proxy.host}/resume/app:v1", dst, jobs=1)
    assert res.manifest["digest"] == m["digest"]
    assert sha256(layers[0][0]) in res.reused and second in res.fetched
    assert [r for p_, r in proxy.ranges if p_.endswith(second)][0].startswith("bytes=")
    assert res.bytes_fetched < sum(len(b) for b, _ in layers[1:]) + 4096
    assert _no_partials(dst)
    for blob, _ in layers:
        with open(os.path.join(dst, "blobs/sha256", sha256(blob)[7:]), "rb") as f:
            assert f.read() == blob


# --- the command line ---------------------------------------------------------------

def _cli(*args: str, stdin: str | None = None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from snapdiff.cli import main; main()", *args],
                          input=stdin, capture_output=True, text=True, env=env)


def test_cli_login_push_pull(auth_reg, tmp_path, base_layer):
    root = str(tmp_path / "store")
    build_image(os.path.join(root, "oci"), "app:v1", [base_layer])
    env = dict(os.environ)
    p = _cli("login", auth_reg.host, "-u", "alice", "--password-stdin", stdin="wrong\n", env=env)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "access denied" in p.stderr
    p = _cli("login", auth_reg.host, "-u", "alice", "--password-stdin", stdin="s3cret\n", env=env)
    assert p.returncode == 0, p.stderr
    p = _cli("--root", root, "push", "app:v1", f"{auth_reg.host}/cli/app:v1", env=env)
    assert p.returncode == 0 and "pushed" in p.stdout and "2 uploaded" in p.stdout, p.stderr
    root2 = str(tmp_path / "store2")
    p = _cli("--root", root2, "pull", f"{auth_reg.host}/cli/app:v1", "copy:v2", env=env)
    assert p.returncode == 0, p.stderr
    names = [e["annotations"]["org.opencontainers.image.ref.name"]
             for e in _index_entries(os.path.join(root2, "oci"))]
    assert names == ["copy:v2"]
    p = _cli("logout", auth_reg.host, env=env)
    assert p.returncode == 0
    p = _cli("--root", root2, "pull", f"{auth_reg.host}/cli/app:v1", env=env)
    assert p.returncode == 1 and p.stderr.startswith("snapdiff: pull ") and "snapdiff login" in p.stderr
    p = _cli("--root", root2, "pull", "127.0.0.1:1/Bad Name", env=env)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "parse reference" in p.stderr
