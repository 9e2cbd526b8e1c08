# Binding for csrc/sd_walk.h, csrc/sd_index.h and csrc/sd_cancel.h: walk, hash, index ops.
# Included by _core.pyx.

from libc.errno cimport errno as c_errno
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memset
from posix.fcntl cimport O_CLOEXEC, O_DIRECTORY, O_RDONLY, open as c_open
from posix.unistd cimport close as c_close

from snapdiff.includes.sd_cancel cimport sd_cancel_begin, sd_cancel_end
from snapdiff.includes.sd_index cimport (
    SD_DIFF_IGNORE_MTIME, sd_change, sd_index_compare_pairs, sd_index_diff, sd_index_find,
    sd_index_join, sd_index_parents, sd_index_stat_changed, sd_index_validate, sd_path_cmp,
)
from snapdiff.includes.sd_buf cimport sd_buf, sd_buf_free, sd_buf_steal
from snapdiff.includes.sd_walk cimport (
    sd_entry, sd_hash_entries, sd_hash_fd, sd_walk,
    sd_walk_opts, sd_walk_problem, sd_walk_result, sd_walk_result_free,
)

ENTRY_SIZE = sizeof(sd_entry)
CHANGE_SIZE = sizeof(sd_change)


cdef int _open_dir(object path) except -1:
    cdef bytes p = os.fsencode(path)
    cdef const char *cp = p
    cdef int fd
    with nogil:
        fd = c_open(cp, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if fd < 0:
        en = c_errno
        raise OSError(en, f"open '{os.fsdecode(p)}': {os.strerror(en)}", os.fsdecode(p))
    return fd


cdef list _problems(sd_walk_result *r):
    """The walk's problems as a list of (path bytes, errno, op str)."""
    cdef size_t n = r.problems.len // sizeof(sd_walk_problem)
    cdef sd_walk_problem *p = <sd_walk_problem *>r.problems.data
    cdef size_t i
    out = []
    for i in range(n):
        path = (<char *>r.problem_paths.data)[p[i].path_off:p[i].path_off + p[i].path_len]
        out.append((path, p[i].errnum, (<bytes>p[i].op).decode()))
    return out


cdef object _steal(sd_buf *b):
    cdef size_t n
    cdef uint8_t *p = sd_buf_steal(b, &n)
    return _own(p, n)


def walk(path, *, bint one_file_system=True, bint xattrs=True, overlay_prefix=None):
    """Walk the tree under `path`.

    Returns (entries, paths, extra, problems): three buffer objects (struct sd_entry[],
    the path blob, the link-target/xattr blob) and a list of (path, errno, op) for
    entries that could not be read.  With `overlay_prefix` (b"trusted.overlay." or
    b"user.overlay."), overlay's xattrs become entry flags instead of xattrs.  The GIL is
    released for the whole walk; SIGINT stops it between directories."""
    cdef sd_walk_result r
    cdef sd_walk_opts opts
    cdef sd_error err
    cdef int rc, slot
    cdef volatile int cancel = 0
    memset(&r, 0, sizeof(r))
    opts.one_file_system = one_file_system
    opts.xattrs = xattrs
    cdef bytes ovl = bytes(overlay_prefix) if overlay_prefix is not None else None
    opts.overlay_prefix = <const char *>ovl if ovl is not None else NULL
    sd_error_clear(&err)
    r.cancel = &cancel
    cdef int fd = _open_dir(path)
    try:
        # the walk does only syscalls and memory work: release the GIL
        with nogil:
            slot = sd_cancel_begin(&cancel)
            rc = sd_walk(fd, &opts, &r, &err)
            sd_cancel_end(slot)
        if rc < 0:
            raise_sd_error(&err, f"walk '{os.fsdecode(path)}'")
        problems = _problems(&r)
        return _steal(&r.entries), _steal(&r.paths), _steal(&r.extra), problems
    finally:
        sd_walk_result_free(&r)
        c_close(fd)


def hash_entries(root, uint8_t[::1] entries not None, const uint8_t[::1] paths not None,
                 const int64_t[::1] idx not None, int threads):
    """Hash the regular files entries[idx] under `root` on `threads` threads, in place.
    Returns the problems met (path, errno, op); op "changed" means the size changed."""
    cdef sd_walk_result r
    cdef sd_error err
    cdef int rc, slot
    cdef volatile int cancel = 0
    cdef size_t n_entries = entries.shape[0] // sizeof(sd_entry)
    cdef size_t k
    for k in range(<size_t>idx.shape[0]):
        if idx[k] < 0 or <size_t>idx[k] >= n_entries:
            raise IndexError(f"hash: entry index {idx[k]} out of range")
    memset(&r, 0, sizeof(r))
    r.cancel = &cancel
    sd_error_clear(&err)
    cdef int fd = _open_dir(root)
    cdef sd_entry *ep = <sd_entry *>&entries[0] if n_entries else NULL
    cdef const uint8_t *pp = &paths[0] if paths.shape[0] else <const uint8_t *>""
    cdef const int64_t *ip = &idx[0] if idx.shape[0] else NULL
    try:
        # hashing reads file contents on several threads: release the GIL
        with nogil:
            slot = sd_cancel_begin(&cancel)
            rc = sd_hash_entries(fd, ep, pp, ip, idx.shape[0], threads, &r, &err)
            sd_cancel_end(slot)
        if rc < 0:
            raise_sd_error(&err, f"hash '{os.fsdecode(root)}'")
        return _problems(&r)
    finally:
        sd_walk_result_free(&r)
        c_close(fd)


def hash_file(path):
    """XXH3-128 of a file's content (16 bytes, canonical big-endian)."""
    cdef uint8_t out[16]
    cdef uint64_t n = 0
    cdef sd_error err
    cdef int rc
    sd_error_clear(&err)
    f = open(path, "rb")
    cdef int fd = f.fileno()
    try:
        with nogil:
            rc = sd_hash_fd(fd, out, &n, &err)
        if rc < 0:
            raise_sd_error(&err, f"hash '{os.fsdecode(path)}'")
        return bytes(out[:16])
    finally:
        f.close()


cdef inline const sd_entry *_ents(const uint8_t[::1] b) noexcept nogil:
    return <const sd_entry *>&b[0] if b.shape[0] else NULL


cdef inline const uint8_t *_blob(const uint8_t[::1] b) noexcept nogil:
    return &b[0] if b.shape[0] else <const uint8_t *>""


def path_cmp(bytes a not None, bytes b not None):
    """-1, 0 or 1: the order of two relative paths in a TreeIndex."""
    return sd_path_cmp(a, len(a), b, len(b))


def index_find(const uint8_t[::1] entries not None, const uint8_t[::1] paths not None,
               bytes key not None):
    """Position of the entry with path `key`, or -1 (binary search)."""
    return sd_index_find(_ents(entries), entries.shape[0] // sizeof(sd_entry), _blob(paths),
                         key, len(key))


def index_validate(const uint8_t[::1] entries not None, const uint8_t[::1] paths not None,
                   size_t extra_len):
    cdef sd_error err
    cdef int rc
    sd_error_clear(&err)
    with nogil:
        rc = sd_index_validate(_ents(entries), entries.shape[0] // sizeof(sd_entry),
                               paths.shape[0], extra_len, _blob(paths), &err)
    if rc < 0:
        e = _error_exception(&err, None)
        raise _errors.IndexFormatError(str(e))


def index_join(const uint8_t[::1] a not None, const uint8_t[::1] pa not None,
               const uint8_t[::1] b not None, const uint8_t[::1] pb not None,
               int64_t[::1] out not None):
    """out[j] = position in a of b's entry j, or -1 (a merge of two sorted indexes)."""
    cdef size_t nb = b.shape[0] // sizeof(sd_entry)
    if <size_t>out.shape[0] != nb:
        raise ValueError("index_join: out has the wrong length")
    with nogil:
        sd_index_join(_ents(a), a.shape[0] // sizeof(sd_entry), _blob(pa),
                      _ents(b), nb, _blob(pb), &out[0] if nb else NULL)


def index_diff(const uint8_t[::1] a not None, const uint8_t[::1] pa not None,
               const uint8_t[::1] xa not None,
               const uint8_t[::1] b not None, const uint8_t[::1] pb not None,
               const uint8_t[::1] xb not None, *, bint ignore_mtime=False):
    """The changes from a to b as a buffer of struct sd_change {ia, ib, kind, fields}."""
    cdef sd_buf out
    cdef sd_error err
    cdef int rc
    cdef unsigned flags = SD_DIFF_IGNORE_MTIME if ignore_mtime else 0
    memset(&out, 0, sizeof(out))
    sd_error_clear(&err)
    try:
        with nogil:
            rc = sd_index_diff(_ents(a), a.shape[0] // sizeof(sd_entry), _blob(pa), _blob(xa),
                               _ents(b), b.shape[0] // sizeof(sd_entry), _blob(pb), _blob(xb),
                               flags, &out, &err)
        if rc < 0:
            raise_sd_error(&err, "diff")
        return _steal(&out)
    finally:
        sd_buf_free(&out)


def index_stat_changed(const uint8_t[::1] a not None, const uint8_t[::1] b not None,
                       const int64_t[::1] b_to_a not None):
    """Positions in b of regular files whose stat data differs from a's at equal size."""
    cdef sd_buf out
    cdef sd_error err
    cdef int rc
    cdef size_t nb = b.shape[0] // sizeof(sd_entry)
    if <size_t>b_to_a.shape[0] != nb:
        raise ValueError("index_stat_changed: b_to_a has the wrong length")
    memset(&out, 0, sizeof(out))
    sd_error_clear(&err)
    try:
        with nogil:
            rc = sd_index_stat_changed(_ents(a), _ents(b), nb,
                                       &b_to_a[0] if nb else NULL, &out, &err)
        if rc < 0:
            raise_sd_error(&err, "diff")
        return _steal(&out)
    finally:
        sd_buf_free(&out)


def index_parents(const uint8_t[::1] entries not None, const uint8_t[::1] paths not None,
                  int64_t[::1] out not None):
    """out[i] = position of entry i's parent directory, or -1."""
    cdef size_t n = entries.shape[0] // sizeof(sd_entry)
    if <size_t>out.shape[0] != n:
        raise ValueError("index_parents: out has the wrong length")
    with nogil:
        sd_index_parents(_ents(entries), n, _blob(paths), &out[0] if n else NULL)


def index_compare_pairs(const uint8_t[::1] a not None, const uint8_t[::1] xa not None,
                        const int64_t[::1] ia not None,
                        const uint8_t[::1] b not None, const uint8_t[::1] xb not None,
                        const int64_t[::1] ib not None, uint32_t[::1] out not None,
                        *, bint ignore_mtime=False):
    """out[k] = SD_DIFF_* bits telling a[ia[k]] from b[ib[k]]."""
    cdef size_t n = ia.shape[0], k
    cdef size_t na = a.shape[0] // sizeof(sd_entry), nb = b.shape[0] // sizeof(sd_entry)
    if <size_t>ib.shape[0] != n or <size_t>out.shape[0] != n:
        raise ValueError("index_compare_pairs: lengths differ")
    for k in range(n):
        if ia[k] < 0 or <size_t>ia[k] >= na or ib[k] < 0 or <size_t>ib[k] >= nb:
            raise IndexError("index_compare_pairs: position out of range")
    if n == 0:
        return
    with nogil:
        sd_index_compare_pairs(_ents(a), _blob(xa), &ia[0], _ents(b), _blob(xb), &ib[0], n,
                               SD_DIFF_IGNORE_MTIME if ignore_mtime else 0, &out[0])
