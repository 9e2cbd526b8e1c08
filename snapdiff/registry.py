"""Push and pull images between an OCI image layout and a registry (OCI distribution spec).

The transfer engine works on a layout directory (``oci-layout``, ``index.json``,
``blobs/sha256/...``), independent of the store, so the store can wrap it:

- :func:`push` uploads the blobs of one image that the registry lacks (``HEAD`` first,
  a cross-repository mount when the blob is known to live in another repository of the
  same registry, otherwise a streamed upload), several at once, then the manifest.
- :func:`pull` fetches the manifest (choosing a platform from an index), then the blobs
  the layout lacks, several at once, each streamed to a partial file while hashed, and
  moved into ``blobs/`` only once its size and digest checked out.  It never touches
  ``index.json``: the caller records the image (:func:`record_in_layout`) when it has
  finished whatever else it needs (unpacking the layers).
- A killed pull leaves ``blobs/sha256/.<hex>.partial`` behind; the next pull of that
  blob re-hashes the partial and asks only for the rest (HTTP ``Range``).  A pull that
  fails cleanly removes its partial files.

HTTP goes through ``requests``.  oras-py (the ORAS Python SDK) was evaluated and not
used: it pushes artifacts from files rather than images from a layout, uploads one blob
at a time, has no cross-repository mount, reads monolithic uploads into memory, does not
verify digests while downloading, and reports failures by exiting the process.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform as _platform
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

from snapdiff import auth as _auth
from snapdiff.constants import (
    ANNOTATION_REF_NAME,
    DOCKER_MEDIA_TYPE_MANIFEST,
    DOCKER_MEDIA_TYPE_MANIFEST_LIST,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYOUT_HEADER,
    MEDIA_TYPE_MANIFEST,
)
from snapdiff.errors import DigestMismatchError, ImageNotFound, RegistryError, UnsupportedError
from snapdiff.fsutil import atomic_write, fsync_dir

__all__ = [
    "Reference", "parse_reference", "PushResult", "PullResult", "push", "pull",
    "record_in_layout", "init_layout", "host_platform", "login", "logout",
]

MANIFEST_TYPES = (MEDIA_TYPE_MANIFEST, DOCKER_MEDIA_TYPE_MANIFEST)
INDEX_TYPES = (MEDIA_TYPE_INDEX, DOCKER_MEDIA_TYPE_MANIFEST_LIST)
_ACCEPT = ", ".join(MANIFEST_TYPES + INDEX_TYPES)
_MAX_MANIFEST = 4 << 20          # a manifest larger than this is refused, not buffered
_IO_CHUNK = 1 << 20              # read/write/hash granularity for blob streams
_GET_CHUNK = 256 << 10           # download granularity: what a dropped connection can lose
DEFAULT_CHUNK_SIZE = 256 << 20   # blobs larger than this are uploaded in PATCH chunks
DEFAULT_RETRIES = 3
_BACKOFF = (0.2, 0.5, 1.0, 2.0)

# ProgressFn(digest, bytes_done, bytes_total); TraceFn(method, url, status)
ProgressFn = Callable[[str, int, int], None]
TraceFn = Callable[[str, str, int], None]


# --- references ----------------------------------------------------------------------

_REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_DOCKER_HUB = "docker.io"


@dataclass(frozen=True)
class Reference:
    """``registry/repository:tag`` or ``registry/repository@sha256:...``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest if there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        s = f"{self.registry}/{self.repository}"
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def parse_reference(text: str) -> Reference:
    """Parse ``[REGISTRY/]REPO[:TAG][@sha256:HEX]``; a name without a registry is Docker Hub's."""
    s = text.strip()
    digest = None
    if "@" in s:
        s, digest = s.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise ValueError(f"parse reference '{text}': bad digest '{digest}'")
    first, sep, rest = s.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = _DOCKER_HUB, s
        if "/" not in path:
            path = f"library/{path}"
    tag = None
    name, colon, maybe_tag = path.rpartition(":")
    if colon and "/" not in maybe_tag:
        path, tag = name, maybe_tag
        if not _TAG_RE.match(tag):
            raise ValueError(f"parse reference '{text}': bad tag '{tag}'")
    if not path or not _REPO_RE.match(path):
        raise ValueError(f"parse reference '{text}': bad repository name '{path}'")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, path, tag, digest)


def _is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    return host.strip("[]") in ("127.0.0.1", "localhost", "::1")


# --- platforms -----------------------------------------------------------------------

_MACHINE_ARCH = {
    "x86_64": ("amd64", None), "amd64": ("amd64", None),
    "aarch64": ("arm64", None), "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
    "i386": ("386", None), "i686": ("386", None),
    "ppc64le": ("ppc64le", None), "s390x": ("s390x", None), "riscv64": ("riscv64", None),
}


def host_platform() -> str:
    """This machine as ``os/arch[/variant]`` in OCI terms (``linux/amd64``)."""
    arch, variant = _MACHINE_ARCH.get(_platform.machine(), (_platform.machine(), None))
    return f"linux/{arch}" + (f"/{variant}" if variant else "")


def _platform_matches(want: str, p: dict) -> bool:
    parts = want.split("/")
    if len(parts) not in (2, 3):
        raise ValueError(f"platform '{want}': expected os/arch[/variant]")
    if p.get("os") != parts[0] or p.get("architecture") != parts[1]:
        return False
    if len(parts) == 3:
        have = p.get("variant")
        # arm64's only variant is v8: an absent variant means it
        return have == parts[2] or (have is None and parts[1] == "arm64" and parts[2] == "v8")
    return True


# --- layout helpers ------------------------------------------------------------------

def _blob_path(layout_dir: str, digest: str) -> str:
    if not _DIGEST_RE.match(digest):
        raise RegistryError(f"blob '{digest}': not a sha256 digest")
    return os.path.join(layout_dir, "blobs", "sha256", digest[7:])




def init_layout(layout_dir: str) -> None:
    """Create an empty OCI layout (``oci-layout``, ``index.json``, ``blobs/sha256``) if absent."""
    os.makedirs(os.path.join(layout_dir, "blobs", "sha256"), exist_ok=True)
    marker = os.path.join(layout_dir, "oci-layout")
    if not os.path.exists(marker):
        atomic_write(marker, json.dumps({"imageLayoutVersion": MEDIA_TYPE_LAYOUT_HEADER}).encode())
    index = os.path.join(layout_dir, "index.json")
    if not os.path.exists(index):
        atomic_write(index, json.dumps({"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX,
                                         "manifests": []}).encode())


def _read_index(layout_dir: str) -> dict:
    path = os.path.join(layout_dir, "index.json")
    try:
        with open(path, "rb") as f:
            index = json.load(f)
    except FileNotFoundError:
        raise ImageNotFound(f"layout '{layout_dir}': no index.json") from None
    except ValueError as e:
        raise RegistryError(f"layout '{layout_dir}': index.json: {e}") from e
    if not isinstance(index.get("manifests"), list):
        raise RegistryError(f"layout '{layout_dir}': index.json has no manifests list")
    return index


def _find_ref(layout_dir: str, ref_name: str) -> dict:
    """The descriptor named ``ref_name`` (``name:tag``, or a bare tag as umoci writes it)."""
    for desc in _read_index(layout_dir)["manifests"]:
        if (desc.get("annotations") or {}).get(ANNOTATION_REF_NAME) == ref_name:
            return desc
    raise ImageNotFound(f"push '{ref_name}': no such image in '{layout_dir}'")


def record_in_layout(layout_dir: str, manifest_desc: dict, ref_name: str) -> None:
    """Name ``manifest_desc`` ``ref_name`` in ``index.json`` (replacing that name), atomically.

    The manifest blob must already be in the layout.  Writers are serialised with a lock
    on the layout directory.
    """
    if not os.path.exists(_blob_path(layout_dir, manifest_desc["digest"])):
        raise RegistryError(f"record '{ref_name}': manifest {manifest_desc['digest']} is not in the layout")
    init_layout(layout_dir)
    dfd = os.open(layout_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)
        index = _read_index(layout_dir)
        kept = [d for d in index["manifests"]
                if (d.get("annotations") or {}).get(ANNOTATION_REF_NAME) != ref_name]
        desc = {k: manifest_desc[k] for k in ("mediaType", "digest", "size") if k in manifest_desc}
        if "platform" in manifest_desc:
            desc["platform"] = manifest_desc["platform"]
        desc["annotations"] = {**(manifest_desc.get("annotations") or {}), ANNOTATION_REF_NAME: ref_name}
        index["manifests"] = kept + [desc]
        atomic_write(os.path.join(layout_dir, "index.json"),
                      json.dumps(index, separators=(",", ":")).encode())
    finally:
        os.close(dfd)


# --- the mount cache: which repositories of a registry hold a blob -------------------

class _MountCache:
    """``{registry: {digest: [repo, ...]}}`` in a small JSON file; a hint, never trusted."""

    def __init__(self, path: str | None):
        self.path = path
        self.lock = threading.Lock()
        self.data: dict = {}
        self.dirty = False
        if path:
            try:
                with open(path, "rb") as f:
                    data = json.load(f)
                self.data = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self.data = {}

    def repos(self, registry: str, digest: str) -> list[str]:
        with self.lock:
            return list(self.data.get(registry, {}).get(digest, []))

    def add(self, registry: str, digest: str, repo: str) -> None:
        with self.lock:
            repos = self.data.setdefault(registry, {}).setdefault(digest, [])
            if repo not in repos:
                repos.append(repo)
                self.dirty = True

    def save(self) -> None:
        if not self.path or not self.dirty:
            return
        with self.lock:
            d = os.path.dirname(self.path) or "."
            os.makedirs(d, exist_ok=True)
            atomic_write(self.path, json.dumps(self.data, separators=(",", ":")).encode())
            self.dirty = False


def _default_mount_cache(layout_dir: str) -> str:
    return os.path.join(layout_dir, ".snapdiff-registry-blobs.json")


# --- HTTP with auth and retries ------------------------------------------------------

class _Transient(Exception):
    """A failure worth retrying: connection reset, timeout, 5xx, 429."""


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    for k, v in re.findall(r'(\w+)=([^",\s]+)', rest):
        params.setdefault(k, v)
    return scheme.lower(), params


def _error_text(r: requests.Response) -> str:
    text = f"{r.status_code} {r.reason}"
    try:
        body = r.json()
        errs = body.get("errors") if isinstance(body, dict) else None
        if errs:
            text += ": " + "; ".join(
                f"{e.get('code', '')} {e.get('message', '')}".strip() for e in errs if isinstance(e, dict))
    except ValueError:
        pass
    return text


class _Client:
    """One registry: base URL, a pooled session, credentials, tokens cached per scope."""

    def __init__(self, registry: str, *, insecure: bool, auth, trace: TraceFn | None,
                 jobs: int, retries: int, what: str):
        self.registry = registry
        host = "registry-1.docker.io" if registry == _DOCKER_HUB else registry
        scheme = "http" if (insecure or _is_loopback(registry)) else "https"
        self.base = f"{scheme}://{host}"
        self.what = what          # "pull 'ref'" / "push 'ref'", prefixes every message
        self.trace = trace
        self.retries = retries
        if auth is None:
            self.creds = _auth.lookup(registry)
        elif isinstance(auth, _auth.Credentials):
            self.creds = auth
        else:
            user, password = auth
            self.creds = _auth.Credentials(user, password)
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=max(4, jobs + 2))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "snapdiff"
        self.lock = threading.Lock()
        self.token_lock = threading.Lock()
        self.challenge: tuple[str, dict[str, str]] | None = None
        self.tokens: dict[tuple[str, ...], str] = {}

    def close(self) -> None:
        self.session.close()

    # auth ----------------------------------------------------------------------------
    def _basic(self) -> str:
        return requests.auth._basic_auth_str(self.creds.username, self.creds.password)

    def _authorization(self, scope: tuple[str, ...]) -> str | None:
        with self.lock:
            challenge = self.challenge
            token = self.tokens.get(scope)
        if challenge is None:
            return None
        scheme, params = challenge
        if scheme == "basic":
            return self._basic() if self.creds else None
        if scheme == "bearer":
            if token is None:
                with self.token_lock:   # one token request per scope, not one per thread
                    with self.lock:
                        token = self.tokens.get(scope)
                    if token is None:
                        token = self._fetch_token(params, scope)
            return f"Bearer {token}"
        return None

    def _fetch_token(self, params: dict[str, str], scope: tuple[str, ...]) -> str:
        realm = params.get("realm")
        if not realm:
            raise RegistryError(f"{self.what}: bearer challenge without a realm")
        query: list[tuple[str, str]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        query += [("scope", s) for s in scope]
        headers = {"Authorization": self._basic()} if self.creds else {}
        try:
            r = self.session.get(realm, params=query, headers=headers, timeout=(10, 60))
        except requests.RequestException as e:
            raise RegistryError(f"{self.what}: token from '{realm}': {e}") from e
        if self.trace:
            self.trace("GET", r.url, r.status_code)
        if r.status_code != 200:
            raise RegistryError(f"{self.what}: token from '{realm}': {_error_text(r)}")
        try:
            body = r.json()
            token = body.get("token") or body.get("access_token")
        except ValueError:
            token = None
        if not token:
            raise RegistryError(f"{self.what}: token from '{realm}': no token in the answer")
        with self.lock:
            self.tokens[scope] = token
        return token

    def _on_401(self, r: requests.Response, scope: tuple[str, ...], sent_auth: str | None) -> None:
        header = r.headers.get("WWW-Authenticate", "")
        if not header:
            raise RegistryError(f"{self.what}: {r.request.method} {r.url}: {_error_text(r)}")
        challenge = _parse_challenge(header)
        with self.lock:
            same = self.challenge == challenge
            self.challenge = challenge
            self.tokens.pop(scope, None)
        if challenge[0] == "basic" and not self.creds:
            raise RegistryError(f"{self.what}: authentication required (run 'snapdiff login {self.registry}')")
        if same and sent_auth is not None:
            who = f"as '{self.creds.username}'" if self.creds else "anonymously"
            raise RegistryError(f"{self.what}: access denied {who}: {_error_text(r)}")
        if challenge[0] not in ("basic", "bearer"):
            raise UnsupportedError(f"{self.what}: authentication scheme '{challenge[0]}' is not supported")

    # requests ------------------------------------------------------------------------
    def url(self, path_or_url: str) -> str:
        return urllib.parse.urljoin(self.base + "/", path_or_url)

    def request(self, method: str, path: str, *, scope: tuple[str, ...], headers=None,
                body: Callable[[], object] | None = None, stream: bool = False,
                retry: bool = True, ok: Iterable[int] = (200,)) -> requests.Response:
        """Send one request, answering auth challenges and retrying transient failures.

        ``body`` is a factory so that a retried request sends its body again from the start.
        A status not in ``ok`` raises RegistryError (404 on a manifest: ImageNotFound).
        """
        url = self.url(path)
        ok = tuple(ok)
        attempt = 0
        auth_rounds = 0
        while True:
            hdrs = dict(headers or {})
            authz = self._authorization(scope)
            if authz:
                hdrs["Authorization"] = authz
            try:
                try:
                    r = self.session.request(method, url, headers=hdrs,
                                             data=body() if body else None,
                                             stream=stream, timeout=(15, 300))
                except (requests.ConnectionError, requests.Timeout,
                        requests.exceptions.ChunkedEncodingError) as e:
                    raise _Transient(str(e)) from e
                if self.trace:
                    self.trace(method, url, r.status_code)
                if r.status_code >= 500 or r.status_code == 429:
                    text = _error_text(r)
                    r.close()
                    raise _Transient(text)
            except _Transient as e:
                if not retry or attempt >= self.retries:
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    raise RegistryError(f"{self.what}: {method} {url}: {e}{tries}") from None
                time.sleep(_BACKOFF[min(attempt, len(_BACKOFF) - 1)])
                attempt += 1
                continue
            if r.status_code == 401 and auth_rounds < 2:
                r.close()
                self._on_401(r, scope, authz)
                auth_rounds += 1
                continue
            if r.status_code not in ok:
                text = _error_text(r)
                r.close()
                if r.status_code == 404 and "/manifests/" in url:
                    raise ImageNotFound(f"{self.what}: manifest not found: {text}")
                raise RegistryError(f"{self.what}: {method} {url}: {text}")
            return r

    def ping(self) -> None:
        """``GET /v2/``: learns the auth challenge before any body is sent."""
        try:
            r = self.session.get(self.url("/v2/"), timeout=(15, 60))
        except requests.RequestException as e:
            raise RegistryError(f"{self.what}: cannot reach {self.base}: {_short(e)}") from None
        if self.trace:
            self.trace("GET", r.url, r.status_code)
        if r.status_code == 401 and r.headers.get("WWW-Authenticate"):
            with self.lock:
                self.challenge = _parse_challenge(r.headers["WWW-Authenticate"])
        elif r.status_code != 200:
            raise RegistryError(f"{self.what}: {self.base}/v2/ is not a registry: {_error_text(r)}")
        r.close()


def _short(e: BaseException) -> str:
    text = str(e)
    m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return m.group(1) if m else text.split(":")[-1].strip() or type(e).__name__


def _with_query(url: str, **params: str) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + urllib.parse.urlencode(params)


# --- push ----------------------------------------------------------------------------

class _FileSlice:
    """A file region as a request body: sized for Content-Length, read in big blocks.

    urllib3 asks for small blocks; returning a megabyte per read keeps the upload loop
    (and the progress callback) out of the way of the socket.
    """

    def __init__(self, path: str, offset: int, length: int, tick: Callable[[int], None] | None):
        self._f = open(path, "rb", buffering=0)  # noqa: SIM115 (closed when drained or by close())
        self._f.seek(offset)
        self._length = length
        self._left = length
        self._tick = tick

    def __len__(self) -> int:
        return self._length

    def read(self, _size: int = -1) -> bytes:
        if self._left <= 0:
            self.close()
            return b""
        data = self._f.read(min(_IO_CHUNK, self._left))
        if not data:
            self.close()
            raise RegistryError(f"upload: '{self._f.name}' shrank while being sent")
        self._left -= len(data)
        if self._tick:
            self._tick(len(data))
        return data

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


@dataclass
class PushResult:
    manifest_digest: str
    uploaded: list[str] = field(default_factory=list)   # blobs whose bytes were sent
    skipped: list[str] = field(default_factory=list)    # the registry already had them
    mounted: list[str] = field(default_factory=list)    # linked from another repository
    bytes_uploaded: int = 0


def _read_json_blob(layout_dir: str, desc: dict, what: str) -> tuple[bytes, dict]:
    path = _blob_path(layout_dir, desc["digest"])
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_MANIFEST + 1)
    except FileNotFoundError:
        raise RegistryError(f"{what}: blob {desc['digest']} is missing from the layout") from None
    if len(data) > _MAX_MANIFEST:
        raise RegistryError(f"{what}: manifest {desc['digest']} is larger than {_MAX_MANIFEST} bytes")
    if "sha256:" + hashlib.sha256(data).hexdigest() != desc["digest"]:
        raise DigestMismatchError(f"{what}: layout blob {desc['digest']} does not match its digest")
    try:
        return data, json.loads(data)
    except ValueError as e:
        raise RegistryError(f"{what}: manifest {desc['digest']}: {e}") from e


def _manifest_type(desc: dict, doc: dict) -> str:
    mt = doc.get("mediaType") or desc.get("mediaType")
    if not mt:
        mt = MEDIA_TYPE_INDEX if "manifests" in doc else MEDIA_TYPE_MANIFEST
    return mt


class _Pusher:
    def __init__(self, client: _Client, ref: Reference, layout_dir: str, cache: _MountCache,
                 jobs: int, chunk_size: int, progress: ProgressFn | None, result: PushResult):
        self.c = client
        self.ref = ref
        self.layout = layout_dir
        self.cache = cache
        self.jobs = jobs
        self.chunk_size = chunk_size
        self.progress = progress
        self.result = result
        self.rlock = threading.Lock()
        self.scope = (f"repository:{ref.repository}:pull,push",)

    def blob(self, desc: dict) -> None:
        digest, size = desc["digest"], int(desc["size"])
        path = _blob_path(self.layout, digest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise RegistryError(f"{self.c.what}: blob {digest} is missing from the layout") from None
        if st.st_size != size:
            raise DigestMismatchError(
                f"{self.c.what}: layout blob {digest} is {st.st_size} bytes, descriptor says {size}")
        repo = self.ref.repository
        blob_url = f"/v2/{repo}/blobs/{digest}"
        r = self.c.request("HEAD", blob_url, scope=self.scope, ok=(200, 404))
        r.close()
        if r.status_code == 200:
            self._done(self.result.skipped, digest, size)
            return
        location = None
        for other in self.cache.repos(self.c.registry, digest):
            if other == repo:
                continue
            scope = self.scope + (f"repository:{other}:pull",)
            r = self.c.request("POST", _with_query(f"/v2/{repo}/blobs/uploads/", mount=digest, **{"from": other}),
                               scope=scope, ok=(201, 202), headers={"Content-Length": "0"})
            r.close()
            if r.status_code == 201:
                self._done(self.result.mounted, digest, size)
                return
            location = r.headers.get("Location")  # 202: the registry opened a normal upload
            break
        if location is None:
            r = self.c.request("POST", f"/v2/{repo}/blobs/uploads/", scope=self.scope, ok=(202,),
                               headers={"Content-Length": "0"})
            r.close()
            location = r.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.c.what}: upload of {digest}: the registry gave no Location")
        location = self.c.url(location)
        sent = [0]

        def tick(n: int) -> None:
            sent[0] += n
            if self.progress:
                self.progress(digest, min(sent[0], size), size)

        if size <= self.chunk_size:
            def body():
                sent[0] = 0
                return _FileSlice(path, 0, size, tick)
            r = self.c.request("PUT", _with_query(location, digest=digest), scope=self.scope,
                               headers={"Content-Type": "application/octet-stream"},
                               body=body, ok=(201, 204))
            r.close()
        else:
            self._chunked(location, path, digest, size, tick)
        self._done(self.result.uploaded, digest, size, uploaded=True)

    def _chunked(self, location: str, path: str, digest: str, size: int, tick) -> None:
        """PATCH chunk after chunk; after a failed chunk ask the registry where it stands."""
        offset = 0
        failures = 0
        while offset < size:
            n = min(self.chunk_size, size - offset)
            start = offset
            try:
                r = self.c.request(
                    "PATCH", location, scope=self.scope, retry=False, ok=(202,),
                    headers={"Content-Type": "application/octet-stream",
                             "Content-Range": f"{start}-{start + n - 1}"},
                    body=lambda s=start, n=n: _FileSlice(path, s, n, tick))
                r.close()
                location = self.c.url(r.headers.get("Location") or location)
                offset = start + n
            except RegistryError:
                failures += 1
                if failures > self.c.retries:
                    raise
                time.sleep(_BACKOFF[min(failures - 1, len(_BACKOFF) - 1)])
                st = self.c.request("GET", location, scope=self.scope, ok=(204,))
                st.close()
                location = self.c.url(st.headers.get("Location") or location)
                rng = st.headers.get("Range", "")
                m = re.match(r"^(?:bytes=)?0-(\d+)$", rng)
                offset = int(m.group(1)) + 1 if m else 0
        r = self.c.request("PUT", _with_query(location, digest=digest), scope=self.scope,
                           headers={"Content-Length": "0"}, ok=(201, 204))
        r.close()

    def _done(self, bucket: list[str], digest: str, size: int, uploaded: bool = False) -> None:
        with self.rlock:
            bucket.append(digest)
            if uploaded:
                self.result.bytes_uploaded += size
        self.cache.add(self.c.registry, digest, self.ref.repository)
        if self.progress:
            self.progress(digest, size, size)

    def blobs(self, descs: list[dict]) -> None:
        unique = list({d["digest"]: d for d in descs}.values())
        if self.jobs <= 1 or len(unique) <= 1:
            for d in unique:
                self.blob(d)
            return
        with ThreadPoolExecutor(max_workers=min(self.jobs, len(unique))) as pool:
            futures = [pool.submit(self.blob, d) for d in unique]
            for f in futures:
                f.result()  # the first failure propagates; the pool drains the rest

    def manifest(self, data: bytes, media_type: str, reference: str) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        r = self.c.request("PUT", f"/v2/{self.ref.repository}/manifests/{reference}",
                           scope=self.scope, headers={"Content-Type": media_type},
                           body=lambda: data, ok=(200, 201, 202))
        r.close()
        got = r.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise DigestMismatchError(f"{self.c.what}: registry stored manifest as {got}, expected {digest}")
        return digest

    def image(self, desc: dict, reference: str) -> str:
        """Push the manifest (or index, with its manifests) ``desc`` names, blobs first."""
        data, doc = _read_json_blob(self.layout, desc, self.c.what)
        media_type = _manifest_type(desc, doc)
        if media_type in INDEX_TYPES:
            for child in doc.get("manifests") or []:
                self.image(child, child["digest"])
        elif media_type in MANIFEST_TYPES:
            if "config" not in doc:
                raise RegistryError(f"{self.c.what}: manifest {desc['digest']} has no config")
            self.blobs([doc["config"]] + list(doc.get("layers") or []))
        else:
            raise UnsupportedError(f"{self.c.what}: cannot push media type '{media_type}'")
        return self.manifest(data, media_type, reference)


def push(layout_dir: str, ref_name: str, dest: str, *, insecure: bool = False, auth=None,
         jobs: int = 4, progress: ProgressFn | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
         mount_cache: str | None = None, retries: int = DEFAULT_RETRIES,
         trace: TraceFn | None = None, manifest_desc: dict | None = None) -> PushResult:
    """Push the image named ``ref_name`` in the layout to ``dest`` (``REGISTRY/REPO[:TAG]``).

    Blobs the registry has are skipped (HEAD), blobs known (from ``mount_cache``, default
    ``<layout_dir>/.snapdiff-registry-blobs.json``) to be in another repository of the same
    registry are mounted, the others streamed from disk, ``jobs`` at a time (one PUT, or
    PATCH chunks of ``chunk_size`` for larger blobs).  The manifest goes last.  ``auth`` is
    ``None`` (look up saved credentials), ``(user, password)`` or a Credentials.
    ``dest`` with ``@sha256:`` pushes by digest, which must be the image's.
    ``manifest_desc`` (a descriptor of a manifest or index in the layout) pushes that
    instead of looking ``ref_name`` up in ``index.json`` (an unnamed image, an image by id);
    ``ref_name`` then only labels messages.
    """
    ref = parse_reference(dest)
    what = f"push '{dest}'"
    desc = manifest_desc if manifest_desc is not None else _find_ref(layout_dir, ref_name)
    cache = _MountCache(mount_cache or _default_mount_cache(layout_dir))
    client = _Client(ref.registry, insecure=insecure, auth=auth, trace=trace, jobs=jobs,
                     retries=retries, what=what)
    try:
        client.ping()
        if ref.digest and ref.digest != desc["digest"]:
            raise DigestMismatchError(f"{what}: image '{ref_name}' is {desc['digest']}")
        result = PushResult(manifest_digest="")
        pusher = _Pusher(client, ref, layout_dir, cache, max(1, jobs), chunk_size, progress, result)
        result.manifest_digest = pusher.image(desc, ref.tag or ref.digest)
        return result
    finally:
        try:
            cache.save()
        finally:
            client.close()


# --- pull ----------------------------------------------------------------------------

@dataclass
class PullResult:
    reference: Reference
    manifest: dict                  # descriptor of the (platform) manifest, its blob is in the layout
    config: dict                    # the config descriptor
    layers: list[dict]              # layer descriptors, base first
    fetched: list[str] = field(default_factory=list)   # blobs downloaded by this pull
    reused: list[str] = field(default_factory=list)    # blobs the layout already had
    bytes_fetched: int = 0


class _Puller:
    def __init__(self, client: _Client, ref: Reference, layout_dir: str, jobs: int,
                 progress: ProgressFn | None, on_blob, result_lock: threading.Lock):
        self.c = client
        self.ref = ref
        self.layout = layout_dir
        self.jobs = jobs
        self.progress = progress
        self.on_blob = on_blob
        self.lock = result_lock
        self.scope = (f"repository:{ref.repository}:pull",)
        self.blobs_dir = os.path.join(layout_dir, "blobs", "sha256")

    def manifest(self, reference: str, expect: str | None) -> tuple[bytes, str, str]:
        """GET a manifest; return (bytes, media type, digest), verified against ``expect``."""
        r = self.c.request("GET", f"/v2/{self.ref.repository}/manifests/{reference}",
                           scope=self.scope, headers={"Accept": _ACCEPT}, stream=True)
        try:
            length = int(r.headers.get("Content-Length") or 0)
            if length > _MAX_MANIFEST:
                raise RegistryError(f"{self.c.what}: manifest is {length} bytes, more than {_MAX_MANIFEST}")
            data = r.raw.read(_MAX_MANIFEST + 1, decode_content=True)
        except (requests.RequestException, OSError) as e:
            raise RegistryError(f"{self.c.what}: GET manifest {reference}: {_short(e)}") from None
        finally:
            r.close()
        if len(data) > _MAX_MANIFEST:
            raise RegistryError(f"{self.c.what}: manifest is larger than {_MAX_MANIFEST} bytes")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        want = expect or (reference if _DIGEST_RE.match(reference) else None)
        header = r.headers.get("Docker-Content-Digest")
        if want and digest != want:
            raise DigestMismatchError(f"{self.c.what}: manifest is {digest}, expected {want}")
        if not want and header and _DIGEST_RE.match(header) and header != digest:
            raise DigestMismatchError(f"{self.c.what}: manifest is {digest}, registry says {header}")
        try:
            doc = json.loads(data)
        except ValueError as e:
            raise RegistryError(f"{self.c.what}: manifest {digest}: not JSON: {e}") from None
        if not isinstance(doc, dict):
            raise RegistryError(f"{self.c.what}: manifest {digest}: not a JSON object")
        if doc.get("schemaVersion") == 1:
            raise UnsupportedError(f"{self.c.what}: Docker schema 1 manifests are not supported")
        media_type = doc.get("mediaType") or r.headers.get("Content-Type", "").split(";")[0].strip()
        if media_type not in MANIFEST_TYPES + INDEX_TYPES:
            media_type = MEDIA_TYPE_INDEX if "manifests" in doc else MEDIA_TYPE_MANIFEST
        return data, media_type, digest

    def blob(self, desc: dict) -> tuple[str, bool, int]:
        """Make blob ``desc`` present and verified in the layout; (digest, fetched, bytes)."""
        digest, size = desc["digest"], int(desc["size"])
        final = _blob_path(self.layout, digest)
        try:
            if os.stat(final).st_size == size:
                return digest, False, 0
        except FileNotFoundError:
            pass
        partial = os.path.join(self.blobs_dir, f".{digest[7:]}.partial")
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            # another pull of the same blob (this process or another) waits here, then
            # finds the blob in place
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.path.exists(final) and os.stat(final).st_size == size:
                return digest, False, 0
            fetched = self._download(fd, desc, partial)
            os.fsync(fd)
            os.rename(partial, final)
            return digest, True, fetched
        except BaseException as e:
            # a clean failure leaves no partial behind; only a killed process does (and the
            # next pull resumes from it)
            if not isinstance(e, KeyboardInterrupt):
                try:
                    os.unlink(partial)
                except FileNotFoundError:
                    pass
            raise
        finally:
            os.close(fd)

    def _download(self, fd: int, desc: dict, partial: str) -> int:
        digest, size = desc["digest"], int(desc["size"])
        h = hashlib.sha256()
        have = 0
        # resume: re-hash what an interrupted pull left
        while True:
            chunk = os.pread(fd, _IO_CHUNK, have)
            if not chunk:
                break
            h.update(chunk)
            have += len(chunk)
        if have > size:
            os.ftruncate(fd, 0)
            h, have = hashlib.sha256(), 0
        fetched = 0
        failures = 0
        url = f"/v2/{self.ref.repository}/blobs/{digest}"
        done = have == size and size > 0   # a complete partial left by a killed pull
        while not done:
            headers = {"Range": f"bytes={have}-"} if have else {}
            r = self.c.request("GET", url, scope=self.scope, headers=headers, stream=True,
                               ok=(200, 206))
            try:
                if r.status_code == 200 and have:
                    os.ftruncate(fd, 0)       # the registry ignored Range: start over
                    h, have = hashlib.sha256(), 0
                for chunk in r.iter_content(_GET_CHUNK):
                    if have + len(chunk) > size:
                        raise DigestMismatchError(
                            f"{self.c.what}: blob {digest}: registry sent more than {size} bytes")
                    os.pwrite(fd, chunk, have)
                    h.update(chunk)
                    have += len(chunk)
                    fetched += len(chunk)
                    if self.progress:
                        self.progress(digest, have, size)
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as e:
                failures += 1
                if failures > self.c.retries:
                    raise RegistryError(
                        f"{self.c.what}: GET blob {digest}: {_short(e)} (after {failures} attempts)") from None
                time.sleep(_BACKOFF[min(failures - 1, len(_BACKOFF) - 1)])
                continue
            finally:
                r.close()
            if have < size:
                failures += 1
                if failures > self.c.retries:
                    raise RegistryError(
                        f"{self.c.what}: GET blob {digest}: body ended at {have} of {size} bytes")
                continue
            done = True
        if "sha256:" + h.hexdigest() != digest:
            raise DigestMismatchError(f"{self.c.what}: blob {digest}: content hashes to sha256:{h.hexdigest()}")
        return fetched


def pull(source: str, layout_dir: str, *, ref_name: str | None = None, platform: str | None = None,
         insecure: bool = False, auth=None, jobs: int = 4, progress: ProgressFn | None = None,
         on_blob: Callable[[dict, str], None] | None = None, mount_cache: str | None = None,
         retries: int = DEFAULT_RETRIES, trace: TraceFn | None = None) -> PullResult:
    """Fetch image ``source`` into the layout's blobs; do NOT record it in ``index.json``.

    Only blobs the layout lacks are downloaded, ``jobs`` at a time, each verified (size and
    sha256) before it is moved into ``blobs/sha256``; ``on_blob(desc, path)`` is called as
    each config/layer blob is in place.  An index picks ``platform`` (default: this
    machine's).  The manifest blob is written last.  The caller records the image, e.g.
    ``record_in_layout(layout_dir, result.manifest, ref_name)``.  ``ref_name`` is accepted
    for symmetry and returned in nothing; it does not affect the transfer.
    """
    ref = parse_reference(source)
    what = f"pull '{source}'"
    want_platform = platform or host_platform()
    if platform:
        _platform_matches(platform, {})  # validates the syntax early
    init_layout(layout_dir)
    cache = _MountCache(mount_cache or _default_mount_cache(layout_dir))
    client = _Client(ref.registry, insecure=insecure, auth=auth, trace=trace, jobs=jobs,
                     retries=retries, what=what)
    lock = threading.Lock()
    try:
        client.ping()
        p = _Puller(client, ref, layout_dir, max(1, jobs), progress, on_blob, lock)
        data, media_type, digest = p.manifest(ref.reference, ref.digest)
        platform_desc = None
        if media_type in INDEX_TYPES:
            doc = json.loads(data)
            choices = [m for m in doc.get("manifests") or []
                       if m.get("mediaType", MEDIA_TYPE_MANIFEST) in MANIFEST_TYPES]
            match = [m for m in choices if _platform_matches(want_platform, m.get("platform") or {})]
            if not match:
                have = ", ".join(sorted({"/".join(filter(None, (
                    (m.get("platform") or {}).get("os"), (m.get("platform") or {}).get("architecture"),
                    (m.get("platform") or {}).get("variant")))) for m in choices})) or "none"
                raise ImageNotFound(f"{what}: no manifest for platform {want_platform} (has: {have})")
            platform_desc = match[0]
            data, media_type, digest = p.manifest(platform_desc["digest"], platform_desc["digest"])
            if media_type not in MANIFEST_TYPES:
                raise UnsupportedError(f"{what}: nested index {digest} is not supported")
        doc = json.loads(data)
        if not isinstance(doc.get("config"), dict) or not isinstance(doc.get("layers", []), list):
            raise RegistryError(f"{what}: manifest {digest} has no config or layers")
        config, layers = doc["config"], list(doc.get("layers") or [])
        for d in [config] + layers:
            if not isinstance(d, dict) or not _DIGEST_RE.match(str(d.get("digest"))) \
                    or not isinstance(d.get("size"), int) or d["size"] < 0:
                raise RegistryError(f"{what}: manifest {digest} has a bad descriptor: {d!r}")
        result = PullResult(reference=ref, manifest={}, config=config, layers=layers)

        def one(desc: dict) -> None:
            d, fetched, nbytes = p.blob(desc)
            with lock:
                (result.fetched if fetched else result.reused).append(d)
                result.bytes_fetched += nbytes
            cache.add(ref.registry, d, ref.repository)
            if on_blob:
                on_blob(desc, _blob_path(layout_dir, d))

        unique = list({d["digest"]: d for d in [config] + layers}.values())
        if p.jobs <= 1 or len(unique) <= 1:
            for d in unique:
                one(d)
        else:
            with ThreadPoolExecutor(max_workers=min(p.jobs, len(unique))) as pool:
                futures = [pool.submit(one, d) for d in unique]
                for f in futures:
                    f.result()
        mpath = _blob_path(layout_dir, digest)
        if not os.path.exists(mpath):
            atomic_write(mpath, data)
        fsync_dir(os.path.join(layout_dir, "blobs", "sha256"))
        manifest_desc = {"mediaType": media_type, "digest": digest, "size": len(data)}
        if platform_desc and platform_desc.get("platform"):
            manifest_desc["platform"] = platform_desc["platform"]
        result.manifest = manifest_desc
        return result
    finally:
        try:
            cache.save()
        finally:
            client.close()


# --- login ---------------------------------------------------------------------------

def login(registry: str, username: str, password: str, *, insecure: bool = False) -> str:
    """Check ``username``/``password`` against ``registry``, then save them; return the file."""
    creds = _auth.Credentials(username, password)
    client = _Client(registry, insecure=insecure, auth=creds, trace=None, jobs=1,
                     retries=DEFAULT_RETRIES, what=f"login '{registry}'")
    try:
        client.ping()
        if client.challenge is not None:
            r = client.request("GET", "/v2/", scope=(), ok=(200,))
            r.close()
    finally:
        client.close()
    return _auth.store(registry, creds)


def logout(registry: str) -> str:
    """Forget the saved credentials for ``registry``; return the file they were in.
    RegistryError if there were none."""
    if not _auth.remove(registry):
        raise RegistryError(f"logout '{registry}': not logged in")
    return _auth.auth_file()
