# Binding for csrc/sd_extract.h: see that header.
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy

from snapdiff.includes.sd_extract cimport (
    SD_SKIP_DEVICE, SD_SKIP_XATTR, sd_extract_opts, sd_extract_stats, sd_extractor,
    sd_extractor_feed, sd_extractor_finish, sd_extractor_free, sd_extractor_new,
    sd_extractor_skipped, sd_extractor_stats,
)

_SKIP_REASONS = {
    SD_SKIP_DEVICE: "device node not created: needs root",
    SD_SKIP_XATTR: "xattr not set (overlay's own, or refused without root)",
}


cdef class Extractor:
    """Apply one layer tar stream under a directory (see csrc/sd_extract.h for the rules).

    ``Extractor(target, overlay=False)`` opens ``target`` (a path, or a directory fd that is
    duplicated) and owns that descriptor and the C extractor.  Feed the decompressed tar bytes
    with ``feed(buf)`` in chunks of any size, then call ``finish()``.  Errors raise
    ``UnsafeLayerError``, ``LayerFormatError`` or ``OSError``; after one, the extractor is
    dead.  ``skipped`` lists ``(path: bytes, reason: str)`` for what was not applied.
    """
    cdef sd_extractor *x
    cdef int root_fd
    cdef bint finished

    def __cinit__(self, target, *, bint overlay=False, bint _no_openat2=False):
        cdef sd_error err
        cdef sd_extract_opts opts
        self.x = NULL
        self.root_fd = -1
        self.finished = False
        if isinstance(target, int):
            self.root_fd = os.dup(target)
        else:
            self.root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        opts.overlay = overlay
        opts.no_openat2 = _no_openat2
        sd_error_clear(&err)
        self.x = sd_extractor_new(self.root_fd, &opts, &err)
        if self.x == NULL:
            os.close(self.root_fd)
            self.root_fd = -1
            raise_sd_error(&err, "extract")

    def __dealloc__(self):
        if self.x != NULL:
            sd_extractor_free(self.x)
            self.x = NULL
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    cdef int _check(self) except -1:
        if self.x == NULL:
            raise ValueError("extract: the extractor is closed")
        return 0

    def feed(self, const unsigned char[::1] buf not None):
        """Consume a chunk of the tar stream (any buffer: bytes, bytearray, memoryview)."""
        cdef sd_error err
        cdef int rc
        cdef size_t n = buf.shape[0]
        self._check()
        if n == 0:
            return
        sd_error_clear(&err)
        # releases the GIL: the chunk is written to disk (file creation, writes, chown)
        with nogil:
            rc = sd_extractor_feed(self.x, &buf[0], n, &err)
        if rc < 0:
            raise_sd_error(&err, "extract")

    def finish(self):
        """End of stream: checks the end blocks, then sets directory modes and mtimes."""
        cdef sd_error err
        cdef int rc
        self._check()
        sd_error_clear(&err)
        # releases the GIL: one chmod and utimensat per directory of the layer
        with nogil:
            rc = sd_extractor_finish(self.x, &err)
        if rc < 0:
            raise_sd_error(&err, "extract")
        self.finished = True

    @property
    def stats(self):
        """Counters: entries, files, dirs, whiteouts, bytes, holes, skipped, stream."""
        self._check()
        cdef const sd_extract_stats *s = sd_extractor_stats(self.x)
        return {"entries": s.entries, "files": s.files, "dirs": s.dirs,
                "whiteouts": s.whiteouts, "bytes": s.bytes, "holes": s.holes,
                "skipped": s.skipped, "stream": s.stream}

    @property
    def skipped(self):
        """[(path, reason)] for entries (or xattrs) that were not applied."""
        self._check()
        cdef size_t n = 0
        cdef const uint8_t *p = sd_extractor_skipped(self.x, &n)
        cdef size_t off = 0
        cdef uint32_t hdr[2]
        out = []
        while off + 8 <= n:
            memcpy(hdr, p + off, 8)
            out.append(((<const char *>p)[off + 8:off + 8 + hdr[1]],
                        _SKIP_REASONS.get(hdr[0], "skipped")))
            off += 8 + hdr[1]
        return out

    def close(self):
        """Free the C extractor and close the target descriptor (idempotent)."""
        if self.x != NULL:
            sd_extractor_free(self.x)
            self.x = NULL
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
