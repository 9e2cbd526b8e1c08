"""Apply a layer blob (plain, gzip or zstd tar) to a directory, verifying it in the same pass.

    result = apply_layer("blobs/sha256/ab12...", "rootfs", expect_digest="sha256:ab12...")
    extract_layer_to_new_dir(blob, "layers/ab12", overlay=True)   # all or nothing

One pass over the blob: the compressed bytes feed sha256 (the digest), the decompressor,
sha256 of the tar (the diff_id) and the C extractor (snapdiff._core.Extractor, whose rules are
in csrc/sd_extract.h).  Memory stays bounded: the blob streams through in chunks.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

import zstandard
from isal import igzip, isal_zlib

from snapdiff import errors
from snapdiff._core import Extractor

__all__ = ["ApplyResult", "apply_layer", "extract_layer_to_new_dir", "detect_compression"]

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class ApplyResult:
    """What apply_layer did.  Digests are "sha256:<hex>"."""

    digest: str             # of the blob as read (compressed)
    diff_id: str            # of the uncompressed tar
    compression: str        # "none", "gzip" or "zstd"
    compressed_size: int
    size: int               # uncompressed tar bytes
    entries: int
    files: int
    dirs: int
    whiteouts: int
    holes: int              # bytes of file content left as holes
    skipped: list[tuple[bytes, str]] = field(default_factory=list)


def detect_compression(head: bytes) -> str:
    """"gzip", "zstd" or "none" from the first bytes of a blob."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


class _Source(io.RawIOBase):
    """The blob as read: hashes and counts every byte, can peek at the start, reports progress."""

    def __init__(self, raw: BinaryIO, progress: Progress | None, total: int | None):
        super().__init__()
        self._raw = raw
        self._pending = b""
        self.sha = hashlib.sha256()
        self.count = 0
        self._progress = progress
        self._total = total
        self.zcheck: _ZstdFrameChecker | None = None
        self.hash_inline = True  # off for a plain tar: the tar's own hash is the digest

    def _got(self, data) -> None:
        if self.hash_inline:
            self.sha.update(data)
        self.count += len(data)
        if self.zcheck is not None:
            self.zcheck.update(data)
        if self._progress is not None:
            self._progress(self.count, self._total)

    def peek(self, n: int) -> bytes:
        while len(self._pending) < n:
            data = self._raw.read(n - len(self._pending))
            if not data:
                break
            self._got(data)
            self._pending += data
        return self._pending[:n]

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        mv = memoryview(b).cast("B")
        if self._pending:
            n = min(len(mv), len(self._pending))
            mv[:n] = self._pending[:n]
            self._pending = self._pending[n:]
            return n
        readinto = getattr(self._raw, "readinto", None)
        if readinto is not None:
            n = readinto(mv) or 0
            if n:
                self._got(mv[:n])
            return n
        data = self._raw.read(len(mv))
        mv[:len(data)] = data
        if data:
            self._got(data)
        return len(data)


class _ZstdFrameChecker:
    """Follows zstd frame and block headers (RFC 8878) over the compressed bytes to tell a
    complete stream from a truncated one: zstandard's stream reader ends quietly at the end
    of its input whether or not the last frame was complete."""

    _DICT = (0, 1, 2, 4)
    _FCS = (0, 2, 4, 8)

    def __init__(self) -> None:
        self._state = "magic"
        self._buf = b""
        self._skip = 0
        self._checksum = False
        self._rest = 0
        self.frames = 0

    def _need(self) -> int:
        return {"magic": 4, "fhd": 1, "block": 3, "checksum": 4, "skipsize": 4}.get(
            self._state, self._rest)

    def update(self, data) -> None:
        mv = memoryview(data).cast("B")
        pos, n = 0, len(mv)
        while pos < n:
            if self._skip:
                k = min(self._skip, n - pos)
                self._skip -= k
                pos += k
                continue
            need = self._need()
            take = min(need - len(self._buf), n - pos)
            self._buf += bytes(mv[pos:pos + take])
            pos += take
            if len(self._buf) == need:
                self._advance(self._buf)
                self._buf = b""

    def _advance(self, b: bytes) -> None:
        st = self._state
        if st == "magic":
            if b == ZSTD_MAGIC:
                self._state = "fhd"
            elif b[1:] == b"\x2a\x4d\x18" and b[0] & 0xF0 == 0x50:
                self._state = "skipsize"
            else:
                raise errors.LayerFormatError("corrupt zstd stream: bad frame magic")
        elif st == "fhd":
            d = b[0]
            single = (d >> 5) & 1
            self._checksum = bool((d >> 2) & 1)
            fcs = self._FCS[d >> 6] if (d >> 6 or not single) else 1
            self._rest = (0 if single else 1) + self._DICT[d & 3] + fcs
            self._state = "fhrest" if self._rest else "block"
        elif st == "fhrest":
            self._state = "block"
        elif st == "block":
            h = int.from_bytes(b, "little")
            last, kind, size = h & 1, (h >> 1) & 3, h >> 3
            if kind == 3:
                raise errors.LayerFormatError("corrupt zstd stream: reserved block type")
            self._skip = 1 if kind == 1 else size
            if last:
                self._state = "checksum" if self._checksum else "magic"
                if not self._checksum:
                    self.frames += 1
        elif st == "checksum":
            self._state = "magic"
            self.frames += 1
        elif st == "skipsize":
            self._skip = int.from_bytes(b, "little")
            self._state = "magic"

    @property
    def complete(self) -> bool:
        return self._state == "magic" and not self._buf and not self._skip and self.frames > 0


def _name_of(src) -> str:
    if isinstance(src, (str, bytes, os.PathLike)):
        return os.fsdecode(src)
    return os.fsdecode(getattr(src, "name", "<stream>")) if not isinstance(
        getattr(src, "name", None), int) else "<stream>"


def _rewrap(exc: BaseException, ctx: str) -> BaseException:
    """The same error with the layer named first: ``apply layer 'x': <what went wrong>``."""
    if isinstance(exc, errors.SnapdiffError):
        return type(exc)(f"{ctx}: {exc}")
    if isinstance(exc, OSError) and exc.errno is not None:
        new = OSError(exc.errno, f"{ctx}: {exc.strerror}")
        new.filename = exc.filename
        return new
    return exc


def _check_digest(kind: str, got: str, expected: str | None, ctx: str) -> None:
    if expected is None:
        return
    if not expected.startswith("sha256:"):
        raise errors.UnsupportedError(f"{ctx}: {kind} {expected!r}: only sha256 is supported")
    if got != expected:
        raise errors.DigestMismatchError(f"{ctx}: {kind} is {got}, expected {expected}")


def apply_layer(src, target, *, overlay: bool = False, expect_diff_id: str | None = None,
                expect_digest: str | None = None,
                progress: Progress | None = None) -> ApplyResult:
    """Apply the layer ``src`` (a path or a binary file object; plain tar, gzip or zstd,
    detected from its first bytes) to the directory ``target``, in place.

    ``overlay=True`` turns whiteouts into overlayfs markers (for a layer unpacked into its
    own directory).  ``expect_digest`` / ``expect_diff_id`` ("sha256:<hex>") are checked
    after the last byte; a mismatch raises DigestMismatchError.  Corrupt or truncated input
    raises LayerFormatError, an unsafe entry UnsafeLayerError.  On failure ``target`` holds
    what was applied so far: use extract_layer_to_new_dir for all or nothing.
    ``progress(done, total)`` is called with the blob bytes read so far."""
    ctx = f"apply layer '{_name_of(src)}'"
    own = isinstance(src, (str, bytes, os.PathLike))
    raw = open(src, "rb", buffering=0) if own else src  # noqa: SIM115 - closed below
    try:
        try:
            total = os.fstat(raw.fileno()).st_size
        except (OSError, AttributeError, io.UnsupportedOperation):
            total = None
        try:
            return _apply(raw, target, overlay, expect_diff_id, expect_digest, progress,
                          total, ctx)
        except (errors.SnapdiffError, OSError) as e:
            if str(e).startswith(ctx):
                raise
            raise _rewrap(e, ctx) from e
    finally:
        if own:
            raw.close()


def _apply(raw, target, overlay, expect_diff_id, expect_digest, progress, total,
           ctx) -> ApplyResult:
    source = _Source(raw, progress, total)
    compression = detect_compression(source.peek(4))
    tar_sha = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    if compression == "none":
        reader = source
        source.hash_inline = False
    elif compression == "gzip":
        reader = igzip.GzipFile(fileobj=source, mode="rb")
    else:
        source.zcheck = _ZstdFrameChecker()
        source.zcheck.update(source.peek(4))  # bytes already read went past the checker
        reader = zstandard.ZstdDecompressor().stream_reader(
            source, read_size=CHUNK, read_across_frames=True, closefd=False)
    # The diff_id is hashed on a second thread while the extractor writes the same chunk:
    # hashlib and Extractor.feed both release the GIL, so the two run on two cores.
    with Extractor(target, overlay=overlay) as x, ThreadPoolExecutor(1) as pool:
        try:
            while True:
                n = reader.readinto(mv)
                if not n:
                    break
                chunk = mv[:n]
                hashed = pool.submit(tar_sha.update, chunk)
                try:
                    x.feed(chunk)
                finally:
                    hashed.result()
                size += n
        except EOFError as e:
            raise errors.LayerFormatError(f"truncated {compression} stream") from e
        except (igzip.BadGzipFile, isal_zlib.error) as e:
            raise errors.LayerFormatError(f"corrupt gzip stream: {e}") from e
        except zstandard.ZstdError as e:
            raise errors.LayerFormatError(f"corrupt zstd stream: {e}") from e
        if source.zcheck is not None and not source.zcheck.complete:
            raise errors.LayerFormatError("truncated zstd stream")
        # anything after the compressed stream's end marker must be padding
        rest = source.read()
        while rest:
            if rest.strip(b"\0"):
                raise errors.LayerFormatError(f"data after the end of the {compression} stream")
            rest = source.read()
        x.finish()
        stats = x.stats
        skipped = x.skipped
    diff_id = "sha256:" + tar_sha.hexdigest()
    digest = diff_id if compression == "none" else "sha256:" + source.sha.hexdigest()
    _check_digest("digest", digest, expect_digest, ctx)
    _check_digest("diff_id", diff_id, expect_diff_id, ctx)
    return ApplyResult(digest=digest, diff_id=diff_id, compression=compression,
                       compressed_size=source.count, size=size, entries=stats["entries"],
                       files=stats["files"], dirs=stats["dirs"], whiteouts=stats["whiteouts"],
                       holes=stats["holes"], skipped=skipped)


def _remove_tree(path) -> None:
    """Remove a partial extraction, whatever modes its directories were left with."""

    def onerror(func, p, exc_info):
        exc = exc_info[1]
        if isinstance(exc, FileNotFoundError):
            return
        if isinstance(exc, PermissionError):
            parent = os.path.dirname(p)
            os.chmod(parent, 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
                shutil.rmtree(p, onerror=onerror)
            else:
                func(p)
            return
        raise exc

    shutil.rmtree(path, onerror=onerror)


def extract_layer_to_new_dir(src, dest_dir, **kw) -> ApplyResult:
    """Extract a layer into the new directory ``dest_dir``, all or nothing.

    The layer goes into a temporary sibling ``<dest_dir>.tmp-<random>`` that is renamed into
    place only after the stream, its end blocks and its digests checked out; on any failure
    (including KeyboardInterrupt) the temporary directory is removed.  Keyword arguments are
    those of apply_layer.  ``dest_dir`` must not exist."""
    dest = os.fsdecode(dest_dir)
    if os.path.lexists(dest):
        raise FileExistsError(errno.EEXIST, f"extract layer '{dest}': already exists", dest)
    tmp = f"{dest}.tmp-{os.urandom(8).hex()}"
    os.mkdir(tmp, 0o755)
    try:
        result = apply_layer(src, tmp, **kw)
        os.rename(tmp, dest)
    except BaseException:
        _remove_tree(tmp)
        raise
    return result
