/* sd_walk.c: the tree walker and the parallel content hasher.
 *
 * The walk is depth-first over directory fds: each directory is opened relative to its
 * parent with O_NOFOLLOW, its names are read with getdents64 and sorted, and each child is
 * examined with fstatat(AT_SYMLINK_NOFOLLOW).  No absolute path is ever built for a
 * syscall, so trees deeper than PATH_MAX work; the relative path of each entry is kept in a
 * buffer only to be recorded.
 */
#include "sd_walk.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

void sd_walk_result_free(struct sd_walk_result *r)
{
    sd_buf_free(&r->entries);
    sd_buf_free(&r->paths);
    sd_buf_free(&r->extra);
    sd_buf_free(&r->problems);
    sd_buf_free(&r->problem_paths);
}

static int add_problem(struct sd_walk_result *r, const uint8_t *path, size_t len, int errnum,
                       const char *op)
{
    struct sd_walk_problem p = {
        .path_off = r->problem_paths.len, .path_len = (uint32_t)len, .errnum = errnum, .op = op,
    };
    if (sd_buf_append(&r->problem_paths, path, len) < 0)
        return -1;
    return sd_buf_append(&r->problems, &p, sizeof p);
}

/* ---- safe open ----------------------------------------------------------------------- */

static int open_by_components(int root_fd, const uint8_t *path, size_t len, int flags,
                              struct sd_error *err)
{
    char name[NAME_MAX + 1];
    int dfd = root_fd;
    size_t i = 0;
    while (i < len) {
        size_t j = i;
        while (j < len && path[j] != '/')
            j++;
        size_t n = j - i;
        if (n == 0 || n > NAME_MAX) {
            int e = n ? ENAMETOOLONG : EINVAL;
            if (dfd != root_fd)
                close(dfd);
            return sd_error_os(err, e, "openat", (const char *)path, len);
        }
        memcpy(name, path + i, n);
        name[n] = '\0';
        int last = j >= len;
        int fd = openat(dfd, name,
                        last ? flags | O_NOFOLLOW | O_CLOEXEC
                             : O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        int e = errno;
        if (dfd != root_fd)
            close(dfd);
        if (fd < 0)
            return sd_error_os(err, e, "openat", (const char *)path, len);
        dfd = fd;
        i = j + 1;
    }
    if (dfd == root_fd)
        return sd_error_os(err, EINVAL, "openat", (const char *)path, len);
    return dfd;
}

int sd_open_beneath(int root_fd, const uint8_t *path, size_t len, int flags,
                    struct sd_error *err)
{
    if (len > 0 && len < PATH_MAX) {
        char buf[PATH_MAX];
        memcpy(buf, path, len);
        buf[len] = '\0';
        struct open_how how = {
            .flags = (uint64_t)(flags | O_NOFOLLOW | O_CLOEXEC),
            .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
        };
        int fd = (int)syscall(SYS_openat2, root_fd, buf, &how, sizeof how);
        if (fd >= 0)
            return fd;
        if (errno != ENOSYS && errno != EAGAIN)
            return sd_error_os(err, errno, "openat", (const char *)path, len);
    }
    return open_by_components(root_fd, path, len, flags, err);
}

/* ---- the walk ------------------------------------------------------------------------ */

struct walker {
    const struct sd_walk_opts *opts;
    struct sd_walk_result *out;
    struct sd_error *err;
    dev_t root_dev;
    struct sd_buf path;     /* the current relative path, no NUL */
    struct sd_buf xbuf;     /* scratch for xattr names */
    struct sd_buf vbuf;     /* scratch for one xattr value */
};

struct xname {
    const char *name;
    size_t len;
};

static int cmp_xname(const void *a, const void *b)
{
    return strcmp(((const struct xname *)a)->name, ((const struct xname *)b)->name);
}

/* The *xattrat syscalls (Linux 6.13) read xattrs of a name relative to a directory fd.
 * Older kernels answer ENOSYS, and we go through /proc/self/fd/DIRFD/NAME instead, which
 * costs a procfs path lookup per entry. */
#ifndef SYS_listxattrat
#if defined(__x86_64__) || defined(__aarch64__) || defined(__riscv)
#define SYS_listxattrat 465
#define SYS_getxattrat 464
#endif
#endif

struct sd_xattr_args {
    uint64_t value;
    uint32_t size;
    uint32_t flags;
};

static atomic_int have_xattrat = 1;

static ssize_t x_list(int dfd, const char *name, char *buf, size_t size)
{
#ifdef SYS_listxattrat
    if (atomic_load_explicit(&have_xattrat, memory_order_relaxed)) {
        long r = syscall(SYS_listxattrat, dfd, name, AT_SYMLINK_NOFOLLOW, buf, size);
        if (r >= 0 || errno != ENOSYS)
            return (ssize_t)r;
        atomic_store(&have_xattrat, 0);
    }
#endif
    char proc[64 + NAME_MAX];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d/%s", dfd, name);
    return llistxattr(proc, buf, size);
}

static ssize_t x_get(int dfd, const char *name, const char *attr, void *buf, size_t size)
{
#ifdef SYS_getxattrat
    if (atomic_load_explicit(&have_xattrat, memory_order_relaxed)) {
        struct sd_xattr_args a = {.value = (uint64_t)(uintptr_t)buf, .size = (uint32_t)size};
        long r = syscall(SYS_getxattrat, dfd, name, AT_SYMLINK_NOFOLLOW, attr, &a, sizeof a);
        if (r >= 0 || errno != ENOSYS)
            return (ssize_t)r;
        atomic_store(&have_xattrat, 0);
    }
#endif
    char proc[64 + NAME_MAX];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d/%s", dfd, name);
    return lgetxattr(proc, attr, buf, size);
}

/* Append the xattr records of dfd/name to out->extra; returns the bytes appended, -1 when
 * out of memory, -2 on a syscall failure (errno in *errnum). */
static long read_xattrs(struct walker *w, int dfd, const char *name, uint8_t *flags,
                        int *errnum)
{
    const char *ovl = w->opts->overlay_prefix;
    size_t ovl_len = ovl ? strlen(ovl) : 0;
    ssize_t n;
    for (;;) {
        if (sd_buf_reserve(&w->xbuf, 4096) < 0)
            return -1;
        n = x_list(dfd, name, (char *)w->xbuf.data, w->xbuf.cap);
        if (n >= 0)
            break;
        if (errno == ERANGE) {
            ssize_t need = x_list(dfd, name, NULL, 0);
            if (need < 0) {
                *errnum = errno;
                return -2;
            }
            if (sd_buf_reserve(&w->xbuf, (size_t)need + 1) < 0)
                return -1;
            continue;
        }
        if (errno == ENOTSUP || errno == EOPNOTSUPP)
            return 0;
        *errnum = errno;
        return -2;
    }
    if (n == 0)
        return 0;
    /* names are NUL-terminated, back to back; sort them for a canonical order */
    struct xname small[16], *names = small;
    size_t count = 0;
    for (ssize_t i = 0; i < n; i += (ssize_t)strlen((char *)w->xbuf.data + i) + 1)
        count++;
    if (count > 16 && (names = malloc(count * sizeof *names)) == NULL)
        return -1;
    size_t k = 0;
    for (ssize_t i = 0; i < n; k++) {
        names[k].name = (const char *)w->xbuf.data + i;
        names[k].len = strlen(names[k].name);
        i += (ssize_t)names[k].len + 1;
    }
    qsort(names, count, sizeof *names, cmp_xname);
    long total = 0;
    for (k = 0; k < count; k++) {
        ssize_t v;
        for (;;) {
            if (sd_buf_reserve(&w->vbuf, 256) < 0)
                goto nomem;
            v = x_get(dfd, name, names[k].name, w->vbuf.data, w->vbuf.cap);
            if (v >= 0)
                break;
            if (errno == ERANGE) {
                ssize_t need = x_get(dfd, name, names[k].name, NULL, 0);
                if (need >= 0 && sd_buf_reserve(&w->vbuf, (size_t)need + 1) < 0)
                    goto nomem;
                if (need >= 0)
                    continue;
            }
            if (errno == ENODATA)
                break; /* removed since listed */
            *errnum = errno;
            if (names != small)
                free(names);
            return -2;
        }
        if (v < 0)
            continue;
        if (ovl && strncmp(names[k].name, ovl, ovl_len) == 0) {
            const char *what = names[k].name + ovl_len;
            if (strcmp(what, "opaque") == 0 && v == 1 && w->vbuf.data[0] == 'y')
                *flags |= SD_ENTRY_OPAQUE;
            else if (strcmp(what, "redirect") == 0)
                *flags |= SD_ENTRY_REDIRECT;
            else if (strcmp(what, "metacopy") == 0)
                *flags |= SD_ENTRY_METACOPY;
            else if (strcmp(what, "whiteout") == 0)
                *flags |= SD_ENTRY_XWHITEOUT;
            continue; /* overlay's own bookkeeping (origin, impure, ...) is not content */
        }
        uint32_t hdr[2] = {(uint32_t)names[k].len, (uint32_t)v};
        if (sd_buf_append(&w->out->extra, hdr, sizeof hdr) < 0 ||
            sd_buf_append(&w->out->extra, names[k].name, names[k].len) < 0 ||
            sd_buf_append(&w->out->extra, w->vbuf.data, (size_t)v) < 0)
            goto nomem;
        total += (long)(sizeof hdr + names[k].len + (size_t)v);
    }
    if (names != small)
        free(names);
    return total;
nomem:
    if (names != small)
        free(names);
    return -1;
}

struct dirent64_hdr {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int nomem(struct walker *w)
{
    return sd_error_set(w->err, SD_ERR_NOMEM, "walk", (const char *)w->path.data, w->path.len,
                        "out of memory");
}

static int walk_dir(struct walker *w, int dfd);

/* Record one entry named `name` in directory dfd; w->path already holds its path. */
static int visit(struct walker *w, int dfd, const char *name)
{
    struct sd_walk_result *out = w->out;
    struct stat st;
    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno == ENOENT)
            return 0; /* vanished since it was listed */
        if (add_problem(out, w->path.data, w->path.len, errno, "fstatat") < 0)
            return nomem(w);
        return 0;
    }
    struct sd_entry e;
    memset(&e, 0, sizeof e);
    e.path_off = out->paths.len;
    e.path_len = (uint32_t)w->path.len;
    e.extra_off = out->extra.len;
    e.size = (uint64_t)st.st_size;
    e.mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
    e.ctime_ns = (int64_t)st.st_ctim.tv_sec * 1000000000LL + st.st_ctim.tv_nsec;
    e.ino = st.st_ino;
    e.dev = st.st_dev;
    e.rdev = st.st_rdev;
    e.mode = st.st_mode;
    e.uid = st.st_uid;
    e.gid = st.st_gid;
    e.nlink = (uint32_t)st.st_nlink;

    if (S_ISLNK(st.st_mode)) {
        size_t cap = (size_t)st.st_size + 1;
        if (cap < 256)
            cap = 256;
        for (;;) {
            if (sd_buf_reserve(&out->extra, cap) < 0)
                return nomem(w);
            ssize_t n = readlinkat(dfd, name, (char *)out->extra.data + out->extra.len, cap);
            if (n < 0) {
                if (errno == ENOENT)
                    return 0;
                if (add_problem(out, w->path.data, w->path.len, errno, "readlinkat") < 0)
                    return nomem(w);
                break;
            }
            if ((size_t)n < cap) {
                e.link_len = (uint32_t)n;
                out->extra.len += (size_t)n;
                break;
            }
            cap *= 2; /* the link grew since fstatat */
        }
    }
    if (w->opts->xattrs) {
        int errnum = 0;
        long n = read_xattrs(w, dfd, name, &e.flags, &errnum);
        if (n == -1)
            return nomem(w);
        if (n == -2) {
            if (errnum == ENOENT)
                return 0;
            if (add_problem(out, w->path.data, w->path.len, errnum, "listxattr") < 0)
                return nomem(w);
        } else {
            e.xattr_len = (uint32_t)n;
        }
    }
    if (sd_buf_append(&out->paths, w->path.data, w->path.len) < 0 ||
        sd_buf_append(&out->entries, &e, sizeof e) < 0)
        return nomem(w);

    if (S_ISDIR(st.st_mode) && (!w->opts->one_file_system || st.st_dev == w->root_dev)) {
        int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) {
            if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP)
                return 0; /* replaced or removed since fstatat */
            if (add_problem(out, w->path.data, w->path.len, errno, "openat") < 0)
                return nomem(w);
            return 0;
        }
        int r = walk_dir(w, fd);
        close(fd);
        return r;
    }
    return 0;
}

static int walk_dir(struct walker *w, int dfd)
{
    if (w->out->cancel && *w->out->cancel)
        return sd_error_set(w->err, SD_ERR_INTERRUPTED, "walk", NULL, 0, "interrupted");
    struct sd_buf names = {0};
    struct sd_buf ptrs = {0};
    char dbuf[32768];
    int ret = 0;
    for (;;) {
        long n = syscall(SYS_getdents64, dfd, dbuf, sizeof dbuf);
        if (n == 0)
            break;
        if (n < 0) {
            if (errno == ENOENT)
                goto out; /* directory removed while we read it */
            if (add_problem(w->out, w->path.data, w->path.len, errno, "getdents64") < 0)
                ret = nomem(w);
            goto out;
        }
        for (long off = 0; off < n;) {
            struct dirent64_hdr *d = (struct dirent64_hdr *)(dbuf + off);
            off += d->d_reclen;
            const char *nm = d->d_name;
            if (nm[0] == '.' && (nm[1] == '\0' || (nm[1] == '.' && nm[2] == '\0')))
                continue;
            if (sd_buf_append(&names, nm, strlen(nm) + 1) < 0) {
                ret = nomem(w);
                goto out;
            }
        }
    }
    size_t count = 0;
    for (size_t i = 0; i < names.len; i += strlen((char *)names.data + i) + 1)
        count++;
    if (sd_buf_reserve(&ptrs, count * sizeof(char *) + 1) < 0) {
        ret = nomem(w);
        goto out;
    }
    char **v = (char **)ptrs.data;
    size_t k = 0;
    for (size_t i = 0; i < names.len; i += strlen((char *)names.data + i) + 1)
        v[k++] = (char *)names.data + i;
    qsort(v, count, sizeof *v, cmp_name);

    size_t base = w->path.len;
    for (k = 0; k < count; k++) {
        size_t nl = strlen(v[k]);
        w->path.len = base;
        if ((base && sd_buf_append(&w->path, "/", 1) < 0) ||
            sd_buf_append(&w->path, v[k], nl) < 0) {
            ret = nomem(w);
            break;
        }
        if ((ret = visit(w, dfd, v[k])) < 0)
            break;
    }
    w->path.len = base;
out:
    sd_buf_free(&names);
    sd_buf_free(&ptrs);
    return ret;
}

int sd_walk(int root_fd, const struct sd_walk_opts *opts, struct sd_walk_result *out,
            struct sd_error *err)
{
    struct stat st;
    if (fstat(root_fd, &st) < 0)
        return sd_error_os(err, errno, "fstat", "", 0);
    if (!S_ISDIR(st.st_mode))
        return sd_error_os(err, ENOTDIR, "walk", "", 0);
    struct walker w = {.opts = opts, .out = out, .err = err, .root_dev = st.st_dev};
    /* walk_dir reads the directory from its current offset: use a fresh description */
    int fd = openat(root_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return sd_error_os(err, errno, "openat", ".", 1);
    int r = walk_dir(&w, fd);
    close(fd);
    sd_buf_free(&w.path);
    sd_buf_free(&w.xbuf);
    sd_buf_free(&w.vbuf);
    return r;
}

/* ---- hashing ------------------------------------------------------------------------- */

#define HASH_BUF (1u << 20)
static const uint8_t zeros[65536];

static int hash_range_read(int fd, XXH3_state_t *s, uint8_t *buf, uint64_t from, uint64_t to,
                           uint64_t *got)
{
    uint64_t pos = from;
    while (pos < to) {
        size_t want = to - pos < HASH_BUF ? (size_t)(to - pos) : HASH_BUF;
        ssize_t n = pread(fd, buf, want, (off_t)pos);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0)
            break; /* shrank */
        XXH3_128bits_update(s, buf, (size_t)n);
        pos += (uint64_t)n;
        *got += (uint64_t)n;
    }
    return 0;
}

static void hash_zeros(XXH3_state_t *s, uint64_t n, uint64_t *got)
{
    while (n) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        XXH3_128bits_update(s, zeros, k);
        n -= k;
        *got += k;
    }
}

/* Hash fd's bytes; for a sparse file, holes are hashed as zeros without reading them. */
static int hash_fd_buf(int fd, uint8_t out[16], uint64_t *bytes, uint8_t *buf, int *errnum)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        *errnum = errno;
        return -1;
    }
    XXH3_state_t s;
    XXH3_128bits_reset(&s);
    uint64_t got = 0;
    uint64_t size = (uint64_t)st.st_size;
    int sparse = (uint64_t)st.st_blocks * 512 < size;
    if (!sparse) {
        /* read to EOF: a file that grew is read whole and its size compared by the caller */
        for (;;) {
            ssize_t n = read(fd, buf, HASH_BUF);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                *errnum = errno;
                return -1;
            }
            if (n == 0)
                break;
            XXH3_128bits_update(&s, buf, (size_t)n);
            got += (uint64_t)n;
        }
    } else {
        uint64_t pos = 0;
        while (pos < size) {
            off_t data = lseek(fd, (off_t)pos, SEEK_DATA);
            if (data < 0) {
                if (errno != ENXIO) {
                    *errnum = errno;
                    return -1;
                }
                data = (off_t)size; /* only a hole remains */
            }
            if ((uint64_t)data > size)
                data = (off_t)size;
            hash_zeros(&s, (uint64_t)data - pos, &got);
            pos = (uint64_t)data;
            if (pos >= size)
                break;
            off_t hole = lseek(fd, data, SEEK_HOLE);
            if (hole < 0) {
                *errnum = errno;
                return -1;
            }
            if ((uint64_t)hole > size)
                hole = (off_t)size;
            if (hash_range_read(fd, &s, buf, pos, (uint64_t)hole, &got) < 0) {
                *errnum = errno;
                return -1;
            }
            if (got < (uint64_t)hole)
                break; /* shrank while reading */
            pos = (uint64_t)hole;
        }
        /* the size changed while we hashed: report a count that matches no size */
        struct stat st2;
        if (fstat(fd, &st2) == 0 && (uint64_t)st2.st_size != size)
            got = UINT64_MAX;
    }
    XXH128_hash_t h = XXH3_128bits_digest(&s);
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, h);
    memcpy(out, c.digest, 16);
    *bytes = got;
    return 0;
}

int sd_hash_fd(int fd, uint8_t out[16], uint64_t *bytes_read, struct sd_error *err)
{
    uint8_t *buf = malloc(HASH_BUF);
    if (buf == NULL)
        return sd_error_set(err, SD_ERR_NOMEM, "hash", NULL, 0, "out of memory");
    int errnum = 0;
    int r = hash_fd_buf(fd, out, bytes_read, buf, &errnum);
    free(buf);
    if (r < 0)
        return sd_error_os(err, errnum, "read", NULL, 0);
    return 0;
}

struct hash_job {
    int root_fd;
    struct sd_entry *entries;
    const uint8_t *paths;
    const int64_t *idx;
    size_t n_idx;
    atomic_size_t next;
    pthread_mutex_t lock; /* guards problems */
    struct sd_walk_result *problems;
    int failed_nomem;
};

static void hash_problem(struct hash_job *j, const struct sd_entry *e, int errnum, const char *op)
{
    pthread_mutex_lock(&j->lock);
    if (add_problem(j->problems, j->paths + e->path_off, e->path_len, errnum, op) < 0)
        j->failed_nomem = 1;
    pthread_mutex_unlock(&j->lock);
}

static void *hash_worker(void *arg)
{
    struct hash_job *j = arg;
    uint8_t *buf = malloc(HASH_BUF);
    if (buf == NULL) {
        j->failed_nomem = 1;
        return NULL;
    }
    for (;;) {
        size_t k = atomic_fetch_add(&j->next, 1);
        if (k >= j->n_idx)
            break;
        if (j->problems->cancel && *j->problems->cancel)
            break;
        struct sd_entry *e = &j->entries[j->idx[k]];
        e->flags &= (uint8_t)~(SD_ENTRY_HASHED | SD_ENTRY_HASH_FAILED);
        if (!S_ISREG(e->mode))
            continue;
        struct sd_error err;
        int fd = sd_open_beneath(j->root_fd, j->paths + e->path_off, e->path_len,
                                 O_RDONLY | O_NOATIME, &err);
        if (fd < 0 && err.errnum == EPERM)
            fd = sd_open_beneath(j->root_fd, j->paths + e->path_off, e->path_len, O_RDONLY,
                                 &err);
        if (fd < 0) {
            e->flags |= SD_ENTRY_HASH_FAILED;
            hash_problem(j, e, err.errnum, "open");
            continue;
        }
        uint64_t got = 0;
        int errnum = 0;
        if (hash_fd_buf(fd, e->hash, &got, buf, &errnum) < 0) {
            e->flags |= SD_ENTRY_HASH_FAILED;
            hash_problem(j, e, errnum, "read");
        } else if (got != e->size) {
            e->flags |= SD_ENTRY_HASH_FAILED;
            hash_problem(j, e, 0, "changed");
        } else {
            e->flags |= SD_ENTRY_HASHED;
        }
        close(fd);
    }
    free(buf);
    return NULL;
}

int sd_hash_entries(int root_fd, struct sd_entry *entries, const uint8_t *paths,
                    const int64_t *idx, size_t n_idx, int threads,
                    struct sd_walk_result *problems_out, struct sd_error *err)
{
    struct hash_job j = {
        .root_fd = root_fd, .entries = entries, .paths = paths, .idx = idx, .n_idx = n_idx,
        .problems = problems_out,
    };
    atomic_init(&j.next, 0);
    pthread_mutex_init(&j.lock, NULL);
    if (threads < 1)
        threads = 1;
    if ((size_t)threads > n_idx)
        threads = n_idx ? (int)n_idx : 1;
    pthread_t tids[256];
    if (threads > 256)
        threads = 256;
    int started = 0;
    for (int i = 1; i < threads; i++) {
        if (pthread_create(&tids[started], NULL, hash_worker, &j) != 0)
            break;
        started++;
    }
    hash_worker(&j); /* the calling thread works too */
    for (int i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    pthread_mutex_destroy(&j.lock);
    if (j.failed_nomem)
        return sd_error_set(err, SD_ERR_NOMEM, "hash", NULL, 0, "out of memory");
    if (problems_out->cancel && *problems_out->cancel)
        return sd_error_set(err, SD_ERR_INTERRUPTED, "hash", NULL, 0, "interrupted");
    return 0;
}
