"""A real registry on 127.0.0.1, a fault-injecting proxy in front of it, and image builders.

``LocalRegistry`` runs Debian's ``docker-registry`` (the CNCF distribution registry) on a
free port with its storage and log in a temporary directory.  ``FaultProxy`` forwards to
it and, on request, corrupts, truncates or fails chosen responses, or demands bearer
tokens it issues itself.  ``build_image`` writes an OCI layout image from Python data.
Nothing here talks to any address but 127.0.0.1.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import http.server
import io
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.request

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRegistry:
    """``docker-registry serve`` on 127.0.0.1:<free port>; optional htpasswd auth."""

    def __init__(self, workdir: str, *, users: dict[str, str] | None = None):
        self.workdir = workdir
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log_path = os.path.join(workdir, "registry.log")
        storage = os.path.join(workdir, "storage")
        os.makedirs(storage, exist_ok=True)
        auth = ""
        if users:
            import bcrypt

            htpasswd = os.path.join(workdir, "htpasswd")
            with open(htpasswd, "w") as f:
                for user, password in users.items():
                    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
                    f.write(f"{user}:{hashed}\n")
            auth = f"auth:\n  htpasswd:\n    realm: snapdiff-test\n    path: {htpasswd}\n"
        config = os.path.join(workdir, "config.yml")
        with open(config, "w") as f:
            f.write(
                "version: 0.1\n"
                "log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n"
                f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
                f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: {secrets.token_hex(16)}\n"
                + auth)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", config], stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1).close()
                break
            except urllib.error.HTTPError:   # 401 with auth on: it is up
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    with open(self.log_path, errors="replace") as f:
                        raise RuntimeError(f"docker-registry did not start: {f.read()[-2000:]}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def log_requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request in the registry's access log."""
        with open(self.log_path, errors="replace") as f:
            text = f.read()
        return re.findall(r'"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/1\.\d"', text)


# --- images ------------------------------------------------------------------------

def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_layer(files: dict[str, bytes], *, compress: bool = True) -> tuple[bytes, str]:
    """A layer tar (gzip'd unless told) of regular files; returns (blob, diff_id)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({os.path.dirname(p) for p in files if os.path.dirname(p)})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1700000000
            tar.addfile(info)
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    blob = gzip.compress(raw, compresslevel=1, mtime=0) if compress else raw
    return blob, sha256(raw)


def write_blob(layout: str, data: bytes) -> dict:
    digest = sha256(data)
    d = os.path.join(layout, "blobs", "sha256")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, digest[7:]), "wb") as f:
        f.write(data)
    return {"digest": digest, "size": len(data)}


def build_image(layout: str, ref_name: str, layers: list[tuple[bytes, str]], *,
                arch: str = "amd64", record: bool = True, compress: bool = True) -> dict:
    """Write config, layers and manifest into ``layout``; name it ``ref_name`` in index.json."""
    from snapdiff.registry import init_layout, record_in_layout

    init_layout(layout)
    layer_descs = []
    for blob, _diff_id in layers:
        desc = write_blob(layout, blob)
        desc["mediaType"] = ("application/vnd.oci.image.layer.v1.tar+gzip" if compress
                             else "application/vnd.oci.image.layer.v1.tar")
        layer_descs.append(desc)
    config = {"architecture": arch, "os": "linux",
              "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": [d for _b, d in layers]}}
    cdesc = write_blob(layout, json.dumps(config, sort_keys=True).encode())
    cdesc["mediaType"] = "application/vnd.oci.image.config.v1+json"
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": cdesc, "layers": layer_descs}
    mdesc = write_blob(layout, json.dumps(manifest, sort_keys=True).encode())
    mdesc = {"mediaType": manifest["mediaType"], **mdesc}
    if record:
        record_in_layout(layout, mdesc, ref_name)
    return mdesc


def blob_names(layout: str) -> set[str]:
    d = os.path.join(layout, "blobs", "sha256")
    return set(os.listdir(d)) if os.path.isdir(d) else set()


# --- the fault-injecting proxy -------------------------------------------------------

class FaultProxy:
    """HTTP proxy on 127.0.0.1 in front of ``backend`` (host:port) that misbehaves on cue.

    ``add_fault(kind, method, path_regex, times)`` with kind ``corrupt`` (flip a byte of the
    body), ``truncate`` (send half the body, then close), ``500``, ``reset`` (close with no
    answer).  ``times`` < 0 means always.  ``bearer=True`` makes the proxy demand a token
    it hands out at ``/token`` (checking basic credentials if ``users`` is given).
    ``requests`` records (method, path, status) for every request.
    """

    def __init__(self, backend: str, *, bearer: bool = False, users: dict[str, str] | None = None):
        self.backend = backend
        self.faults: list[list] = []
        self.requests: list[tuple[str, str, int]] = []
        self.token_requests: list[str] = []
        self.ranges: list[tuple[str, str]] = []   # (path, Range header) of ranged requests
        self.bearer = bearer
        self.users = users or {}
        self.tokens: dict[str, str] = {}
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                proxy._handle(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add_fault(self, kind: str, method: str, path_regex: str, times: int = -1) -> None:
        with self.lock:
            self.faults.append([kind, method, re.compile(path_regex), times])

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _take_fault(self, method: str, path: str) -> str | None:
        with self.lock:
            for f in self.faults:
                kind, m, rx, times = f
                if m == method and rx.search(path) and times != 0:
                    f[3] = times - 1
                    return kind
        return None

    def _send(self, h, status: int, headers: dict[str, str], body: bytes) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _handle(self, h) -> None:
        method, path = h.command, h.path
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        if h.headers.get("Range"):
            with self.lock:
                self.ranges.append((path, h.headers["Range"]))
        if self.bearer:
            if path.startswith("/token"):
                self._issue_token(h)
                return
            auth = h.headers.get("Authorization", "")
            if not (auth.startswith("Bearer ") and auth[7:] in self.tokens):
                with self.lock:
                    self.requests.append((method, path, 401))
                realm = f"http://{self.host}/token"
                self._send(h, 401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="test"',
                                    "Content-Type": "application/json"},
                           b'{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}')
                return
        fault = self._take_fault(method, path)
        if fault == "500":
            with self.lock:
                self.requests.append((method, path, 500))
            self._send(h, 500, {"Content-Type": "text/plain"}, b"injected failure")
            return
        if fault == "reset":
            with self.lock:
                self.requests.append((method, path, 0))
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        conn = http.client.HTTPConnection(self.backend, timeout=60)
        fwd = {k: v for k, v in h.headers.items()
               if k.lower() not in ("host", "authorization", "connection", "content-length")}
        if body or method in ("PUT", "POST", "PATCH"):
            fwd["Content-Length"] = str(len(body))
        conn.request(method, path, body=body or None, headers=fwd)
        resp = conn.getresponse()
        data = resp.read() if method != "HEAD" else b""
        conn.close()
        with self.lock:
            self.requests.append((method, path, resp.status))
        headers = {k: v for k, v in resp.getheaders()
                   if k.lower() not in ("content-length", "connection", "transfer-encoding")}
        if "Location" in headers and headers["Location"].startswith(f"http://{self.backend}"):
            headers["Location"] = headers["Location"].replace(self.backend, self.host, 1)
        if fault == "corrupt" and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        if fault == "truncate" and data:
            h.send_response(resp.status)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.send_response(resp.status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(resp.getheader("Content-Length") if method == "HEAD"
                                            and resp.getheader("Content-Length") else len(data)))
        h.end_headers()
        if method != "HEAD":
            h.wfile.write(data)

    def _issue_token(self, h) -> None:
        import base64
        import urllib.parse

        query = urllib.parse.parse_qs(urllib.parse.urlsplit(h.path).query)
        with self.lock:
            self.token_requests.append(",".join(query.get("scope", [])))
        if self.users:
            auth = h.headers.get("Authorization", "")
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                user, password = "", ""
            if not auth.startswith("Basic ") or self.users.get(user) != password:
                self._send(h, 401, {"Content-Type": "application/json"}, b'{"details":"bad credentials"}')
                return
        token = secrets.token_hex(16)
        with self.lock:
            self.tokens[token] = ",".join(query.get("scope", []))
        self._send(h, 200, {"Content-Type": "application/json"},
                   json.dumps({"token": token, "expires_in": 300}).encode())
