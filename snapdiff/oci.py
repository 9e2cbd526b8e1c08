"""Image interchange formats: references, transports, OCI layouts and archives, docker-archive.

This module parses and writes formats; it holds no store policy.  Readers turn a source
(``oci:DIR[:REF]``, ``oci-archive:FILE[:REF]``, ``docker-archive:FILE[:REF]``) into an
:class:`ImageSource`: the config, the original manifest when there is one worth keeping, and
one :class:`LayerSource` per layer with the digests the source claims.  The store copies,
verifies and unpacks them (store.py); nothing here trusts a claimed digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from snapdiff import constants as C
from snapdiff.errors import (
    DigestMismatchError,
    ImageNotFound,
    LayerFormatError,
    UnsupportedError,
)

__all__ = [
    "Transport", "parse_transport", "normalize_name", "check_digest", "ImageSource",
    "LayerSource", "read_oci_layout", "read_oci_archive", "read_docker_archive",
    "detect_compression", "media_type_for", "diff_id_of", "host_platform", "CHUNK",
]

CHUNK = 1 << 20
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
# a reference per the distribution spec, loosely: path components, optional tag
_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-]+[a-z0-9]+|/[a-z0-9]+)*"
                      r"(?:(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*)?$")
_HOST_NAME_RE = re.compile(r"^[A-Za-z0-9.-]+(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)+$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

TRANSPORTS = ("oci", "oci-archive", "docker-archive", "rootfs", "dir")


# --- names and digests ---------------------------------------------------------------

def normalize_name(ref: str) -> str:
    """``name`` -> ``name:latest``; ``name:tag`` stays; validates both parts."""
    name, tag = ref, "latest"
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1:]
    if not name or not (_NAME_RE.match(name) or _HOST_NAME_RE.match(name)):
        raise UnsupportedError(f"image name '{ref}': not a valid name (lower-case letters, "
                               "digits, '.', '_', '-', '/' components)")
    if not _TAG_RE.match(tag):
        raise UnsupportedError(f"image name '{ref}': not a valid tag '{tag}'")
    return f"{name}:{tag}"


def check_digest(digest: object, what: str) -> str:
    """A digest we are willing to turn into a path: sha256 and 64 lower-case hex digits."""
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        if isinstance(digest, str) and ":" in digest and not digest.startswith("sha256:"):
            raise UnsupportedError(f"{what}: digest algorithm of '{digest}' is not supported "
                                   "(only sha256)")
        raise LayerFormatError(f"{what}: not a valid sha256 digest: {digest!r}")
    return digest


@dataclass(frozen=True)
class Transport:
    """``kind:path[:ref]``; kind is one of TRANSPORTS ('dir' is a rootfs directory)."""

    kind: str
    path: str
    ref: str | None = None


def parse_transport(spec: str, *, for_export: bool = False) -> Transport:
    """Split ``oci:DIR[:REF]`` and friends.  A spec with no known prefix is a path: a
    directory (rootfs dir), or a file (rootfs tarball; for export, a path ending in .tar*)."""
    if spec == "-":
        return Transport("rootfs", "-")
    head, sep, rest = spec.partition(":")
    if sep and head in ("oci", "oci-archive", "docker-archive"):
        path, _, ref = rest.partition(":")
        if not path:
            raise UnsupportedError(f"transport '{spec}': no path after '{head}:'")
        return Transport(head, path, ref or None)
    if sep and head == "rootfs":
        if not rest:
            raise UnsupportedError(f"transport '{spec}': no path after 'rootfs:'")
        return Transport("rootfs", rest)
    if sep and re.match(r"^[a-z][a-z0-9+-]*$", head) and not os.path.lexists(spec):
        raise UnsupportedError(f"transport '{spec}': unknown transport '{head}' "
                               "(known: oci, oci-archive, docker-archive, rootfs)")
    if for_export:
        return Transport("rootfs", spec)
    if os.path.isdir(spec):
        return Transport("dir", spec)
    return Transport("rootfs", spec)


def host_platform() -> tuple[str, str]:
    machine = platform.machine()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)
    return "linux", arch


# --- compression ---------------------------------------------------------------------

def detect_compression(head: bytes, what: str) -> str:
    """'gzip', 'zstd' or 'none' from the first bytes; a clear error for anything else."""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        raise UnsupportedError(f"{what}: bzip2/xz compression is not supported "
                               "(use gzip, zstd or none)")
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "none"
    if len(head) >= 1024 and head[:1024] == bytes(1024):
        return "none"  # an empty tar: two zero blocks
    raise LayerFormatError(f"{what}: not a tar archive (nor gzip or zstd compressed)")


def media_type_for(compression: str) -> str:
    return C.LAYER_MEDIA_TYPES[compression]


_LAYER_TYPES = {
    C.MEDIA_TYPE_LAYER: "none", C.MEDIA_TYPE_LAYER_GZIP: "gzip",
    C.MEDIA_TYPE_LAYER_ZSTD: "zstd", C.DOCKER_MEDIA_TYPE_LAYER: "none",
    C.DOCKER_MEDIA_TYPE_LAYER_GZIP: "gzip",
}


def compression_of_media_type(media_type: str, what: str) -> str:
    if media_type not in _LAYER_TYPES:
        if "nondistributable" in media_type or "foreign" in media_type:
            raise UnsupportedError(f"{what}: non-distributable layer '{media_type}' "
                                   "is not supported")
        raise UnsupportedError(f"{what}: unknown layer media type '{media_type}'")
    return _LAYER_TYPES[media_type]


def _decompressing_reader(f: BinaryIO, compression: str) -> BinaryIO:
    if compression == "gzip":
        from isal import igzip

        return igzip.IGzipFile(fileobj=f, mode="rb")
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
    return f


def diff_id_of(path: str | os.PathLike, *, what: str = "layer") -> str:
    """sha256 of the uncompressed tar stream of a layer blob (its diff_id)."""
    return decompress_to(path, None, what=what)


def decompress_to(src: str | os.PathLike, dest: BinaryIO | None, *, what: str) -> str:
    """Write the uncompressed tar of a layer blob to ``dest`` (None: only hash it);
    returns its sha256."""
    with open(src, "rb") as f:
        compression = detect_compression(f.read(1024), what)
        f.seek(0)
        h = hashlib.sha256()
        try:
            r = _decompressing_reader(f, compression)
            while chunk := r.read(CHUNK):
                h.update(chunk)
                if dest is not None:
                    dest.write(chunk)
        except (EOFError, OSError, ValueError) as e:
            if isinstance(e, OSError) and e.errno is not None:
                raise  # a real I/O error (disk full, EIO): not the blob's fault
            raise LayerFormatError(f"{what}: corrupt {compression} stream: {e}") from None
        return "sha256:" + h.hexdigest()


# --- sources -------------------------------------------------------------------------

@dataclass
class LayerSource:
    """One layer as a source offers it; the claims are verified by the store."""

    open: Callable[[], BinaryIO]
    what: str
    size: int | None = None
    digest: str | None = None       # claimed digest of the bytes as stored
    diff_id: str | None = None      # claimed sha256 of the uncompressed tar
    media_type: str | None = None   # None: from the bytes


@dataclass
class ImageSource:
    layers: list[LayerSource]
    config: bytes | None = None          # the config blob as stored (kept byte for byte)
    config_digest: str | None = None     # claimed digest of `config`
    config_template: dict | None = None  # when there is no config: one to complete
    history_template: list[dict] = field(default_factory=list)
    manifest: bytes | None = None        # an OCI manifest to keep byte for byte
    manifest_digest: str | None = None
    name: str | None = None              # the name the source gives the image
    annotations: dict = field(default_factory=dict)


class _Files:
    """Read access to the files of a layout: a directory or a tar archive."""

    def __init__(self, label: str):
        self.label = label

    def read(self, rel: str, *, limit: int = 64 << 20) -> bytes:
        with self.open(rel) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise LayerFormatError(f"{self.label}: '{rel}' is too large for metadata")
        return data

    def read_json(self, rel: str):
        try:
            return json.loads(self.read(rel))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LayerFormatError(f"{self.label}: '{rel}' is not valid JSON: {e}") from None

    def open(self, rel: str) -> BinaryIO:
        raise NotImplementedError

    def exists(self, rel: str) -> bool:
        raise NotImplementedError

    def size(self, rel: str) -> int:
        raise NotImplementedError

    def close(self) -> None:
        return None


class _DirFiles(_Files):
    def __init__(self, root: str):
        super().__init__(root)
        self.root = root

    def _path(self, rel: str) -> str:
        rel = os.path.normpath(rel)
        if rel.startswith(("/", "..")):
            raise LayerFormatError(f"{self.label}: path '{rel}' leaves the layout")
        return os.path.join(self.root, rel)

    def open(self, rel: str) -> BinaryIO:
        try:
            return open(self._path(rel), "rb")
        except FileNotFoundError:
            raise LayerFormatError(f"{self.label}: missing '{rel}'") from None

    def exists(self, rel: str) -> bool:
        return os.path.isfile(self._path(rel))

    def size(self, rel: str) -> int:
        return os.stat(self._path(rel)).st_size


class _TarFiles(_Files):
    def __init__(self, path: str):
        super().__init__(path)
        try:
            self.tar = tarfile.open(path, "r:*")
            self.members = {}
            for m in self.tar:
                name = os.path.normpath(m.name).lstrip("/")
                self.members[name] = m
        except tarfile.TarError as e:
            raise LayerFormatError(f"archive '{path}': not a readable tar archive: {e}") from None
        except (EOFError, OSError) as e:
            if isinstance(e, OSError) and e.errno is not None:
                raise
            raise LayerFormatError(f"archive '{path}': truncated or corrupt: {e}") from None

    def _member(self, rel: str) -> tarfile.TarInfo:
        m = self.members.get(os.path.normpath(rel))
        depth = 0
        while m is not None and (m.issym() or m.islnk()) and depth < 8:
            target = m.linkname if m.islnk() else os.path.join(os.path.dirname(m.name),
                                                               m.linkname)
            m = self.members.get(os.path.normpath(target).lstrip("/"))
            depth += 1
        if m is None or not m.isfile():
            raise LayerFormatError(f"{self.label}: missing '{rel}'")
        return m

    def open(self, rel: str) -> BinaryIO:
        return self.tar.extractfile(self._member(rel))

    def exists(self, rel: str) -> bool:
        try:
            self._member(rel)
        except LayerFormatError:
            return False
        return True

    def size(self, rel: str) -> int:
        return self._member(rel).size

    def close(self) -> None:
        self.tar.close()


def _blob_rel(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


def _diff_ids_of(config: bytes, label: str) -> list:
    """The rootfs.diff_ids of an image config (LayerFormatError when it has none)."""
    try:
        return json.loads(config)["rootfs"]["diff_ids"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise LayerFormatError(f"{label}: config has no rootfs.diff_ids ({e})") from None


def _read_verified(files: _Files, desc: dict, what: str) -> bytes:
    digest = check_digest(desc.get("digest"), what)
    data = files.read(_blob_rel(digest))
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != digest:
        raise DigestMismatchError(f"{what} '{digest}': content hashes to {got}")
    if "size" in desc and desc["size"] != len(data):
        raise DigestMismatchError(f"{what} '{digest}': size is {len(data)}, "
                                  f"descriptor says {desc['size']}")
    return data


def _pick_manifest(files: _Files, index: dict, ref: str | None, label: str) -> dict:
    manifests = index.get("manifests")
    if not isinstance(manifests, list):
        raise LayerFormatError(f"{label}: index.json has no 'manifests' list")
    if ref is None:
        if len(manifests) != 1:
            names = [m.get("annotations", {}).get(C.ANNOTATION_REF_NAME) for m in manifests]
            raise ImageNotFound(f"{label}: holds {len(manifests)} images "
                                f"({', '.join(str(n) for n in names)}): name one with :REF")
        return manifests[0]
    candidates = {ref}
    try:
        candidates.add(normalize_name(ref))
    except UnsupportedError:
        pass
    for m in manifests:
        if m.get("annotations", {}).get(C.ANNOTATION_REF_NAME) in candidates:
            return m
        if m.get("digest") == ref:
            return m
    raise ImageNotFound(f"{label}: no image named '{ref}'")


def _resolve_platform(files: _Files, desc: dict, label: str, depth: int = 0) -> tuple[dict, bytes]:
    """Follow image indexes to the manifest for this host's platform."""
    data = _read_verified(files, desc, f"{label}: manifest")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LayerFormatError(f"{label}: manifest is not valid JSON: {e}") from None
    mt = doc.get("mediaType") or desc.get("mediaType")
    if mt in (C.MEDIA_TYPE_INDEX, C.DOCKER_MEDIA_TYPE_MANIFEST_LIST) or "manifests" in doc:
        if depth > 4:
            raise LayerFormatError(f"{label}: image indexes nested too deep")
        want_os, want_arch = host_platform()
        for m in doc.get("manifests", []):
            p = m.get("platform", {})
            if p.get("os") == want_os and p.get("architecture") == want_arch:
                return _resolve_platform(files, m, label, depth + 1)
        raise ImageNotFound(f"{label}: no image for platform {want_os}/{want_arch}")
    return doc, data


def _oci_image(files: _Files, ref: str | None, label: str) -> ImageSource:
    layout = files.read_json("oci-layout") if files.exists("oci-layout") else None
    if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
        raise LayerFormatError(f"{label}: not an OCI image layout (no valid oci-layout file)")
    index = files.read_json("index.json")
    if not isinstance(index, dict):
        raise LayerFormatError(f"{label}: index.json is not an object")
    desc = _pick_manifest(files, index, ref, label)
    manifest, mbytes = _resolve_platform(files, desc, label)
    cdesc = manifest.get("config")
    if not isinstance(cdesc, dict):
        raise LayerFormatError(f"{label}: manifest has no config descriptor")
    config = _read_verified(files, cdesc, f"{label}: config")
    diff_ids = _diff_ids_of(config, label)
    ldescs = manifest.get("layers") or []
    if len(ldescs) != len(diff_ids):
        raise LayerFormatError(f"{label}: manifest has {len(ldescs)} layers but config "
                               f"lists {len(diff_ids)} diff_ids")
    layers = []
    for i, (ld, did) in enumerate(zip(ldescs, diff_ids, strict=True)):
        what = f"{label}: layer {i}"
        digest = check_digest(ld.get("digest"), what)
        compression_of_media_type(ld.get("mediaType", ""), what)
        rel = _blob_rel(digest)
        if not files.exists(rel):
            raise LayerFormatError(f"{what}: missing blob '{digest}'")
        layers.append(LayerSource(open=lambda rel=rel: files.open(rel), what=what,
                                  size=ld.get("size"), digest=digest,
                                  diff_id=check_digest(did, what), media_type=ld["mediaType"]))
    keep = manifest.get("mediaType", C.MEDIA_TYPE_MANIFEST) == C.MEDIA_TYPE_MANIFEST and \
        cdesc.get("mediaType") == C.MEDIA_TYPE_CONFIG
    name = desc.get("annotations", {}).get(C.ANNOTATION_REF_NAME)
    return ImageSource(layers=layers, config=config, config_digest=cdesc["digest"],
                       manifest=mbytes if keep else None,
                       manifest_digest="sha256:" + hashlib.sha256(mbytes).hexdigest(),
                       name=name)


def read_oci_layout(path: str, ref: str | None) -> ImageSource:
    if not os.path.isdir(path):
        raise ImageNotFound(f"oci layout '{path}': no such directory")
    return _oci_image(_DirFiles(path), ref, f"oci layout '{path}'")


def _open_archive(path: str, kind: str) -> _TarFiles:
    if path != "-" and not os.path.isfile(path):
        raise ImageNotFound(f"{kind} '{path}': no such file")
    return _TarFiles(path)


def read_oci_archive(path: str, ref: str | None) -> tuple[ImageSource, _Files]:
    files = _open_archive(path, "oci-archive")
    try:
        return _oci_image(files, ref, f"oci-archive '{path}'"), files
    except BaseException:
        files.close()
        raise


def _hex_of_path(rel: str) -> str | None:
    base = os.path.basename(rel)
    if base.endswith(".json"):
        base = base[:-5]
    return base if re.fullmatch(r"[0-9a-f]{64}", base) else None


def read_docker_archive(path: str, ref: str | None) -> tuple[ImageSource, _Files]:
    """A ``docker save`` archive: manifest.json (Config, RepoTags, Layers), or the legacy
    layout (repositories + <id>/json + <id>/layer.tar) when there is no manifest.json."""
    files = _open_archive(path, "docker-archive")
    label = f"docker-archive '{path}'"
    try:
        if files.exists("manifest.json"):
            return _docker_manifest_image(files, ref, label), files
        if files.exists("repositories"):
            return _docker_legacy_image(files, ref, label), files
        raise LayerFormatError(f"{label}: no manifest.json or repositories: not a docker "
                               "save archive")
    except BaseException:
        files.close()
        raise


def _docker_manifest_image(files: _Files, ref: str | None, label: str) -> ImageSource:
    entries = files.read_json("manifest.json")
    if not isinstance(entries, list) or not entries:
        raise LayerFormatError(f"{label}: manifest.json is not a non-empty list")
    entry = None
    if ref is None:
        if len(entries) != 1:
            raise ImageNotFound(f"{label}: holds {len(entries)} images: name one with :REF "
                                "or :@N")
        entry = entries[0]
    elif ref.startswith("@") and ref[1:].isdigit():
        if int(ref[1:]) >= len(entries):
            raise ImageNotFound(f"{label}: no image number {ref[1:]}")
        entry = entries[int(ref[1:])]
    else:
        want = normalize_name(ref)
        for e in entries:
            tags = [normalize_name(t) for t in e.get("RepoTags") or []]
            if want in tags:
                entry = e
                break
        if entry is None:
            raise ImageNotFound(f"{label}: no image named '{ref}'")
    cfg_rel = entry.get("Config")
    if not isinstance(cfg_rel, str):
        raise LayerFormatError(f"{label}: manifest.json entry has no Config")
    config = files.read(cfg_rel)
    got = "sha256:" + hashlib.sha256(config).hexdigest()
    hexname = _hex_of_path(cfg_rel)
    if hexname is not None and got != "sha256:" + hexname:
        raise DigestMismatchError(f"{label}: config '{cfg_rel}': content hashes to {got}")
    diff_ids = _diff_ids_of(config, label)
    rels = entry.get("Layers") or []
    if len(rels) != len(diff_ids):
        raise LayerFormatError(f"{label}: {len(rels)} layers but config lists "
                               f"{len(diff_ids)} diff_ids")
    layers = []
    for i, (rel, did) in enumerate(zip(rels, diff_ids, strict=True)):
        what = f"{label}: layer {i} '{rel}'"
        check_digest(did, what)
        if not files.exists(rel):
            raise LayerFormatError(f"{what}: missing")
        hx = _hex_of_path(rel) if rel.startswith("blobs/") else None
        digest = f"sha256:{hx}" if hx else None
        layers.append(LayerSource(open=lambda rel=rel: files.open(rel), what=what,
                                  size=files.size(rel), digest=digest, diff_id=did))
    tags = entry.get("RepoTags") or []
    name = normalize_name(tags[0]) if tags else None
    if ref is not None and not ref.startswith("@"):
        name = normalize_name(ref)
    return ImageSource(layers=layers, config=config, config_digest=got, name=name)


def _docker_legacy_image(files: _Files, ref: str | None, label: str) -> ImageSource:
    repos = files.read_json("repositories")
    if not isinstance(repos, dict):
        raise LayerFormatError(f"{label}: repositories is not an object")
    flat = {f"{r}:{t}": i for r, tags in repos.items() for t, i in tags.items()}
    if ref is None:
        if len(flat) != 1:
            raise ImageNotFound(f"{label}: holds {len(flat)} images: name one with :REF")
        name, top = next(iter(flat.items()))
    else:
        name = normalize_name(ref)
        top = flat.get(name) or {normalize_name(k): v for k, v in flat.items()}.get(name)
        if top is None:
            raise ImageNotFound(f"{label}: no image named '{ref}'")
    chain = []
    lid, seen = top, set()
    while lid:
        if not re.fullmatch(r"[0-9a-f]{64}", str(lid)) or lid in seen:
            raise LayerFormatError(f"{label}: bad layer id '{lid}'")
        seen.add(lid)
        meta = files.read_json(f"{lid}/json")
        chain.append((lid, meta))
        lid = meta.get("parent")
    chain.reverse()
    top_meta = chain[-1][1]
    os_, arch = host_platform()
    template = {
        "architecture": top_meta.get("architecture", arch),
        "os": top_meta.get("os", os_),
        "config": top_meta.get("config") or {},
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    if top_meta.get("created"):
        template["created"] = top_meta["created"]
    history = []
    layers = []
    for i, (lid, meta) in enumerate(chain):
        rel = f"{lid}/layer.tar"
        what = f"{label}: layer {i} '{rel}'"
        if not files.exists(rel):
            raise LayerFormatError(f"{what}: missing")
        cc = (meta.get("container_config") or {}).get("Cmd") or []
        h = {"created_by": " ".join(cc)} if cc else {}
        if meta.get("created"):
            h["created"] = meta["created"]
        history.append(h)
        layers.append(LayerSource(open=lambda rel=rel: files.open(rel), what=what,
                                  size=files.size(rel)))
    return ImageSource(layers=layers, config_template=template, history_template=history,
                       name=name)


# --- writing layouts -----------------------------------------------------------------

def empty_index() -> dict:
    return {"schemaVersion": 2, "mediaType": C.MEDIA_TYPE_INDEX, "manifests": []}


def oci_layout_bytes() -> bytes:
    return json.dumps({"imageLayoutVersion": C.MEDIA_TYPE_LAYOUT_HEADER}).encode()


def canonical_json(doc) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def index_with(index: dict, desc: dict, name: str | None) -> dict:
    """index.json with `desc` added under `name`, taking the name from any other entry."""
    out = [m for m in index.get("manifests", [])
           if name is None or m.get("annotations", {}).get(C.ANNOTATION_REF_NAME) != name]
    if name is not None:
        out = [m for m in out if not (m.get("digest") == desc["digest"]
                                      and not m.get("annotations", {}).get(C.ANNOTATION_REF_NAME))]
    elif any(m.get("digest") == desc["digest"] for m in out):
        return dict(index, manifests=out)
    new = dict(desc)
    if name is not None:
        new["annotations"] = dict(desc.get("annotations", {}), **{C.ANNOTATION_REF_NAME: name})
    out.append(new)
    return dict(index, manifests=out)


def tar_add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int = 0) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = 0o644
    ti.mtime = mtime
    tar.addfile(ti, io.BytesIO(data))


def tar_add_dir(tar: tarfile.TarFile, name: str, mtime: int = 0) -> None:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mode = 0o755
    ti.mtime = mtime
    tar.addfile(ti)
