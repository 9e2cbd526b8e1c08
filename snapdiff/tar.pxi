# Binding for csrc/sd_tar.h: see that header.

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport malloc

from snapdiff.includes.sd_tar cimport (
    SD_TAR_ENTRY, SD_TAR_OPAQUE, SD_TAR_WHITEOUT, sd_tar_opts, sd_tar_skipped, sd_tar_writer,
    sd_tar_writer_add_items, sd_tar_writer_free, sd_tar_writer_hashes, sd_tar_writer_new,
    sd_tar_writer_offset, sd_tar_writer_read, sd_tar_writer_skipped,
)

TAR_ENTRY = SD_TAR_ENTRY
TAR_WHITEOUT = SD_TAR_WHITEOUT
TAR_OPAQUE = SD_TAR_OPAQUE


cdef class TarWriter:
    """A layer tar stream of items under a root directory (csrc/sd_tar.h).

    ``TarWriter(root, timestamp=None, read_chunk=0, hash_content=False)`` opens ``root``;
    ``add_items`` takes ``(path: bytes, kind)`` pairs in the order they are to be written
    (``add_item_arrays`` the same as columns); ``readinto(buf)`` / ``read(size)`` then give
    the stream, ending with an empty read; with ``hash_content``, ``content_hashes()`` then
    gives each file's XXH3-128, computed on the way.  Owns the C writer and the root's
    descriptor: ``close()`` (or the context manager) releases both.
    """
    cdef sd_tar_writer *w
    cdef int root_fd
    cdef bint busy

    def __cinit__(self):
        self.w = NULL
        self.root_fd = -1
        self.busy = False

    def __init__(self, root, *, timestamp=None, size_t read_chunk=0, bint hash_content=False):
        cdef sd_error err
        cdef sd_tar_opts opts
        sd_error_clear(&err)
        if self.w != NULL or self.root_fd >= 0:
            raise RuntimeError("write layer: TarWriter.__init__ called twice")
        if timestamp is not None and timestamp < 0:
            raise ValueError(f"write layer: timestamp {timestamp}: must be >= 0")
        opts.timestamp = -1 if timestamp is None else <int64_t>timestamp
        opts.read_chunk = read_chunk
        opts.hash_content = hash_content
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.w = sd_tar_writer_new(self.root_fd, &opts, &err)
        if self.w == NULL:
            os.close(self.root_fd)
            self.root_fd = -1
            raise_sd_error(&err, "write layer")

    cdef int _check(self) except -1:
        if self.w == NULL:
            raise ValueError("write layer: the tar writer is closed")
        if self.busy:
            raise RuntimeError("write layer: the tar writer is in use by another thread")
        return 0

    def add_items(self, items):
        """Append ``(path, kind)`` pairs; every path is checked before any is added."""
        cdef sd_error err
        cdef list paths = []
        cdef bytearray kinds = bytearray()
        cdef Py_ssize_t n, i
        cdef uint64_t off = 0
        cdef uint64_t *offs
        cdef uint32_t *lens
        cdef bytes blob
        cdef int rc
        self._check()
        for path, kind in items:
            if not isinstance(path, bytes):
                path = os.fsencode(path)
            if len(path) > 0xFFFFFFFF:
                raise _errors.UnsafeLayerError("write layer: add item: path over 4 GiB")
            paths.append(path)
            kinds.append(int(kind))
        n = len(paths)
        if n == 0:
            return
        blob = b"".join(paths)
        offs = <uint64_t *>malloc(n * sizeof(uint64_t))
        lens = <uint32_t *>malloc(n * sizeof(uint32_t))
        if offs == NULL or lens == NULL:
            free(offs)
            free(lens)
            raise MemoryError()
        for i in range(n):
            offs[i] = off
            lens[i] = <uint32_t>len(<bytes>paths[i])
            off += lens[i]
        sd_error_clear(&err)
        rc = sd_tar_writer_add_items(self.w, <const uint8_t *><const char *>blob, offs, lens,
                                     <const uint8_t *><char *>kinds, n, &err)
        free(offs)
        free(lens)
        if rc < 0:
            raise_sd_error(&err, "write layer")

    def add_item_arrays(self, const uint8_t[::1] blob not None,
                        const uint64_t[::1] offs not None, const uint32_t[::1] lens not None,
                        const uint8_t[::1] kinds not None):
        """Append items given as columns: item i is blob[offs[i]:offs[i] + lens[i]] of kind
        kinds[i] (no Python object per item)."""
        cdef sd_error err
        cdef size_t n = offs.shape[0], i
        cdef int rc
        self._check()
        if <size_t>lens.shape[0] != n or <size_t>kinds.shape[0] != n:
            raise ValueError("write layer: add items: columns of different lengths")
        for i in range(n):
            if offs[i] > <uint64_t>blob.shape[0] or lens[i] > <uint64_t>blob.shape[0] - offs[i]:
                raise ValueError(f"write layer: add items: item {i} is outside the blob")
        if n == 0:
            return
        sd_error_clear(&err)
        rc = sd_tar_writer_add_items(self.w, &blob[0] if blob.shape[0] else <const uint8_t *>"",
                                     &offs[0], &lens[0], &kinds[0], n, &err)
        if rc < 0:
            raise_sd_error(&err, "write layer")

    def content_hashes(self):
        """After the stream ended (with hash_content): ``(hashes, hashed)``, 16 bytes and one
        flag byte per item; the flag is 1 where the stream carried a file's content.
        None when not available."""
        cdef const uint8_t *h
        cdef const uint8_t *f
        cdef size_t n
        self._check()
        n = sd_tar_writer_hashes(self.w, &h, &f)
        if n == 0:
            return None
        return (<const char *>h)[:16 * n], (<const char *>f)[:n]

    def readinto(self, buf):
        """Fill ``buf`` (a writable buffer) with the next bytes of the stream; returns how many
        (fewer than len(buf) only at the end, 0 once it has ended)."""
        cdef unsigned char[::1] view = buf
        cdef size_t cap = view.shape[0]
        cdef size_t n = 0
        cdef uint8_t *p
        cdef sd_error err
        cdef int rc
        self._check()
        if cap == 0:
            return 0
        p = &view[0]
        sd_error_clear(&err)
        self.busy = True
        try:
            with nogil:  # reads files and copies up to `cap` bytes: never hold the GIL here
                rc = sd_tar_writer_read(self.w, p, cap, &n, &err)
        finally:
            self.busy = False
        if rc < 0:
            raise_sd_error(&err, "write layer")
        return n

    def read(self, Py_ssize_t size=1 << 20):
        """The next ``size`` bytes of the stream (fewer at the end, b"" once it has ended)."""
        if size <= 0:
            raise ValueError(f"read: size {size}: must be > 0")
        buf = bytearray(size)
        n = self.readinto(buf)
        del buf[n:]
        return bytes(buf)

    @property
    def offset(self):
        """Bytes of the stream produced so far."""
        self._check()
        return sd_tar_writer_offset(self.w)

    @property
    def skipped(self):
        """Entries left out so far, as ``(path: bytes, reason: str)`` (sockets)."""
        cdef const sd_tar_skipped *s
        cdef const uint8_t *paths
        cdef size_t n, i
        self._check()
        n = sd_tar_writer_skipped(self.w, &s, &paths)
        return [((<const char *>paths)[s[i].path_off:s[i].path_off + s[i].path_len],
                 (<bytes>s[i].reason).decode()) for i in range(n)]

    def close(self):
        """Free the writer and close the root; safe to call twice."""
        if self.busy:
            raise RuntimeError("write layer: the tar writer is in use by another thread")
        sd_tar_writer_free(self.w)
        self.w = NULL
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __dealloc__(self):
        sd_tar_writer_free(self.w)
        if self.root_fd >= 0:
            os.close(self.root_fd)
