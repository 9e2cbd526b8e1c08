"""The image store: an OCI image layout plus each layer unpacked once for overlay use.

On disk (``root`` from the argument, ``$SNAPDIFF_ROOT``, ``/var/lib/snapdiff`` for root,
``~/.local/share/snapdiff`` otherwise)::

    oci/                 a real OCI image layout: oci-layout, index.json, blobs/sha256/<hex>
                         each image a manifest descriptor in index.json, its name ("name:tag")
                         in the org.opencontainers.image.ref.name annotation
    layers/<hex>/diff/   the layer whose diff_id is sha256:<hex>, unpacked for overlay use
                         (whiteouts as char 0:0, opaque dirs as trusted.overlay.opaque=y);
                         read-only by convention, shared by every image using the layer
    layers/<hex>/index   its saved TreeIndex, when the core provides one
    containers/          owned by snapdiff.containers
    tmp/<pid>.<rand>     temporaries, on the same filesystem so they can be renamed into place
    lock                 writers hold flock(LOCK_EX) on it

Readers take no lock.  They never see a half-written object because every blob, layer
directory and index.json is written under tmp/ and renamed into place, index.json last,
after syncfs().  A crash leaves at worst unreferenced blobs, layers and tmp entries, which
``gc`` removes and ``fsck`` does not count as problems.

A rootfs tarball is imported as it is: the tarball (plain, gzip or zstd) becomes the layer
blob unchanged, after the safe extractor unpacked it; a tarball the extractor refuses (``..``,
absolute links escaping, bad whiteouts) is refused.  A rootfs directory becomes one layer
written by ``layers.write_layer`` over ``layers.tree_items``.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from snapdiff import constants as C
from snapdiff import oci
from snapdiff.errors import (
    DigestMismatchError,
    ImageNotFound,
    LayerFormatError,
    SnapdiffError,
    StoreError,
    UnsupportedError,
)
from snapdiff.fsutil import atomic_write
from snapdiff.index import TreeIndex, layer_snapshot
from snapdiff.treediff import diff

__all__ = ["Store", "Image", "ImageRecord", "StoredLayer", "Problem", "default_root"]

Progress = Callable[[int, int], None]
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def default_root() -> str:
    env = os.environ.get("SNAPDIFF_ROOT")
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/lib/snapdiff"
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(data, "snapdiff")


def _now_rfc3339() -> str:
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if sde and sde.isdigit():
        t = datetime.datetime.fromtimestamp(int(sde), datetime.UTC)
    else:
        t = datetime.datetime.now(datetime.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_libc = None


def _syncfs(path: str) -> None:
    """Flush the store's filesystem once (cheaper than fsync on every unpacked file)."""
    global _libc
    if _libc is None:
        # the C library is already in the process: no find_library (it runs ldconfig)
        _libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"syncfs '{path}': {os.strerror(e)}")
    finally:
        os.close(fd)


def _rmtree(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _copy_hashing(src: BinaryIO, dest: str, *, progress: Progress | None = None,
                  done: int = 0, total: int = 0) -> tuple[str, int]:
    """Copy a stream to a new file, fsync it; returns (sha256 digest, size)."""
    h = hashlib.sha256()
    n = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    with open(fd, "wb") as out:
        while True:
            try:
                chunk = src.read(oci.CHUNK)
            except (EOFError, tarfile.ReadError) as e:
                raise LayerFormatError(f"read '{dest}': truncated source: {e}") from None
            if not chunk:
                break
            h.update(chunk)
            out.write(chunk)
            n += len(chunk)
            if progress is not None:
                progress(done + n, max(total, done + n))
        out.flush()
        os.fsync(out.fileno())
    return "sha256:" + h.hexdigest(), n


@dataclass(frozen=True)
class ImageRecord:
    """One line of ``images()``: a manifest in index.json under one name (or none)."""

    id: str
    name: str | None
    created: str | None
    size: int
    layers: int


@dataclass(frozen=True)
class StoredLayer:
    """A layer blob in the store and its unpacked directory."""

    digest: str
    diff_id: str
    size: int
    media_type: str
    path: str
    dir: str


@dataclass(frozen=True)
class Problem:
    """One thing fsck found wrong: kind ('blob', 'layer', 'manifest', 'index'), subject."""

    kind: str
    subject: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind} '{self.subject}': {self.message}"


class Image:
    """An image of the store, resolved from a name or id.

    ``lower_dirs`` are the unpacked layer directories, TOP layer first, as overlayfs wants
    them; a layer not unpacked yet is unpacked (under the store lock) on first access."""

    def __init__(self, store: Store, digest: str, name: str | None, manifest: dict,
                 config_blob: dict, manifest_size: int):
        self.store = store
        self.id = digest
        self.name = name
        self.manifest = manifest
        self.config_blob = config_blob
        self.manifest_size = manifest_size

    @property
    def config(self) -> dict:
        return self.config_blob.get("config") or {}

    @property
    def layers(self) -> list[dict]:
        return list(self.manifest.get("layers") or [])

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config_blob.get("rootfs", {}).get("diff_ids") or [])

    @property
    def created(self) -> str | None:
        return self.config_blob.get("created")

    @property
    def size(self) -> int:
        return sum(int(d.get("size", 0)) for d in self.layers)

    @property
    def lower_dirs(self) -> list[str]:
        dirs = [self.store.ensure_unpacked(d["digest"], did)
                for d, did in zip(self.layers, self.diff_ids, strict=True)]
        return dirs[::-1]

    def __repr__(self) -> str:
        return f"<Image {self.name or '<none>'} {self.id[:19]}>"


@dataclass
class _Staged:
    digest: str
    diff_id: str
    size: int
    media_type: str
    blob: str                 # the blob under tmp/
    layer_dir: str | None     # tmp/<stage>/layer-i (diff/, index) or None: already stored
    extra: dict = field(default_factory=dict)
    lazy: bool = False        # not unpacked yet: Image.lower_dirs unpacks it on first use


class Store:
    """The image store.  Every option is keyword-only; long operations take
    ``progress(done_bytes, total_bytes)``."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = os.path.abspath(os.fspath(root) if root is not None else default_root())
        self.oci_dir = os.path.join(self.root, "oci")
        self.blobs_dir = os.path.join(self.oci_dir, "blobs", "sha256")
        self.layers_dir = os.path.join(self.root, "layers")
        self.tmp_dir = os.path.join(self.root, "tmp")
        self.containers_dir = os.path.join(self.root, "containers")
        self.index_path = os.path.join(self.oci_dir, "index.json")
        self.lock_path = os.path.join(self.root, "lock")
        self._lock_fd: int | None = None
        self._lock_depth = 0
        self._ready = False

    def __repr__(self) -> str:
        return f"<Store {self.root}>"

    # --- layout, lock, temporaries ------------------------------------------------------

    def _ensure(self) -> None:
        """Create the layout on first use (idempotent, safe against concurrent creators)."""
        if self._ready:
            return
        try:
            for d in (self.root, self.blobs_dir, self.layers_dir, self.tmp_dir,
                      self.containers_dir):
                os.makedirs(d, exist_ok=True)
            layout = os.path.join(self.oci_dir, "oci-layout")
            if not os.path.exists(layout):
                self._atomic_write(layout, oci.oci_layout_bytes())
            if not os.path.exists(self.index_path):
                self._atomic_write(self.index_path, oci.canonical_json(oci.empty_index()))
            if not os.path.exists(self.lock_path):
                os.close(os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC,
                                 0o644))
        except OSError as e:
            raise StoreError(f"store '{self.root}': cannot create: {e.strerror}") from None
        self._ready = True

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the writers' lock (re-entrant within this Store object)."""
        self._ensure()
        if self._lock_depth == 0:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self._lock_fd = fd
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                assert self._lock_fd is not None
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    def tempdir(self) -> str:
        """A new directory under tmp/, named for this process so gc can tell live ones.
        The caller removes it (see ``staging``)."""
        self._ensure()
        path = os.path.join(self.tmp_dir, f"{os.getpid()}.{os.urandom(6).hex()}")
        os.mkdir(path, 0o700)
        return path

    @contextlib.contextmanager
    def staging(self) -> Iterator[str]:
        """A temporary directory under tmp/ that is removed whatever happens."""
        path = self.tempdir()
        try:
            yield path
        finally:
            _rmtree(path)

    @staticmethod
    def _atomic_write(dest: str, data: bytes) -> None:
        atomic_write(dest, data)

    # --- objects ------------------------------------------------------------------------

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.blobs_dir, oci.check_digest(digest, "blob").split(":", 1)[1])

    def layer_root(self, diff_id: str) -> str:
        return os.path.join(self.layers_dir,
                            oci.check_digest(diff_id, "layer").split(":", 1)[1])

    def layer_dir(self, diff_id: str) -> str:
        """Where the layer is (or will be) unpacked for overlay use."""
        return os.path.join(self.layer_root(diff_id), "diff")

    def _read_blob(self, digest: str, what: str) -> bytes:
        try:
            with open(self.blob_path(digest), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise StoreError(f"{what} '{digest}': blob missing from the store "
                             "(run snapdiff fsck)") from None

    def _put_blob_bytes(self, data: bytes) -> str:
        """Write a small blob (config, manifest) into place; caller holds the lock."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        dest = self.blob_path(digest)
        if not os.path.exists(dest):
            self._atomic_write(dest, data)
        return digest

    def _read_index(self) -> dict:
        try:
            with open(self.index_path, "rb") as f:
                index = json.loads(f.read())
        except FileNotFoundError:
            return oci.empty_index()
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StoreError(f"store '{self.root}': index.json is corrupt: {e}") from None
        if not isinstance(index.get("manifests"), list):
            raise StoreError(f"store '{self.root}': index.json has no manifests list")
        return index

    def _write_index(self, index: dict) -> None:
        """Replace index.json atomically, after everything it references is durable."""
        _syncfs(self.root)
        self._atomic_write(self.index_path, oci.canonical_json(index))

    def _unpack_into(self, blob: str, dest_root: str, *, diff_id: str | None,
                     digest: str) -> str:
        """Unpack a blob for overlay use into dest_root/diff (+ dest_root/index), verifying
        its digest and diff_id (when known); returns the diff_id."""
        from snapdiff.extraction import extract_layer_to_new_dir

        os.makedirs(dest_root, exist_ok=True)
        diff = os.path.join(dest_root, "diff")
        res = extract_layer_to_new_dir(blob, diff, overlay=True, expect_diff_id=diff_id,
                                       expect_digest=digest)
        self._save_index(dest_root)
        return res.diff_id

    @staticmethod
    def _save_index(layer_root: str) -> None:
        """Save the TreeIndex of layer_root/diff (every file hashed) as layer_root/index.
        Overlay markers (opaque directories) are recorded as entry flags, as commit reads
        them."""
        layer_snapshot(os.path.join(layer_root, "diff")).save(os.path.join(layer_root, "index"))

    def ensure_unpacked(self, digest: str, diff_id: str) -> str:
        """The layer's overlay directory, unpacking it from its blob if it is missing."""
        d = self.layer_dir(diff_id)
        if os.path.isdir(d):
            return d
        with self.lock():
            if os.path.isdir(d):
                return d
            blob = self.blob_path(digest)
            if not os.path.exists(blob):
                raise StoreError(f"layer '{diff_id}': neither unpacked nor its blob "
                                 f"'{digest}' is in the store")
            with self.staging() as stage:
                tmp_root = os.path.join(stage, "layer")
                self._unpack_into(blob, tmp_root, diff_id=diff_id, digest=digest)
                _syncfs(self.root)
                os.rename(tmp_root, self.layer_root(diff_id))
        return d

    # --- reading images -----------------------------------------------------------------

    def _entries(self) -> list[dict]:
        return list(self._read_index().get("manifests", []))

    def _load(self, digest: str, name: str | None) -> Image:
        mbytes = self._read_blob(digest, "manifest")
        try:
            manifest = json.loads(mbytes)
            config = json.loads(self._read_blob(manifest["config"]["digest"], "config"))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise StoreError(f"image '{name or digest}': manifest or config is corrupt: "
                             f"{e}") from None
        return Image(self, digest, name, manifest, config, len(mbytes))

    def images(self) -> list[ImageRecord]:
        out = []
        for m in self._entries():
            img = self._load(m["digest"], m.get("annotations", {}).get(C.ANNOTATION_REF_NAME))
            out.append(ImageRecord(img.id, img.name, img.created, img.size, len(img.layers)))
        return out

    def _resolve(self, ref: str) -> tuple[str, str | None, bool]:
        """(digest, name, by_name) for a name[:tag], a full id or an unambiguous id prefix."""
        if not isinstance(ref, str) or not ref:
            raise ImageNotFound("image '': no image name or id given")
        entries = self._entries()

        def names_of(digest: str) -> list[str]:
            return [n for m in entries if m.get("digest") == digest
                    and (n := m.get("annotations", {}).get(C.ANNOTATION_REF_NAME))]

        with contextlib.suppress(UnsupportedError):
            want = oci.normalize_name(ref)
            for m in entries:
                if m.get("annotations", {}).get(C.ANNOTATION_REF_NAME) == want:
                    return m["digest"], want, True
        hexpart = ref[7:] if ref.startswith("sha256:") else ref
        if hexpart and all(c in "0123456789abcdef" for c in hexpart):
            found = sorted({m["digest"] for m in entries
                            if m.get("digest", "").startswith("sha256:" + hexpart)})
            if len(found) == 1:
                names = names_of(found[0])
                return found[0], (names[0] if names else None), False
            if len(found) > 1:
                raise ImageNotFound(f"image '{ref}': ambiguous id prefix "
                                    f"({len(found)} images match)")
        raise ImageNotFound(f"image '{ref}': no such image in store '{self.root}'")

    def image(self, ref: str) -> Image:
        try:
            digest, name, _ = self._resolve(ref)
        except ImageNotFound:
            # an image is content-addressed: a full id still names an untagged manifest the
            # store keeps (say, for a container whose image was removed with rmi)
            if ref.startswith("sha256:") and len(ref) == 71 and \
                    os.path.exists(self.blob_path(ref)):
                return self._load(ref, None)
            raise
        return self._load(digest, name)

    def inspect(self, ref: str) -> dict:
        img = self.image(ref)
        names = [m.get("annotations", {}).get(C.ANNOTATION_REF_NAME)
                 for m in self._entries() if m.get("digest") == img.id]
        return {
            "Id": img.id,
            "Names": sorted(n for n in names if n),
            "Created": img.created,
            "Architecture": img.config_blob.get("architecture"),
            "Os": img.config_blob.get("os"),
            "Size": img.size,
            "Config": img.config,
            "RootFS": img.config_blob.get("rootfs"),
            "Layers": [{"Digest": d["digest"], "DiffID": did, "Size": d.get("size"),
                        "MediaType": d.get("mediaType"),
                        "Unpacked": os.path.isdir(self.layer_dir(did))}
                       for d, did in zip(img.layers, img.diff_ids, strict=False)],
            "Manifest": img.manifest,
            "ConfigBlob": img.config_blob,
        }

    def history(self, ref: str) -> list[dict]:
        """One entry per history item, newest first, with the size of its layer (0 if empty)."""
        img = self.image(ref)
        layers = iter(zip(img.layers, img.diff_ids, strict=False))
        out = []
        for h in img.config_blob.get("history") or []:
            item = {"created": h.get("created"), "created_by": h.get("created_by", ""),
                    "comment": h.get("comment", ""), "empty_layer": bool(h.get("empty_layer")),
                    "size": 0, "layer": None}
            if not h.get("empty_layer"):
                nxt = next(layers, None)
                if nxt is not None:
                    item["size"] = int(nxt[0].get("size", 0))
                    item["layer"] = nxt[0]["digest"]
            out.append(item)
        return out[::-1]

    # --- naming -------------------------------------------------------------------------

    def tag(self, ref: str, new: str) -> Image:
        new_name = oci.normalize_name(new)
        with self.lock():
            digest, _, _ = self._resolve(ref)
            desc = next(m for m in self._entries() if m.get("digest") == digest)
            desc = {k: v for k, v in desc.items() if k != "annotations"}
            self._write_index(oci.index_with(self._read_index(), desc, new_name))
        return self._load(digest, new_name)

    def rmi(self, ref: str, *, force: bool = False) -> list[str]:
        """Remove a name (``name:tag``) or, given an id, every entry of that image (with
        several names, only with ``force``).  Blobs stay until ``gc``.  Returns what was
        removed: names, or the id for an unnamed entry."""
        with self.lock():
            digest, name, by_name = self._resolve(ref)
            index = self._read_index()
            manifests = index["manifests"]
            if by_name:
                keep = [m for m in manifests
                        if m.get("annotations", {}).get(C.ANNOTATION_REF_NAME) != name]
            else:
                mine = [m for m in manifests if m.get("digest") == digest]
                names = [m.get("annotations", {}).get(C.ANNOTATION_REF_NAME) for m in mine]
                named = [n for n in names if n]
                if len(named) > 1 and not force:
                    raise StoreError(f"rmi '{ref}': image has several names "
                                     f"({', '.join(sorted(named))}): remove them by name "
                                     "or use --force")
                keep = [m for m in manifests if m.get("digest") != digest]
            removed = [m.get("annotations", {}).get(C.ANNOTATION_REF_NAME) or m["digest"]
                       for m in manifests if m not in keep]
            self._write_index(dict(index, manifests=keep))
        return removed

    untag = rmi

    # --- writing images -----------------------------------------------------------------

    def _stage_layer(self, stage: str, i: int, blob: str, *, digest: str, size: int,
                     media_type: str | None, diff_id: str | None, what: str) -> _Staged:
        """Check a layer blob copied under tmp/ and unpack it there if the store lacks it."""
        with open(blob, "rb") as f:
            compression = oci.detect_compression(f.read(1024), what)
        if media_type is not None:
            declared = oci.compression_of_media_type(media_type, what)
            if declared != compression:
                raise LayerFormatError(f"{what}: media type '{media_type}' says {declared} "
                                       f"but the blob is {compression}")
        else:
            media_type = oci.media_type_for(compression)
        if diff_id is None and compression == "none":
            diff_id = digest
        layer_dir = None
        if diff_id is not None and os.path.isdir(self.layer_dir(oci.check_digest(diff_id, what))):
            # already unpacked: only check that this blob really is that layer
            got = digest if compression == "none" else oci.diff_id_of(blob, what=what)
            if got != diff_id:
                raise DigestMismatchError(f"{what}: uncompressed content hashes to {got}, "
                                          f"expected diff_id {diff_id}")
        else:
            layer_dir = os.path.join(stage, f"layer-{i}")
            diff_id = self._unpack_into(blob, layer_dir, diff_id=diff_id, digest=digest)
        return _Staged(digest, diff_id, size, media_type, blob, layer_dir)

    def _publish_layers(self, staged: list[_Staged]) -> None:
        """Move staged blobs and layer dirs into place; the caller holds the lock."""
        for s in staged:
            dest = self.blob_path(s.digest)
            if os.path.exists(dest):
                os.unlink(s.blob)
            else:
                try:
                    os.rename(s.blob, dest)
                except OSError as e:
                    if e.errno != errno.EXDEV:
                        raise
                    with open(s.blob, "rb") as f:
                        _copy_hashing(f, dest + f".tmp-{os.getpid()}")
                    os.rename(dest + f".tmp-{os.getpid()}", dest)
        for s in staged:
            root = self.layer_root(s.diff_id)
            if os.path.isdir(root):
                continue
            if s.layer_dir is not None:
                os.rename(s.layer_dir, root)
            elif not s.lazy:  # it was there when we staged, and a gc removed it since
                self.ensure_unpacked(s.digest, s.diff_id)

    def _record(self, staged: list[_Staged], config: bytes, manifest: bytes | None,
                name: str | None, base_layers: list[dict] = (), *,
                manifest_media_type: str = C.MEDIA_TYPE_MANIFEST) -> Image:
        """Publish layers, config, manifest and finally index.json; caller holds the lock."""
        self._publish_layers(staged)
        cdigest = self._put_blob_bytes(config)
        if manifest is None:
            manifest = oci.canonical_json({
                "schemaVersion": 2,
                "mediaType": C.MEDIA_TYPE_MANIFEST,
                "config": {"mediaType": C.MEDIA_TYPE_CONFIG, "digest": cdigest,
                           "size": len(config)},
                "layers": [dict(d) for d in base_layers] +
                          [{"mediaType": s.media_type, "digest": s.digest, "size": s.size}
                           for s in staged],
            })
        mdigest = self._put_blob_bytes(manifest)
        cdoc = json.loads(config)
        desc = {"mediaType": manifest_media_type, "digest": mdigest, "size": len(manifest),
                "platform": {"architecture": cdoc.get("architecture", oci.host_platform()[1]),
                             "os": cdoc.get("os", "linux")}}
        self._write_index(oci.index_with(self._read_index(), desc, name))
        return self._load(mdigest, name)

    def add_layer_blob(self, src: str | os.PathLike | BinaryIO, *, media_type: str | None = None,
                       expect_digest: str | None = None, expect_diff_id: str | None = None,
                       progress: Progress | None = None) -> StoredLayer:
        """Copy a layer blob into the store (verifying the digests given), unpack it for
        overlay use, and return where it is.  Unreferenced until an image uses it: a ``gc``
        before that removes it."""
        with self.staging() as stage:
            blob = os.path.join(stage, "blob-0")
            with contextlib.ExitStack() as es:
                f = src if hasattr(src, "read") else es.enter_context(open(src, "rb"))
                digest, size = _copy_hashing(f, blob, progress=progress)
            what = f"layer '{expect_digest or digest}'"
            if expect_digest is not None and digest != expect_digest:
                raise DigestMismatchError(f"{what}: content hashes to {digest}")
            s = self._stage_layer(stage, 0, blob, digest=digest, size=size,
                                  media_type=media_type, diff_id=expect_diff_id, what=what)
            with self.lock():
                self._publish_layers([s])
                _syncfs(self.root)
        return StoredLayer(s.digest, s.diff_id, s.size, s.media_type,
                           self.blob_path(s.digest), self.layer_dir(s.diff_id))

    def commit_image(self, base: Image | str | None, layers: Iterable[tuple], *,
                     config_changes: dict | None = None, history_entry: dict | str | None = None,
                     name: str | None = None, unpack: bool = True) -> Image:
        """Record a new image: ``base`` (or nothing) plus ``layers``, each a tuple
        ``(info, blob_path)`` or ``(info, blob_path, unpacked_dir)`` where info has
        ``digest, diff_id, size, media_type`` (a layers.LayerInfo) and blob_path is a
        finished blob under ``<root>/tmp``.  The blob is moved into place and unpacked
        for overlay use (or ``unpacked_dir`` is moved there, its layer is then trusted);
        config, manifest and index.json are written last, all under the lock.

        ``config_changes`` update the image config's ``config`` object (Env, Cmd,
        Entrypoint, WorkingDir, User, ExposedPorts, Labels, ...; a None value deletes the
        key), except ``author``, ``architecture``, ``os``, ``variant`` which are top-level.
        ``history_entry`` is a dict (created_by, comment, author) or a created_by string.
        With ``unpack=False`` a layer given without ``unpacked_dir`` is not unpacked now but
        on the first ``Image.lower_dirs`` (commit uses this: its cost stays the layer's)."""
        name = oci.normalize_name(name) if name else None
        if isinstance(base, str):
            base = self.image(base)
        layers = list(layers)
        with self.lock(), self.staging() as stage:
            staged = []
            for i, item in enumerate(layers):
                info, blob = item[0], os.fspath(item[1])
                unpacked = os.fspath(item[2]) if len(item) > 2 and item[2] else None
                if os.path.getsize(blob) != info.size:
                    raise DigestMismatchError(f"commit: layer '{info.digest}': blob '{blob}' "
                                              f"is {os.path.getsize(blob)} bytes, "
                                              f"expected {info.size}")
                layer_dir = None
                if not os.path.isdir(self.layer_dir(info.diff_id)):
                    layer_dir = os.path.join(stage, f"layer-{i}")
                    if unpacked is not None:
                        os.mkdir(layer_dir)
                        os.rename(unpacked, os.path.join(layer_dir, "diff"))
                        self._save_index(layer_dir)
                    elif unpack:
                        self._unpack_into(blob, layer_dir, diff_id=info.diff_id,
                                          digest=info.digest)
                    else:
                        layer_dir = None
                staged.append(_Staged(info.digest, info.diff_id, info.size, info.media_type,
                                      blob, layer_dir, lazy=not unpack))
            config = self._child_config(base, staged, config_changes, history_entry)
            return self._record(staged, oci.canonical_json(config), None, name,
                                base.layers if base is not None else [])

    def _child_config(self, base: Image | None, staged: list[_Staged],
                      changes: dict | None, history_entry: dict | str | None) -> dict:
        os_, arch = oci.host_platform()
        cfg = json.loads(json.dumps(base.config_blob)) if base is not None else {
            "architecture": arch, "os": os_, "config": {"Env": [DEFAULT_PATH_ENV]},
            "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
        created = _now_rfc3339()
        cfg["created"] = created
        inner = dict(cfg.get("config") or {})
        for k, v in (changes or {}).items():
            target = cfg if k in ("author", "architecture", "os", "variant") else inner
            if v is None:
                target.pop(k, None)
            else:
                target[k] = v
        cfg["config"] = inner
        cfg.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        cfg["rootfs"]["diff_ids"] = list(cfg["rootfs"].get("diff_ids") or []) + \
            [s.diff_id for s in staged]
        if isinstance(history_entry, str):
            history_entry = {"created_by": history_entry}
        entry = {"created": created, **(history_entry or {})}
        hist = list(cfg.get("history") or [])
        if staged:
            hist.extend(dict(entry) for _ in staged)
        else:
            hist.append(dict(entry, empty_layer=True))
        cfg["history"] = hist
        return cfg

    # --- import -------------------------------------------------------------------------

    def import_(self, source: str, name: str | None = None, *,
                compression: str = "gzip", progress: Progress | None = None) -> Image:
        """Import ``source`` (a rootfs directory, a rootfs tarball or '-', ``oci:DIR[:REF]``,
        ``oci-archive:FILE[:REF]``, ``docker-archive:FILE[:REF]``) as an image named
        ``name`` (default: the name the source gives, if any).  Every digest is verified
        and every layer unpacked before anything is recorded; a failure leaves the store
        as it was."""
        t = oci.parse_transport(source)
        name = oci.normalize_name(name) if name else None
        if t.kind == "dir":
            return self._import_dir(t.path, name, compression=compression, progress=progress)
        if t.kind == "rootfs":
            if t.path != "-" and not os.path.exists(t.path):
                raise ImageNotFound(f"import '{source}': no such file or directory")
            what = f"rootfs tarball '{t.path}'"
            opener = (lambda: sys.stdin.buffer) if t.path == "-" else \
                (lambda: open(t.path, "rb"))
            src = oci.ImageSource(
                layers=[oci.LayerSource(open=opener, what=what)],
                config_template=self._base_template(),
                history_template=[{"created_by": f"snapdiff import {source}"}])
            return self._import_source(src, name, progress)
        if t.kind == "oci":
            src = oci.read_oci_layout(t.path, t.ref)
            return self._import_source(src, name or _name_or_none(src.name), progress)
        reader = oci.read_oci_archive if t.kind == "oci-archive" else oci.read_docker_archive
        src, files = reader(t.path, t.ref)
        try:
            return self._import_source(src, name or _name_or_none(src.name), progress)
        finally:
            files.close()

    @staticmethod
    def _base_template() -> dict:
        os_, arch = oci.host_platform()
        return {"architecture": arch, "os": os_, "config": {"Env": [DEFAULT_PATH_ENV]},
                "rootfs": {"type": "layers", "diff_ids": []}}

    def _import_dir(self, path: str, name: str | None, *, compression: str,
                    progress: Progress | None) -> Image:
        from snapdiff.layers import tree_items, write_layer

        self._ensure()
        with self.staging() as stage:
            blob = os.path.join(stage, "blob-0")
            info = write_layer(path, tree_items(path), blob, compression=compression,
                               progress=None if progress is None else
                               (lambda n: progress(n, 0)))
            s = self._stage_layer(stage, 0, blob, digest=info.digest, size=info.size,
                                  media_type=info.media_type, diff_id=info.diff_id,
                                  what=f"rootfs '{path}'")
            cfg = self._base_template()
            cfg["created"] = _now_rfc3339()
            cfg["rootfs"]["diff_ids"] = [s.diff_id]
            cfg["history"] = [{"created": cfg["created"],
                               "created_by": f"snapdiff import {path}"}]
            with self.lock():
                return self._record([s], oci.canonical_json(cfg), None, name)

    def _import_source(self, src: oci.ImageSource, name: str | None,
                       progress: Progress | None) -> Image:
        self._ensure()
        total = sum(ls.size or 0 for ls in src.layers)
        done = 0
        with self.staging() as stage:
            staged = []
            for i, ls in enumerate(src.layers):
                blob = os.path.join(stage, f"blob-{i}")
                with ls.open() as f:
                    digest, size = _copy_hashing(f, blob, progress=progress, done=done,
                                                 total=total)
                done += size
                if ls.digest is not None and digest != ls.digest:
                    raise DigestMismatchError(f"{ls.what}: content hashes to {digest}, "
                                              f"expected {ls.digest}")
                if ls.size is not None and size != ls.size:
                    raise DigestMismatchError(f"{ls.what}: {size} bytes, expected {ls.size}")
                staged.append(self._stage_layer(stage, i, blob, digest=digest, size=size,
                                                media_type=ls.media_type, diff_id=ls.diff_id,
                                                what=ls.what))
            if src.config is not None:
                config = src.config
                cdoc = json.loads(config)
                if list(cdoc["rootfs"]["diff_ids"]) != [s.diff_id for s in staged]:
                    raise DigestMismatchError("import: config diff_ids do not match the layers")
            else:
                cdoc = dict(src.config_template or self._base_template())
                cdoc.setdefault("created", _now_rfc3339())
                cdoc["rootfs"] = {"type": "layers", "diff_ids": [s.diff_id for s in staged]}
                hist = [dict(h) for h in src.history_template] or [{}]
                for h in hist:
                    h.setdefault("created", cdoc["created"])
                cdoc["history"] = hist
                config = oci.canonical_json(cdoc)
            manifest = src.manifest
            if manifest is not None:
                mdoc = json.loads(manifest)
                if [d["digest"] for d in mdoc.get("layers", [])] != [s.digest for s in staged]:
                    manifest = None
            with self.lock():
                return self._record(staged, config, manifest, name)

    # --- export -------------------------------------------------------------------------

    def export(self, ref: str, dest: str, *, progress: Progress | None = None) -> str:
        """Write image ``ref`` to ``dest``: ``oci:DIR[:REF]`` (added to an existing layout;
        REF defaults to the image's name), ``oci-archive:FILE[:REF]``,
        ``docker-archive:FILE`` (docker/podman load), or a flattened rootfs tarball
        (``rootfs:FILE`` or a path ending in .tar, .tar.gz, .tar.zst).  Returns the path."""
        img = self.image(ref)
        t = oci.parse_transport(dest, for_export=True)
        if t.kind == "oci":
            self._export_oci_dir(img, t.path, t.ref or img.name, progress)
        elif t.kind == "oci-archive":
            self._export_archive(img, t.path, t.ref or img.name, progress, docker=False)
        elif t.kind == "docker-archive":
            self._export_archive(img, t.path, t.ref or img.name, progress, docker=True)
        else:
            if t.path == "-" or os.path.isdir(t.path):
                raise UnsupportedError(f"export '{dest}': a rootfs export needs a file path")
            self._export_rootfs(img, t.path, progress)
        return t.path

    def _image_blobs(self, img: Image) -> list[tuple[str, int]]:
        cfg = img.manifest["config"]
        return [(img.id, img.manifest_size), (cfg["digest"], int(cfg.get("size", 0)))] + \
            [(d["digest"], int(d.get("size", 0))) for d in img.layers]

    def _export_oci_dir(self, img: Image, path: str, refname: str | None,
                        progress: Progress | None) -> None:
        blobs = os.path.join(path, "blobs", "sha256")
        os.makedirs(blobs, exist_ok=True)
        layout = os.path.join(path, "oci-layout")
        if not os.path.exists(layout):
            self._atomic_write(layout, oci.oci_layout_bytes())
        items = self._image_blobs(img)
        total, done = sum(s for _, s in items), 0
        for digest, size in items:
            dest = os.path.join(blobs, digest.split(":", 1)[1])
            if not os.path.exists(dest):
                tmp = os.path.join(blobs, f".tmp-{os.getpid()}-{os.urandom(6).hex()}")
                try:
                    with open(self.blob_path(digest), "rb") as f:
                        got, _ = _copy_hashing(f, tmp, progress=progress, done=done,
                                               total=total)
                    if got != digest:
                        raise DigestMismatchError(f"export: blob '{digest}' in the store "
                                                  f"hashes to {got} (run snapdiff fsck)")
                    os.rename(tmp, dest)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
            done += size
        index_path = os.path.join(path, "index.json")
        try:
            with open(index_path, "rb") as f:
                index = json.loads(f.read())
        except FileNotFoundError:
            index = oci.empty_index()
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LayerFormatError(f"export: '{index_path}' is not valid JSON: {e}") from None
        desc = {"mediaType": C.MEDIA_TYPE_MANIFEST, "digest": img.id, "size": img.manifest_size}
        self._atomic_write(index_path, oci.canonical_json(oci.index_with(index, desc, refname)))

    def _export_archive(self, img: Image, path: str, refname: str | None,
                        progress: Progress | None, *, docker: bool) -> None:
        d = os.path.dirname(os.path.abspath(path))
        tmp = os.path.join(d, f".{os.path.basename(path)}.tmp-{os.getpid()}")
        items = self._image_blobs(img)
        total, done = sum(s for _, s in items), 0
        try:
            with open(tmp, "wb") as out, tarfile.open(fileobj=out, mode="w",
                                                      format=tarfile.PAX_FORMAT) as tar:
                if docker:
                    done = self._write_docker_archive(tar, img, refname, progress, total)
                else:
                    oci.tar_add_bytes(tar, "oci-layout", oci.oci_layout_bytes())
                    desc = {"mediaType": C.MEDIA_TYPE_MANIFEST, "digest": img.id,
                            "size": img.manifest_size}
                    index = oci.index_with(oci.empty_index(), desc, refname)
                    oci.tar_add_bytes(tar, "index.json", oci.canonical_json(index))
                    for dirname in ("blobs", "blobs/sha256"):
                        oci.tar_add_dir(tar, dirname)
                    for digest, size in items:
                        ti = tarfile.TarInfo("blobs/sha256/" + digest.split(":", 1)[1])
                        ti.size = os.path.getsize(self.blob_path(digest))
                        ti.mode = 0o644
                        with open(self.blob_path(digest), "rb") as f:
                            tar.addfile(ti, f)
                        done += size
                        if progress is not None:
                            progress(done, total)
                out.flush()
                os.fsync(out.fileno())
            os.rename(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _write_docker_archive(self, tar: tarfile.TarFile, img: Image, refname: str | None,
                              progress: Progress | None, total: int) -> int:
        config = self._read_blob(img.manifest["config"]["digest"], "config")
        chex = img.manifest["config"]["digest"].split(":", 1)[1]
        oci.tar_add_bytes(tar, f"{chex}.json", config)
        tags = [oci.normalize_name(refname)] if refname else []
        layer_paths = []
        done = 0
        with self.staging() as stage:
            for i, (d, did) in enumerate(zip(img.layers, img.diff_ids, strict=True)):
                hx = did.split(":", 1)[1]
                # docker load wants the uncompressed tar, named by its diff_id
                plain = os.path.join(stage, f"layer-{i}.tar")
                with open(plain, "wb") as f:
                    got = oci.decompress_to(self.blob_path(d["digest"]), f,
                                            what=f"layer '{d['digest']}'")
                if got != did:
                    raise DigestMismatchError(f"export: layer '{d['digest']}' uncompresses "
                                              f"to {got}, expected {did} (run snapdiff fsck)")
                oci.tar_add_dir(tar, hx)
                oci.tar_add_bytes(tar, f"{hx}/VERSION", b"1.0")
                ti = tarfile.TarInfo(f"{hx}/layer.tar")
                ti.size = os.path.getsize(plain)
                ti.mode = 0o644
                with open(plain, "rb") as f:
                    tar.addfile(ti, f)
                os.unlink(plain)
                layer_paths.append(f"{hx}/layer.tar")
                done += int(d.get("size", 0))
                if progress is not None:
                    progress(done, total)
        manifest = [{"Config": f"{chex}.json", "RepoTags": tags, "Layers": layer_paths}]
        oci.tar_add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
        if tags and layer_paths:
            repo, tag = tags[0].rsplit(":", 1)
            top = layer_paths[-1].split("/", 1)[0]
            oci.tar_add_bytes(tar, "repositories", json.dumps({repo: {tag: top}}).encode())
        return done

    def _export_rootfs(self, img: Image, path: str, progress: Progress | None) -> None:
        from snapdiff.extraction import apply_layer
        from snapdiff.layers import tree_items, write_layer

        compression = "gzip" if path.endswith((".gz", ".tgz")) else \
            "zstd" if path.endswith((".zst", ".zstd")) else "none"
        d = os.path.dirname(os.path.abspath(path))
        tmp = os.path.join(d, f".{os.path.basename(path)}.tmp-{os.getpid()}")
        total = img.size
        done = 0
        with self.staging() as stage:
            rootfs = os.path.join(stage, "rootfs")
            os.mkdir(rootfs, 0o755)
            for layer, did in zip(img.layers, img.diff_ids, strict=True):
                apply_layer(self.blob_path(layer["digest"]), rootfs, overlay=False,
                            expect_diff_id=did, expect_digest=layer["digest"])
                done += int(layer.get("size", 0))
                if progress is not None:
                    progress(done, total)
            try:
                write_layer(rootfs, tree_items(rootfs), tmp, compression=compression)
                os.rename(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    # --- registry -----------------------------------------------------------------------

    def _mount_cache(self) -> str:
        """Which repositories of a registry hold which blob (a hint for cross-repository
        mounts); beside the layout, not in it."""
        return os.path.join(self.root, "registry-blobs.json")

    def push(self, ref: str, dest: str | None = None, *, insecure: bool = False,
             jobs: int = 4, progress: Progress | None = None):
        """Push image ``ref`` (name or id) to ``dest`` (``REGISTRY/REPO[:TAG|@DIGEST]``,
        default: the image's name).  Only blobs the registry lacks are sent, ``jobs`` at
        a time, the manifest last; ``progress(done_bytes, total_bytes)``.  Returns the
        snapdiff.registry.PushResult (uploaded, skipped, mounted, bytes_uploaded)."""
        from snapdiff import registry

        img = self.image(ref)
        if dest is None:
            if img.name is None:
                raise ImageNotFound(f"push '{ref}': the image has no name: give a destination")
            dest = img.name
        desc = {"mediaType": img.manifest.get("mediaType") or C.MEDIA_TYPE_MANIFEST,
                "digest": img.id, "size": img.manifest_size}
        total = sum(s for _, s in self._image_blobs(img)[1:])
        return registry.push(self.oci_dir, img.name or img.id, dest, insecure=insecure,
                             jobs=jobs, progress=_BlobProgress(progress, total),
                             mount_cache=self._mount_cache(), manifest_desc=desc)

    def pull(self, source: str, name: str | None = None, *, insecure: bool = False,
             platform: str | None = None, jobs: int = 4,
             progress: Progress | None = None) -> Image:
        """Pull ``source`` (``REGISTRY/REPO[:TAG|@DIGEST]``) into the store as ``name``
        (default: the source's ``repository:tag``; a pull by digest alone is unnamed).

        Blobs the store lacks are fetched ``jobs`` at a time, each verified (size and
        sha256) while it is written; then every layer is checked against its diff_id and
        unpacked for overlay use as an import does, and the image is recorded in
        index.json only when all of that succeeded.  A failure leaves the store as it was
        except for blobs already fetched and verified: they are named by their content,
        referenced by nothing, and kept so that running the pull again resumes instead
        of fetching them again (``gc`` removes them if nothing comes to reference them).
        An image already in the store (same manifest) costs one manifest request.
        ``progress(done_bytes, total_bytes)``; the total grows as blobs start.
        The result carries ``.transfer``, the snapdiff.registry.PullResult."""
        from snapdiff import registry

        what = f"pull '{source}'"
        if name is not None:
            name = oci.normalize_name(name)
        else:
            name = _default_pull_name(registry.parse_reference(source))
        self._ensure()
        with self.staging() as stage:
            pinned: dict[str, str] = {}

            def pin(desc: dict, path: str) -> None:
                # a hard link under our tmp/ dir keeps the blob alive through a
                # concurrent gc, and it is what _publish_layers moves (or drops)
                link = os.path.join(stage, desc["digest"].split(":", 1)[1])
                try:
                    os.link(path, link)
                except FileExistsError:
                    pass
                except FileNotFoundError:
                    raise StoreError(f"{what}: blob '{desc['digest']}' was removed while "
                                     "pulling (a concurrent gc?): run the pull again") from None
                pinned[desc["digest"]] = link

            res = registry.pull(source, self.oci_dir, platform=platform, insecure=insecure,
                                jobs=jobs, progress=_BlobProgress(progress, 0), on_blob=pin,
                                mount_cache=self._mount_cache())
            mdigest = res.manifest["digest"]
            manifest = self._read_blob(mdigest, "manifest")
            config = self._read_blob(res.config["digest"], "config")
            if any(m.get("digest") == mdigest for m in self._entries()):
                img = self._name_recorded(mdigest, name, res.manifest["mediaType"])
                img.transfer = res
                return img
            try:
                cdoc = json.loads(config)
                diff_ids = list(cdoc["rootfs"]["diff_ids"])
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
                raise LayerFormatError(f"{what}: config '{res.config['digest']}' is not an "
                                       f"image config: {e}") from None
            if len(diff_ids) != len(res.layers):
                raise LayerFormatError(f"{what}: the config lists {len(diff_ids)} diff_ids "
                                       f"for {len(res.layers)} layers")
            staged = []
            for i, (desc, diff_id) in enumerate(zip(res.layers, diff_ids, strict=True)):
                blob = os.path.join(stage, f"blob-{i}")  # one per layer: publishing consumes it
                os.link(pinned[desc["digest"]], blob)
                staged.append(self._stage_layer(
                    stage, i, blob, digest=desc["digest"],
                    size=int(desc["size"]), media_type=desc.get("mediaType"),
                    diff_id=diff_id, what=f"{what}: layer '{desc['digest']}'"))
            with self.lock():
                img = self._record(staged, config, manifest, name,
                                   manifest_media_type=res.manifest["mediaType"])
        img.transfer = res
        return img

    def _name_recorded(self, digest: str, name: str | None, media_type: str) -> Image:
        """An image already recorded (verified then): give it ``name``, make sure its
        layers are unpacked, return it."""
        with self.lock():
            if name is None:
                name = next((n for m in self._entries() if m.get("digest") == digest
                             and (n := m.get("annotations", {}).get(C.ANNOTATION_REF_NAME))),
                            None)
            else:
                desc = next((m for m in self._entries() if m.get("digest") == digest), None)
                if desc is None:  # removed meanwhile: record it afresh under its name
                    desc = {"mediaType": media_type, "digest": digest,
                            "size": len(self._read_blob(digest, "manifest"))}
                desc = {k: v for k, v in desc.items() if k != "annotations"}
                index = self._read_index()
                if not any(m.get("digest") == digest and m.get("annotations", {})
                           .get(C.ANNOTATION_REF_NAME) == name for m in index["manifests"]):
                    self._write_index(oci.index_with(index, desc, name))
            img = self._load(digest, name)
            img.lower_dirs  # noqa: B018 (unpacks a layer a gc removed; raises if it cannot)
        return img

    # --- containers (library API) -------------------------------------------------------

    @property
    def containers(self):
        """The containers kept in this store (snapdiff.containers.Containers)."""
        from snapdiff.containers import Containers

        return Containers(self.root)

    def container(self, ref: str):
        """A container by name or id prefix (ContainerNotFound otherwise)."""
        return self.containers.get(ref)

    def run(self, image: Image | str, cmd: list[str] | None = None, **kw):
        """Create and run a container from ``image`` (a ref or an Image); keyword options
        are those of Containers.run (name, detach, remove, env, workdir, user, hostname,
        network, volumes, runtime).  Returns (container, exit code or None if detached)."""
        img = self.image(image) if isinstance(image, str) else image
        return self.containers.run(img, cmd=cmd, **kw)

    def commit(self, container, name: str | None = None, **kw) -> Image:
        """Commit a container (a Container or a ref) as a new image; see
        snapdiff.commit.commit for the options."""
        from snapdiff.commit import commit

        c = self.container(container) if isinstance(container, str) else container
        return commit(self, c, name, **kw)

    # --- maintenance --------------------------------------------------------------------

    def _referenced(self) -> tuple[set[str], set[str]]:
        """(blob digests, layer diff_ids) that index.json or a container reaches.

        A container keeps every layer directory it mounts (its ``lower_dirs``) and the
        blobs of its image and of its last commit's image, even after ``rmi`` of them."""
        blobs: set[str] = set()
        layers: set[str] = set()

        def keep_image(digest: str) -> None:
            blobs.add(digest)
            with contextlib.suppress(SnapdiffError, OSError, KeyError, ValueError, TypeError):
                img = self._load(digest, None)
                blobs.add(img.manifest["config"]["digest"])
                blobs.update(d["digest"] for d in img.layers)
                layers.update(img.diff_ids)

        for m in self._entries():
            keep_image(m["digest"])
        for state in self._container_states():
            for digest in (state.get("image_id"),
                           ((state.get("state") or {}).get("commit") or {}).get("image")):
                if isinstance(digest, str) and digest.startswith("sha256:"):
                    keep_image(digest)
            for d in state.get("lower_dirs") or []:
                root = os.path.dirname(os.path.abspath(d))
                if os.path.dirname(root) == self.layers_dir:
                    layers.add("sha256:" + os.path.basename(root))
        return blobs, layers

    def _container_states(self) -> list[dict]:
        """The state.json of every container, those being created included.  A state that
        cannot be read stops gc (it might keep a layer alive) with a clear error."""
        states = []
        try:
            names = os.listdir(self.containers_dir)
        except FileNotFoundError:
            return states
        for n in names:
            path = os.path.join(self.containers_dir, n, "state.json")
            try:
                with open(path, "rb") as f:
                    state = json.loads(f.read())
            except (FileNotFoundError, NotADirectoryError):
                continue  # not a container, or removed meanwhile
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise StoreError(f"gc: container '{n[:12]}': cannot read state.json ({e}); "
                                 "fix or remove the container first") from None
            if not isinstance(state, dict):
                raise StoreError(f"gc: container '{n[:12]}': state.json is not an object")
            states.append(state)
        return states

    def gc(self) -> dict:
        """Remove blobs and unpacked layers that neither an image nor a container
        references, and temporaries of processes that are gone (a ``.partial`` download
        is removed only when no pull holds it).  Holds the lock, so it never runs beside
        another writer."""
        stats = {"blobs": 0, "layers": 0, "tmp": 0, "bytes": 0}
        if not os.path.isdir(self.root):
            return stats
        with self.lock():
            blobs, layers = self._referenced()
            for name in os.listdir(self.blobs_dir):
                if name.startswith("."):
                    continue  # temporaries and partial downloads: below
                if f"sha256:{name}" not in blobs:
                    p = os.path.join(self.blobs_dir, name)
                    stats["bytes"] += os.lstat(p).st_size
                    os.unlink(p)
                    stats["blobs"] += 1
            for name in os.listdir(self.layers_dir):
                if f"sha256:{name}" not in layers:
                    # out of its name first, so a crash mid-delete leaves no half layer
                    doomed = os.path.join(self.tmp_dir, f"{os.getpid()}.gc-{name}")
                    os.rename(os.path.join(self.layers_dir, name), doomed)
                    _rmtree(doomed)
                    stats["layers"] += 1
            for name in os.listdir(self.tmp_dir):
                pid = name.split(".", 1)[0]
                if pid.isdigit() and _alive(int(pid)):
                    continue  # a writer (maybe this process) is still using it
                _rmtree(os.path.join(self.tmp_dir, name))
                stats["tmp"] += 1
            for d in (self.oci_dir, self.blobs_dir):
                for name in os.listdir(d):
                    p = os.path.join(d, name)
                    if name.startswith(".tmp-"):
                        pid = name.split("-")[1]
                        if not (pid.isdigit() and _alive(int(pid))):
                            os.unlink(p)
                            stats["tmp"] += 1
                    elif name.endswith(".partial") and _remove_unheld(p):
                        stats["tmp"] += 1
            _syncfs(self.root)
        return stats

    def fsck(self, *, progress: Progress | None = None) -> list[Problem]:
        """Re-hash every blob against its name, check every image's manifest, config and
        layers are there, and every unpacked layer against its saved index when it has
        one.  Returns the problems found (empty: the store is sound)."""
        problems: list[Problem] = []
        if not os.path.isdir(self.root):
            return problems
        try:
            index = self._read_index()
        except StoreError as e:
            return [Problem("index", self.index_path, str(e))]
        names = sorted(os.listdir(self.blobs_dir)) if os.path.isdir(self.blobs_dir) else []
        names = [n for n in names if not n.startswith(".")]  # temporaries, partial pulls
        sizes = {n: os.lstat(os.path.join(self.blobs_dir, n)).st_size for n in names}
        total, done = sum(sizes.values()), 0
        for n in names:
            h = hashlib.sha256()
            with open(os.path.join(self.blobs_dir, n), "rb") as f:
                while chunk := f.read(oci.CHUNK):
                    h.update(chunk)
            if h.hexdigest() != n:
                problems.append(Problem("blob", f"sha256:{n}",
                                        f"content hashes to sha256:{h.hexdigest()}"))
            done += sizes[n]
            if progress is not None:
                progress(done, total)
        for m in index["manifests"]:
            subject = m.get("annotations", {}).get(C.ANNOTATION_REF_NAME) or m.get("digest")
            try:
                img = self._load(m["digest"], subject)
            except (SnapdiffError, OSError, KeyError, ValueError, TypeError) as e:
                problems.append(Problem("manifest", str(subject), str(e)))
                continue
            if len(img.layers) != len(img.diff_ids):
                problems.append(Problem("manifest", str(subject),
                                        f"{len(img.layers)} layers but "
                                        f"{len(img.diff_ids)} diff_ids"))
            for d in img.layers:
                if d["digest"].split(":", 1)[1] not in sizes:
                    problems.append(Problem("blob", d["digest"],
                                            f"missing (layer of '{subject}')"))
                elif sizes[d["digest"].split(":", 1)[1]] != d.get("size"):
                    problems.append(Problem("blob", d["digest"], "size differs from the "
                                            f"descriptor of '{subject}'"))
        if os.path.isdir(self.layers_dir):
            for n in sorted(os.listdir(self.layers_dir)):
                root = os.path.join(self.layers_dir, n)
                if not os.path.isdir(os.path.join(root, "diff")):
                    problems.append(Problem("layer", f"sha256:{n}", "no diff/ directory"))
                    continue
                if os.path.exists(os.path.join(root, "index")):
                    problems.extend(self._check_layer_dir(n, root))
        return problems

    @staticmethod
    def _check_layer_dir(hexname: str, root: str) -> list[Problem]:
        """Every file of an unpacked layer re-hashed against the index saved at unpack."""
        subject = f"sha256:{hexname}"
        try:
            saved = TreeIndex.load(os.path.join(root, "index"))
            changes = diff(saved, layer_snapshot(os.path.join(root, "diff")))
        except (SnapdiffError, OSError, ValueError) as e:
            return [Problem("layer", subject, f"cannot check: {e}")]
        return [Problem("layer", subject, f"'{os.fsdecode(c.path)}' {c.kind}"
                        + (f" ({', '.join(sorted(c.fields))})" if c.fields else ""))
                for c in changes]


def _name_or_none(ref: str | None) -> str | None:
    """The name a source gives an image, normalised; None when it is not a valid name
    (an OCI ref name may be anything, e.g. a bare tag like '1.0-rc')."""
    if not ref:
        return None
    try:
        return oci.normalize_name(ref)
    except UnsupportedError:
        return None


def _default_pull_name(ref) -> str | None:
    """``repository:tag`` of a registry reference, as the store names images (Docker
    Hub's ``library/`` prefix dropped); None for a reference by digest alone."""
    if ref.tag is None:
        return None
    repo = ref.repository
    if ref.registry == "docker.io" and repo.startswith("library/"):
        repo = repo[len("library/"):]
    return _name_or_none(f"{repo}:{ref.tag}")


class _BlobProgress:
    """Adapts the registry's per-blob ``(digest, done, total)`` reports to the store's
    ``progress(done_bytes, total_bytes)`` over the whole transfer."""

    def __init__(self, progress: Progress | None, total: int):
        self.progress = progress
        self.total = total
        self.blobs: dict[str, tuple[int, int]] = {}
        self.lock = threading.Lock()

    def __bool__(self) -> bool:
        return self.progress is not None

    def __call__(self, digest: str, done: int, total: int) -> None:
        if self.progress is None:
            return
        with self.lock:
            self.blobs[digest] = (done, total)
            done_all = sum(d for d, _ in self.blobs.values())
            total_all = max(self.total, sum(t for _, t in self.blobs.values()), done_all)
        self.progress(done_all, total_all)


def _remove_unheld(path: str) -> bool:
    """Remove ``path`` unless a process holds a flock on it (a pull holds its partial
    download while it writes it); True if removed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        os.unlink(path)
        return True
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
