# cython: language_level=3
"""snapdiff._core: the thin boundary between Python and the C core in csrc/.

It converts arguments, releases the GIL around every call that does I/O or hashing,
and turns a filled ``struct sd_error`` into one Python exception (raise_sd_error).
One .pxi per area of csrc/ is included below.
"""

import os

from snapdiff import errors as _errors

from snapdiff.includes.sd_error cimport (
    SD_ERR_CHANGED, SD_ERR_FORMAT, SD_ERR_INTERRUPTED, SD_ERR_NOMEM, SD_ERR_OS,
    SD_ERR_UNSAFE, sd_error, sd_error_clear,
)


cdef object _error_exception(const sd_error *e, object context):
    """Build the Python exception for a filled sd_error; `context` prefixes the message."""
    cdef bytes path = e.path
    op = (<bytes>e.op).decode() if e.op != NULL else ""
    spath = os.fsdecode(path)
    prefix = f"{context}: " if context else ""
    where = f"{op} '{spath}'" if spath else op
    if e.code == SD_ERR_OS:
        msg = f"{prefix}{where}: {os.strerror(e.errnum)}"
        exc = OSError(e.errnum, msg)
        exc.filename = spath or None
        return exc
    text = (<bytes>e.msg).decode("utf-8", "replace")
    msg = f"{prefix}{where}: {text}" if where else f"{prefix}{text}"
    if e.code == SD_ERR_FORMAT:
        return _errors.LayerFormatError(msg)
    if e.code == SD_ERR_UNSAFE:
        return _errors.UnsafeLayerError(msg)
    if e.code == SD_ERR_CHANGED:
        return _errors.FileChangedError(msg)
    if e.code == SD_ERR_NOMEM:
        return MemoryError(msg)
    if e.code == SD_ERR_INTERRUPTED:
        return KeyboardInterrupt()
    return _errors.SnapdiffError(msg)


cdef int raise_sd_error(const sd_error *e, object context=None) except -1:
    """The one place where C errors become Python exceptions.

    A syscall failure becomes the builtin OSError subclass for its errno (OSError(errno, ...)
    picks FileNotFoundError, PermissionError, ...); a domain failure a snapdiff class."""
    raise _error_exception(e, context)


cdef class _OwnedBuffer:
    """A malloc'd block handed over by C; exposes it through the buffer protocol so numpy
    arrays and bytes views own it without a copy."""
    cdef void *data
    cdef Py_ssize_t length
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]

    def __cinit__(self):
        self.data = NULL
        self.length = 0

    def __dealloc__(self):
        free(self.data)

    def __len__(self):
        return self.length

    def __getbuffer__(self, Py_buffer *view, int flags):
        self.shape[0] = self.length
        self.strides[0] = 1
        view.buf = self.data if self.data != NULL else <void *>&self.length
        view.obj = self
        view.len = self.length
        view.readonly = 0
        view.itemsize = 1
        view.format = "B"
        view.ndim = 1
        view.shape = self.shape
        view.strides = self.strides
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer *view):
        pass


cdef _OwnedBuffer _own(void *data, size_t length):
    cdef _OwnedBuffer b = _OwnedBuffer.__new__(_OwnedBuffer)
    b.data = data
    b.length = length
    return b


from libc.stdlib cimport free

include "walk.pxi"
include "tar.pxi"
include "extract.pxi"
include "spawn.pxi"
