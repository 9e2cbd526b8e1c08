"""Layers: write an OCI layer blob from items under a root directory, in one pass.

    info = write_layer("/rootfs", tree_items("/rootfs"), "/tmp/layer.tar.gz")
    info.digest, info.diff_id, info.size, info.media_type

The tar stream comes from the C writer (``snapdiff._core.TarWriter``, csrc/sd_tar.h); each
chunk of it feeds, in the same pass, sha256 of the tar (the diff_id), the compressor, and
sha256 of the compressed bytes (the digest) on their way to ``dest``.

Output is deterministic, whatever the number of threads:

- gzip is python-isal's threaded writer (pigz's scheme: independent deflate blocks, each
  primed with the previous block's last 32 KiB) fed blocks of exactly ``GZIP_BLOCK`` bytes,
  so block boundaries depend only on the tar bytes, never on the thread count;
- zstd is libzstd's multithreaded mode (python-zstandard), whose output is the same for any
  number of workers >= 1; it is always used in that mode, even with one thread.
"""

from __future__ import annotations

import enum
import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO

from snapdiff import _core
from snapdiff.constants import LAYER_MEDIA_TYPES
from snapdiff.errors import UnsupportedError

__all__ = [
    "ItemKind", "LayerInfo", "LayerItems", "write_layer", "tree_items", "COMPRESSIONS",
    "GZIP_BLOCK",
    "CHUNK",
]


class ItemKind(enum.IntEnum):
    """What to write for an item's path (values shared with csrc/sd_tar.h)."""

    ENTRY = _core.TAR_ENTRY        # the file at that path as it is on disk
    WHITEOUT = _core.TAR_WHITEOUT  # a deletion: "dir/NAME" becomes "dir/.wh.NAME"
    OPAQUE = _core.TAR_OPAQUE      # directory "dir" hides its lower contents: "dir/.wh..wh..opq"


COMPRESSIONS = tuple(LAYER_MEDIA_TYPES)  # ("none", "gzip", "zstd")

# Bytes of tar per deflate block.  Part of the output format: changing it changes digests.
GZIP_BLOCK = 1 << 20
# Bytes of tar read from the C writer at a time (a multiple of GZIP_BLOCK).
CHUNK = 4 * GZIP_BLOCK
_BUFFERS = 3  # chunks in flight between the reading thread and the hashing one

_LEVELS = {"gzip": (0, 3, 2), "zstd": (-7, 22, 3)}  # min, max, default


@dataclass(frozen=True)
class LayerInfo:
    """What write_layer wrote: the blob's digest and size, the tar's diff_id and size."""

    digest: str               # "sha256:<hex>" of the bytes written to dest
    diff_id: str              # "sha256:<hex>" of the uncompressed tar
    size: int                 # bytes written to dest
    uncompressed_size: int    # bytes of tar
    media_type: str
    compression: str
    skipped: tuple[tuple[bytes, str], ...] = ()  # (path, reason) left out, e.g. sockets
    # with hash_content: 16 bytes of XXH3-128 and one "hashed" flag byte per item
    content_hashes: tuple[bytes, bytes] | None = None


@dataclass(frozen=True)
class LayerItems:
    """Items as columns (no Python object per item): item i is
    ``blob[offs[i]:offs[i] + lens[i]]`` of kind ``kinds[i]``; buffers of uint64, uint32
    and uint8 (numpy arrays, say)."""

    blob: bytes
    offs: object
    lens: object
    kinds: object


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _HashingSink:
    """Where compressed bytes go: hashed, counted, then written to dest.  Once ``discard``
    is set (after a failure) nothing more reaches dest."""

    def __init__(self, dest: BinaryIO):
        self.dest = dest
        self.sha = hashlib.sha256()
        self.size = 0
        self.discard = False

    def write(self, b) -> int:
        if self.discard:
            return len(b)
        self.sha.update(b)
        n = len(b) if not isinstance(b, memoryview) else b.nbytes
        self.size += n
        view = memoryview(b)
        while view:  # a raw file may write less than asked
            w = self.dest.write(view)
            view = view[w if w is not None else len(view):]
        return n

    def flush(self) -> None:
        if not self.discard:
            self.dest.flush()


class _Writeback:
    """Writes to a file and has the kernel start writing each chunk to disk soon after
    (sync_file_range on a helper thread, which may block on a busy disk without holding
    up the stream), so the fsync that makes the blob durable has little left to wait for.
    Plain writes where the call or a file descriptor is missing."""

    _sync_file_range = None
    SYNC_FILE_RANGE_WRITE = 2

    def __init__(self, dest: BinaryIO):
        self.dest = dest
        self.pos = 0
        self.flusher: threading.Thread | None = None
        self.ranges: queue.SimpleQueue = queue.SimpleQueue()
        try:
            self.fd = dest.fileno()
        except (AttributeError, OSError, ValueError):
            self.fd = -1
        if _Writeback._sync_file_range is None:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fn = getattr(libc, "sync_file_range", None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
            _Writeback._sync_file_range = fn or False

    def _flush_ranges(self) -> None:
        while (r := self.ranges.get()) is not None:
            self._sync_file_range(self.fd, r[0], r[1], self.SYNC_FILE_RANGE_WRITE)

    def write_all(self, mv: memoryview) -> None:
        view = mv
        while view:  # a raw file may write less than asked
            w = self.dest.write(view)
            view = view[w if w is not None else len(view):]
        if self.fd >= 0 and self._sync_file_range:
            if self.flusher is None:
                self.flusher = threading.Thread(target=self._flush_ranges, daemon=True,
                                                name="snapdiff-writeback")
                self.flusher.start()
            self.ranges.put((self.pos, len(mv)))
        self.pos += len(mv)

    def close(self) -> None:
        if self.flusher is not None:
            self.ranges.put(None)
            self.flusher.join()
            self.flusher = None


def _compressor(compression: str, level: int | None, threads: int, sink: _HashingSink):
    if compression == "gzip":
        from isal import igzip_threaded

        return igzip_threaded.open(sink, "wb", compresslevel=level, threads=threads,
                                   block_size=GZIP_BLOCK)
    if compression == "zstd":
        import zstandard

        cctx = zstandard.ZstdCompressor(level=level, threads=threads)
        return cctx.stream_writer(sink, closefd=False)
    return None


def _check_options(compression: str, level: int | None, threads: int | None) -> int | None:
    if compression not in COMPRESSIONS:
        raise UnsupportedError(f"write layer: compression '{compression}': not one of "
                               f"{', '.join(COMPRESSIONS)}")
    if threads is not None and threads < 1:
        raise ValueError(f"write layer: threads {threads}: must be at least 1")
    if compression == "none":
        if level is not None:
            raise ValueError("write layer: level: no level without compression")
        return None
    lo, hi, default = _LEVELS[compression]
    if level is None:
        return default
    if not lo <= level <= hi:
        raise ValueError(f"write layer: level {level}: {compression} levels are {lo}..{hi}")
    return level


def _read_chunks(tw, free: queue.Queue, full: queue.Queue, stop: threading.Event) -> None:
    """The reading thread: fill free buffers from the tar writer (GIL released in C)."""
    try:
        while True:
            buf = free.get()
            if buf is None or stop.is_set():
                return
            n = tw.readinto(buf)
            full.put((buf, n))
            if n < len(buf):
                return
    except BaseException as e:  # handed over to the caller's thread, raised there
        full.put(e)


def _stream(tw, out: Callable[[memoryview], None],
            progress: Callable[[int], None] | None) -> int:
    """Run the tar stream through ``out`` chunk by chunk, reading ahead on a second thread
    so reading files and hashing overlap.  Returns the tar's size."""
    free: queue.Queue = queue.Queue()
    full: queue.Queue = queue.Queue()
    stop = threading.Event()
    free.put(bytearray(CHUNK))
    spare = _BUFFERS - 1  # more buffers only when the stream outgrows one (small layers)
    reader = threading.Thread(target=_read_chunks, args=(tw, free, full, stop),
                              name="snapdiff-tar-reader", daemon=True)
    reader.start()
    total = 0
    try:
        while True:
            item = full.get()
            if isinstance(item, BaseException):
                raise item
            buf, n = item
            if n:
                out(memoryview(buf)[:n])
                total += n
                if progress is not None:
                    progress(total)
            if n < len(buf):
                return total
            if spare:
                free.put(bytearray(CHUNK))
                spare -= 1
            free.put(buf)
    finally:
        stop.set()  # stops the reader if it is still going
        free.put(None)
        reader.join()


def _write(tw, dest: BinaryIO, compression: str, level: int | None, threads: int,
           progress: Callable[[int], None] | None) -> tuple[str, str, int, int]:
    diff_sha = hashlib.sha256()
    if compression == "none":
        sink = _HashingSink(dest)
        writeback = _Writeback(dest)
        from concurrent.futures import ThreadPoolExecutor  # here: it costs at every start

        with ThreadPoolExecutor(1, thread_name_prefix="snapdiff-layer-writer") as pool:
            def out(mv: memoryview) -> None:
                # write and hash the chunk at once (both release the GIL), then hand the
                # buffer back to the reader only when both are done with it
                done = pool.submit(writeback.write_all, mv)
                diff_sha.update(mv)
                done.result()
                sink.size += len(mv)

            try:
                total = _stream(tw, out, progress)
            finally:
                writeback.close()
        dest.flush()
        diff_id = "sha256:" + diff_sha.hexdigest()
        return diff_id, diff_id, sink.size, total

    sink = _HashingSink(dest)
    comp = _compressor(compression, level, threads, sink)
    try:
        if compression == "gzip":
            def out(mv: memoryview) -> None:
                diff_sha.update(mv)
                # whole blocks only: the block boundaries (hence the bytes) depend on nothing
                # but the tar, whatever the writer's own buffering does
                for i in range(0, len(mv), GZIP_BLOCK):
                    comp.write(mv[i:i + GZIP_BLOCK])
        else:
            def out(mv: memoryview) -> None:
                diff_sha.update(mv)
                comp.write(mv)

        total = _stream(tw, out, progress)
    except BaseException:
        sink.discard = True  # nothing more reaches dest; stop the compressor's threads
        try:
            comp.close()
        except Exception:  # the first failure is the one to report
            pass
        raise
    comp.close()
    sink.flush()
    return ("sha256:" + diff_sha.hexdigest(), "sha256:" + sink.sha.hexdigest(), sink.size, total)


def write_layer(root: str | bytes | os.PathLike,
                items: Iterable[tuple[bytes, int]] | LayerItems,
                dest: BinaryIO | str | bytes | os.PathLike, *, compression: str = "gzip",
                level: int | None = None, timestamp: int | None = None,
                threads: int | None = None, hash_content: bool = False,
                progress: Callable[[int], None] | None = None) -> LayerInfo:
    """Write the layer of ``items`` under ``root`` to ``dest`` in one pass.

    items: ``(relative path: bytes, ItemKind)`` pairs in the order they are to be written
      (a directory before its children, an opaque marker right after its directory); see
      tree_items() for a whole tree.
    dest: a writable binary file object (after a failure it holds whatever was written
      before), or a path: then the blob is written to a temporary name beside it, fsync'ed,
      and renamed into place only when complete, so a failure leaves nothing there.
    compression: "none", "gzip" (level 0..3, default 2: ISA-L) or "zstd" (level -7..22,
      default 3).
    timestamp: clamp every mtime to at most this time (SOURCE_DATE_EPOCH); None keeps them.
    threads: compression threads, default all CPUs.  The output does not depend on it.
    progress: called with the number of tar bytes written so far, after each chunk.
    hash_content: also compute each file's XXH3-128 as its content streams by
      (``LayerInfo.content_hashes``), so a caller that indexes the tree reads no file twice.

    Raises UnsafeLayerError for a path a layer cannot carry (absolute, '..', a '.wh.' name),
    FileChangedError when a file changes size while it is written, OSError for I/O errors;
    a ``dest`` path is then left as it was.
    """
    level = _check_options(compression, level, threads)
    nthreads = threads or _cpus()
    with _core.TarWriter(root, timestamp=timestamp, hash_content=hash_content) as tw:
        if isinstance(items, LayerItems):
            tw.add_item_arrays(items.blob, items.offs, items.lens, items.kinds)
        else:
            tw.add_items(items)
        if isinstance(dest, (str, bytes, os.PathLike)):
            diff_id, digest, size, total = _write_to_path(tw, os.fspath(dest), compression,
                                                          level, nthreads, progress)
        else:
            diff_id, digest, size, total = _write(tw, dest, compression, level, nthreads,
                                                  progress)
        skipped = tuple(tw.skipped)
        hashes = tw.content_hashes() if hash_content else None
    return LayerInfo(digest=digest, diff_id=diff_id, size=size, uncompressed_size=total,
                     media_type=LAYER_MEDIA_TYPES[compression], compression=compression,
                     skipped=skipped, content_hashes=hashes)


def _write_to_path(tw, path: str | bytes, compression: str, level: int | None, threads: int,
                   progress: Callable[[int], None] | None) -> tuple[str, str, int, int]:
    suffix = f".tmp-{os.getpid()}-{os.urandom(4).hex()}"
    tmp = path + (os.fsencode(suffix) if isinstance(path, bytes) else suffix)
    f = open(tmp, "xb", buffering=0)
    try:
        result = _write(tw, f, compression, level, threads, progress)
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException:
        f.close()
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return result


def tree_items(root: str | bytes | os.PathLike) -> list[tuple[bytes, ItemKind]]:
    """Every entry under ``root`` (not root itself) as ENTRY items, in tree order: a
    directory before its children, siblings in byte order of their names.  Symlinks are
    not followed.  (A pure-Python walk; the C walker can replace it.)"""
    out: list[tuple[bytes, ItemKind]] = []
    root_b = os.fsencode(root)

    def listing(path: bytes) -> list[os.DirEntry]:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)

    stack = [(b"", iter(listing(root_b)))]
    while stack:
        rel, it = stack[-1]
        e = next(it, None)
        if e is None:
            stack.pop()
            continue
        r = rel + e.name
        out.append((r, ItemKind.ENTRY))
        if e.is_dir(follow_symlinks=False):
            stack.append((r + b"/", iter(listing(e.path))))
    return out
