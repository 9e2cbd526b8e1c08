/* sd_extract: safe, streaming extraction of a layer tar.  See sd_extract.h for the rules. */
#include "sd_extract.h"
#include "sd_buf.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef RESOLVE_NO_MAGICLINKS
#define RESOLVE_NO_MAGICLINKS 0x02
#endif
#ifndef RESOLVE_IN_ROOT
#define RESOLVE_IN_ROOT 0x10
#endif

/* struct open_how of openat2(2), declared here so no kernel header is needed */
struct sd_open_how {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};

#define BLK 4096u                   /* hole granularity: one filesystem block */
#define META_MAX (16u << 20)        /* largest PAX or GNU long-name header we accept */
#define NAME_MAX_BYTES 255
#define OPENAT2_PATH_MAX 4000       /* longer parent paths resolve component by component */

/* ------------------------------------------------------------------------------------------
 * Growable buffers (local: the shared sd_buf lives in sd_walk.c, owned by another area) */

/* ------------------------------------------------------------------------------------------
 * The set of paths this layer touches: duplicate detection and whiteout rules. */

#define F_EXPLICIT 1u  /* an entry of this layer */
#define F_DIR 2u       /* ... which is a directory */
#define F_IMPLICIT 4u  /* an ancestor of an entry or whiteout of this layer */
#define F_WHITEOUT 8u  /* deleted by this layer */

struct prec {
    uint64_t hash;
    uint64_t off;    /* into arena */
    uint32_t len;
    uint32_t flags;
};

struct pset {
    struct prec *recs;   /* owned */
    size_t n, cap;
    uint32_t *slots;     /* owned; index + 1, 0 = empty */
    size_t nslots;       /* power of two */
    struct sd_buf arena;   /* path bytes */
};

static int pset_grow(struct pset *s)
{
    size_t ns = s->nslots ? s->nslots * 2 : 1024;
    uint32_t *slots = calloc(ns, sizeof *slots);
    if (slots == NULL)
        return -1;
    for (size_t i = 0; i < s->n; i++) {
        size_t j = s->recs[i].hash & (ns - 1);
        while (slots[j])
            j = (j + 1) & (ns - 1);
        slots[j] = (uint32_t)(i + 1);
    }
    free(s->slots);
    s->slots = slots;
    s->nslots = ns;
    return 0;
}

/* Index of path in the set, creating it (flags 0) when `create`; -1 if absent, -2 on ENOMEM. */
static long pset_get(struct pset *s, const uint8_t *p, size_t len, int create)
{
    if (s->nslots == 0 && pset_grow(s) < 0)
        return -2;
    uint64_t h = XXH3_64bits(p, len);
    size_t j = h & (s->nslots - 1);
    while (s->slots[j]) {
        struct prec *r = &s->recs[s->slots[j] - 1];
        if (r->hash == h && r->len == len && memcmp(s->arena.data + r->off, p, len) == 0)
            return (long)(s->slots[j] - 1);
        j = (j + 1) & (s->nslots - 1);
    }
    if (!create)
        return -1;
    if (s->n >= UINT32_MAX - 1)
        return -2;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        struct prec *recs = realloc(s->recs, cap * sizeof *recs);
        if (recs == NULL)
            return -2;
        s->recs = recs;
        s->cap = cap;
    }
    size_t off = s->arena.len;
    if (sd_buf_append_z(&s->arena, p, len) < 0)
        return -2;
    s->recs[s->n] = (struct prec){.hash = h, .off = off, .len = (uint32_t)len, .flags = 0};
    s->slots[j] = (uint32_t)(s->n + 1);
    s->n++;
    if (s->n * 2 >= s->nslots && pset_grow(s) < 0)
        return -2;
    return (long)(s->n - 1);
}

static void pset_free(struct pset *s)
{
    free(s->recs);
    free(s->slots);
    sd_buf_free(&s->arena);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------------------------------------
 * Extended headers */

struct pax {
    int has_path, has_linkpath, has_size, has_mtime, has_uid, has_gid;
    struct sd_buf path, linkpath;
    uint64_t size, uid, gid;
    int64_t sec;
    long nsec;
    struct sd_buf xattrs;  /* records: u32 name_len, u32 value_len, name, NUL, value */
};

static void pax_reset(struct pax *p)
{
    p->has_path = p->has_linkpath = p->has_size = p->has_mtime = p->has_uid = p->has_gid = 0;
    p->path.len = p->linkpath.len = p->xattrs.len = 0;
}

static void pax_free(struct pax *p)
{
    sd_buf_free(&p->path);
    sd_buf_free(&p->linkpath);
    sd_buf_free(&p->xattrs);
}

/* A deferred directory: mode and mtime are applied by finish, deepest first. */
struct drec {
    uint32_t rec;     /* pset index: its path */
    uint32_t depth;
    uint32_t mode;
    uint32_t pad;
    int64_t sec;
    int64_t nsec;
};

enum { ST_HEADER, ST_META, ST_DATA, ST_SKIP, ST_END, ST_FAILED };

struct sd_extractor {
    int root_fd;                 /* borrowed */
    struct sd_extract_opts opts;
    int is_root;
    int have_openat2;
    int state;

    uint8_t hdr[512];
    size_t hdr_fill;
    int zero_blocks;

    char meta_type;
    uint64_t meta_left;
    struct sd_buf meta;
    uint64_t skip_left;

    struct pax g, x;             /* global and per-entry PAX attributes */
    int has_longname, has_longlink;
    struct sd_buf longname, longlink;

    /* the current entry */
    struct sd_buf path;            /* normalized, NUL-terminated */
    struct sd_buf link;            /* symlink target or normalized hard link target */
    struct sd_buf xm;              /* merged xattr records of the current entry */
    size_t base_off;             /* offset of the last component in path */
    uint32_t mode;
    uint64_t uid, gid, size;
    int64_t sec;
    long nsec;

    /* the regular file being written */
    int fd;
    uint64_t data_left;
    uint64_t foff;               /* file offset of the next byte */
    uint64_t wend;               /* end of the last byte written (not a hole) */
    uint8_t *blk;                /* owned, BLK bytes: a block that straddles two chunks */
    size_t blk_fill;

    /* cached parent directory of recent entries */
    int pfd;                     /* owned unless == root_fd; -1 when invalid */
    struct sd_buf ppath;
    struct sd_buf last_parent;     /* parent whose ancestors are registered in `set` */
    int last_parent_valid;

    struct sd_buf tmp;
    struct pset set;
    struct sd_buf dirs;            /* struct drec[] */
    struct sd_buf skipped;
    struct sd_extract_stats stats;
    struct sd_error saved;       /* the error that failed the extractor */
};

static int nomem(struct sd_error *err)
{
    return sd_error_set(err, SD_ERR_NOMEM, "extract", NULL, 0, "out of memory");
}

static int os_err(struct sd_extractor *x, struct sd_error *err, const char *op)
{
    return sd_error_os(err, errno, op, (const char *)x->path.data, x->path.len);
}

static int unsafe(struct sd_extractor *x, struct sd_error *err, const char *fmt, const char *a)
{
    return sd_error_set(err, SD_ERR_UNSAFE, "extract", (const char *)x->path.data, x->path.len,
                        fmt, a);
}

static int add_skip(struct sd_extractor *x, uint32_t reason, struct sd_error *err)
{
    uint32_t hdr[2] = {reason, (uint32_t)x->path.len};
    if (sd_buf_append_z(&x->skipped, hdr, sizeof hdr) < 0 ||
        sd_buf_append_z(&x->skipped, x->path.data, x->path.len) < 0)
        return nomem(err);
    x->stats.skipped++;
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Path resolution under the root */

static long sys_openat2(int dfd, const char *path, uint64_t flags, uint64_t resolve)
{
    struct sd_open_how how = {.flags = flags, .mode = 0, .resolve = resolve};
    return syscall(SYS_openat2, dfd, path, &how, sizeof how);
}

static void close_dir(struct sd_extractor *x, int fd)
{
    if (fd >= 0 && fd != x->root_fd)
        close(fd);
}

/* Open the directory at `path` (normalized, relative; empty = the root) under the root.
 * With `create`, missing components are made (mode 0755).  The fd is O_PATH; release it with
 * close_dir.  Symlinks in the path resolve as if the root were "/" (openat2 RESOLVE_IN_ROOT);
 * without openat2 a symlink component is refused. */
static int resolve_dir(struct sd_extractor *x, const uint8_t *path, size_t len, int create,
                       int *out, struct sd_error *err)
{
    const int oflags = O_PATH | O_DIRECTORY | O_CLOEXEC;
    const uint64_t how = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    if (len == 0) {
        *out = x->root_fd;
        return 0;
    }
    if (sd_buf_set_z(&x->tmp, path, len) < 0)
        return nomem(err);
    char *p = (char *)x->tmp.data;
    if (x->have_openat2 && len < OPENAT2_PATH_MAX) {
        long fd = sys_openat2(x->root_fd, p, oflags, how);
        if (fd >= 0) {
            *out = (int)fd;
            return 0;
        }
        if (errno == ENOSYS)
            x->have_openat2 = 0;
        else if (errno != ENOENT && errno != ENOTDIR && errno != ELOOP && errno != EAGAIN &&
                 errno != EXDEV)
            return sd_error_os(err, errno, "openat2", p, len);
    }
    /* component by component: slow, but creates what is missing and handles long paths */
    int cur = x->root_fd;
    size_t i = 0;
    while (i < len) {
        size_t j = i;
        while (j < len && p[j] != '/')
            j++;
        p[j] = '\0';
        int fd = openat(cur, p + i, oflags | O_NOFOLLOW);
        if (fd < 0 && errno == ENOENT && create) {
            if (mkdirat(cur, p + i, 0755) < 0 && errno != EEXIST) {
                int e = errno;
                close_dir(x, cur);
                return sd_error_os(err, e, "mkdirat", p, j);
            }
            fd = openat(cur, p + i, oflags | O_NOFOLLOW);
        }
        if (fd < 0 && (errno == ENOTDIR || errno == ELOOP)) {
            struct stat st;
            int e = errno;
            if (fstatat(cur, p + i, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) {
                if (!x->have_openat2 || j >= OPENAT2_PATH_MAX) {
                    close_dir(x, cur);
                    return sd_error_set(err, SD_ERR_UNSAFE, "extract", p, j,
                                        "a parent is a symlink (refused where the path cannot "
                                        "be resolved with openat2 RESOLVE_IN_ROOT)");
                }
                /* resolve the prefix up to and including the link, scoped to the root */
                fd = (int)sys_openat2(x->root_fd, p, oflags, how);
                if (fd < 0) {
                    close_dir(x, cur);
                    return sd_error_set(err, SD_ERR_UNSAFE, "extract", p, j,
                                        "a parent is a symlink that does not lead to a "
                                        "directory inside the root");
                }
            } else {
                errno = e;
            }
        }
        if (fd < 0) {
            int e = errno;
            close_dir(x, cur);
            return sd_error_os(err, e, "openat", p, j);
        }
        close_dir(x, cur);
        cur = fd;
        if (j < len)
            p[j] = '/';
        i = j + 1;
    }
    *out = cur;
    return 0;
}

/* Forget the cached parent if `path` is it or one of its ancestors (it is being removed). */
static void cache_drop_under(struct sd_extractor *x, const uint8_t *path, size_t len)
{
    if (x->pfd < 0)
        return;
    if (len == 0 || (x->ppath.len >= len && memcmp(x->ppath.data, path, len) == 0 &&
                     (x->ppath.len == len || x->ppath.data[len] == '/'))) {
        close_dir(x, x->pfd);
        x->pfd = -1;
    }
}

/* The parent directory of the current entry, created if missing; cached across entries. */
static int entry_parent(struct sd_extractor *x, int create, int *out, struct sd_error *err)
{
    size_t plen = x->base_off ? x->base_off - 1 : 0;
    if (x->pfd >= 0 && x->ppath.len == plen && memcmp(x->ppath.data, x->path.data, plen) == 0) {
        *out = x->pfd;
        return 0;
    }
    int fd;
    if (resolve_dir(x, x->path.data, plen, create, &fd, err) < 0)
        return -1;
    if (x->pfd >= 0)
        close_dir(x, x->pfd);
    x->pfd = fd;
    if (sd_buf_set_z(&x->ppath, x->path.data, plen) < 0)
        return nomem(err);
    *out = fd;
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Removal */

/* Remove name under dfd, recursively for a directory; never follows a symlink. */
static int rm_rf(int dfd, const char *name, struct sd_error *err)
{
    if (unlinkat(dfd, name, 0) == 0 || errno == ENOENT)
        return 0;
    if (errno != EISDIR && errno != EPERM)
        return sd_error_os(err, errno, "unlinkat", name, strlen(name));
    int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return sd_error_os(err, errno, "openat", name, strlen(name));
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        int e = errno;
        close(fd);
        return sd_error_os(err, e, "fdopendir", name, strlen(name));
    }
    struct dirent *de;
    int rc = 0;
    while (rc == 0 && (errno = 0, de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        rc = rm_rf(dirfd(d), de->d_name, err);
    }
    if (rc == 0 && errno != 0)
        rc = sd_error_os(err, errno, "readdir", name, strlen(name));
    closedir(d);
    if (rc == 0 && unlinkat(dfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
        rc = sd_error_os(err, errno, "rmdir", name, strlen(name));
    return rc;
}

/* Make room at the current entry's name for a new non-directory. */
static int clear_slot(struct sd_extractor *x, int pfd, struct sd_error *err)
{
    cache_drop_under(x, x->path.data, x->path.len);
    if (rm_rf(pfd, (const char *)x->path.data + x->base_off, err) < 0) {
        /* report the full path, not just the name */
        int e = err->errnum;
        const char *op = err->op;
        return sd_error_os(err, e, op, (const char *)x->path.data, x->path.len);
    }
    return 0;
}

/* Opaque directory `dpath` (open as dfd): remove what does not belong to this layer. */
static int prune(struct sd_extractor *x, int dfd, struct sd_buf *dpath, struct sd_error *err)
{
    int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return sd_error_os(err, errno, "openat", (const char *)dpath->data, dpath->len);
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        int e = errno;
        close(fd);
        return sd_error_os(err, e, "fdopendir", (const char *)dpath->data, dpath->len);
    }
    size_t base = dpath->len;
    struct dirent *de;
    int rc = 0;
    while (rc == 0 && (errno = 0, de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        dpath->len = base;
        if ((base && sd_buf_append_z(dpath, "/", 1) < 0) ||
            sd_buf_append_z(dpath, de->d_name, strlen(de->d_name)) < 0) {
            rc = nomem(err);
            break;
        }
        long idx = pset_get(&x->set, dpath->data, dpath->len, 0);
        uint32_t fl = idx >= 0 ? x->set.recs[idx].flags : 0;
        if (!(fl & (F_EXPLICIT | F_IMPLICIT))) {
            cache_drop_under(x, dpath->data, dpath->len);
            if (rm_rf(dirfd(d), de->d_name, err) < 0)
                rc = sd_error_os(err, err->errnum, err->op, (const char *)dpath->data,
                                 dpath->len);
            continue;
        }
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            rc = sd_error_os(err, errno, "fstatat", (const char *)dpath->data, dpath->len);
            break;
        }
        if (S_ISDIR(st.st_mode)) {
            /* a directory of this layer, or one it writes into: keep, but empty it of the
             * lower layers' entries too */
            int cfd = openat(dirfd(d), de->d_name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (cfd < 0) {
                rc = sd_error_os(err, errno, "openat", (const char *)dpath->data, dpath->len);
                break;
            }
            rc = prune(x, cfd, dpath, err);
            close(cfd);
        }
    }
    if (rc == 0 && errno != 0)
        rc = sd_error_os(err, errno, "readdir", (const char *)dpath->data, base);
    closedir(d);
    dpath->len = base;
    if (dpath->data)
        dpath->data[base] = '\0';
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * Metadata */

static int apply_xattrs(struct sd_extractor *x, int fd, int via_proc, struct sd_error *err)
{
    const uint8_t *p = x->xm.data, *end = x->xm.data + x->xm.len;
    char proc[64];
    if (via_proc)
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    while (p < end) {
        uint32_t nl, vl;
        memcpy(&nl, p, 4);
        memcpy(&vl, p + 4, 4);
        const char *name = (const char *)p + 8;
        const uint8_t *val = p + 8 + nl + 1;
        p = val + vl;
        int rc = via_proc ? setxattr(proc, name, val, vl, 0) : fsetxattr(fd, name, val, vl, 0);
        if (rc < 0) {
            if (!x->is_root && (errno == EPERM || errno == ENOTSUP || errno == EACCES)) {
                if (add_skip(x, SD_SKIP_XATTR, err) < 0)
                    return -1;
                continue;
            }
            return os_err(x, err, "setxattr");
        }
    }
    return 0;
}

/* xattrs of a non-regular, non-directory entry: through an O_PATH fd and /proc */
static int apply_xattrs_at(struct sd_extractor *x, int pfd, struct sd_error *err)
{
    if (x->xm.len == 0)
        return 0;
    int fd = openat(pfd, (const char *)x->path.data + x->base_off, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return os_err(x, err, "openat");
    int rc = apply_xattrs(x, fd, 1, err);
    close(fd);
    return rc;
}

static int set_mtime_at(struct sd_extractor *x, int pfd, struct sd_error *err)
{
    struct timespec ts[2] = {{x->sec, x->nsec}, {x->sec, x->nsec}};
    if (utimensat(pfd, (const char *)x->path.data + x->base_off, ts, AT_SYMLINK_NOFOLLOW) < 0)
        return os_err(x, err, "utimensat");
    return 0;
}

static int chown_at(struct sd_extractor *x, int pfd, struct sd_error *err)
{
    if (!x->is_root)
        return 0;
    if (fchownat(pfd, (const char *)x->path.data + x->base_off, (uid_t)x->uid, (gid_t)x->gid,
                 AT_SYMLINK_NOFOLLOW) < 0)
        return os_err(x, err, "lchown");
    return 0;
}

static int defer_dir(struct sd_extractor *x, long rec, struct sd_error *err)
{
    uint32_t depth = 0;
    for (size_t i = 0; i < x->path.len; i++)
        depth += x->path.data[i] == '/';
    struct drec d = {.rec = (uint32_t)rec, .depth = x->path.len ? depth + 1 : 0,
                     .mode = x->mode, .sec = x->sec, .nsec = x->nsec};
    if (sd_buf_append_z(&x->dirs, &d, sizeof d) < 0)
        return nomem(err);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Number and name parsing */

/* A numeric ustar field: octal, or GNU base-256 when the high bit of the first byte is set. */
static int parse_num(const uint8_t *f, size_t n, int64_t *out)
{
    if (f[0] & 0x80) {
        int neg = f[0] & 0x40;
        uint64_t v = f[0] & 0x3f;
        if (neg)
            v = (uint64_t)-1 << 6 | v;
        for (size_t i = 1; i < n; i++) {
            if (!neg && v >> 55)
                return -1;
            v = v << 8 | f[i];
        }
        *out = (int64_t)v;
        return 0;
    }
    size_t i = 0;
    while (i < n && (f[i] == ' ' || f[i] == '\0'))
        i++;
    uint64_t v = 0;
    for (; i < n && f[i] >= '0' && f[i] <= '7'; i++) {
        if (v >> 60)
            return -1;
        v = v * 8 + (uint64_t)(f[i] - '0');
    }
    for (; i < n; i++)
        if (f[i] != ' ' && f[i] != '\0')
            return -1;
    *out = (int64_t)v;
    return 0;
}

static int parse_dec(const uint8_t *p, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    if (n == 0 || n > 19)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    *out = v;
    return 0;
}

/* PAX time: [-]SECONDS[.FRACTION] */
static int parse_time(const uint8_t *p, size_t n, int64_t *sec, long *nsec)
{
    int neg = n && p[0] == '-';
    size_t i = neg, dot = n;
    for (size_t k = i; k < n; k++)
        if (p[k] == '.') {
            dot = k;
            break;
        }
    uint64_t s;
    if (parse_dec(p + i, dot - i, &s) < 0 || s > (uint64_t)INT64_MAX / 2)
        return -1;
    long ns = 0;
    int digits = 0;
    for (size_t k = dot + 1; k < n; k++) {
        if (p[k] < '0' || p[k] > '9')
            return -1;
        if (digits < 9) {
            ns = ns * 10 + (p[k] - '0');
            digits++;
        }
    }
    for (; digits < 9; digits++)
        ns *= 10;
    if (neg) {
        *sec = -(int64_t)s - (ns ? 1 : 0);
        *nsec = ns ? 1000000000L - ns : 0;
    } else {
        *sec = (int64_t)s;
        *nsec = ns;
    }
    return 0;
}

static int fmt_err(struct sd_extractor *x, struct sd_error *err, const char *msg)
{
    return sd_error_set(err, SD_ERR_FORMAT, "tar header", (const char *)x->path.data,
                        x->path.len, "%s", msg);
}

static int parse_pax(struct sd_extractor *x, const uint8_t *p, size_t n, struct pax *out,
                     struct sd_error *err)
{
    while (n > 0) {
        size_t sp = 0;
        while (sp < n && sp < 20 && p[sp] != ' ')
            sp++;
        uint64_t rl;
        if (sp >= n || p[sp] != ' ' || parse_dec(p, sp, &rl) < 0 || rl <= sp + 1 || rl > n ||
            p[rl - 1] != '\n')
            return fmt_err(x, err, "malformed PAX record");
        const uint8_t *kv = p + sp + 1, *kend = p + rl - 1;
        const uint8_t *eq = memchr(kv, '=', (size_t)(kend - kv));
        if (eq == NULL)
            return fmt_err(x, err, "malformed PAX record (no '=')");
        size_t klen = (size_t)(eq - kv), vlen = (size_t)(kend - eq - 1);
        const uint8_t *v = eq + 1;
#define KEY(s) (klen == sizeof(s) - 1 && memcmp(kv, s, klen) == 0)
        if (KEY("path")) {
            out->has_path = vlen > 0;
            if (sd_buf_set_z(&out->path, v, vlen) < 0)
                return nomem(err);
        } else if (KEY("linkpath")) {
            out->has_linkpath = vlen > 0;
            if (sd_buf_set_z(&out->linkpath, v, vlen) < 0)
                return nomem(err);
        } else if (KEY("size")) {
            out->has_size = vlen > 0;
            if (vlen && parse_dec(v, vlen, &out->size) < 0)
                return fmt_err(x, err, "malformed PAX size");
        } else if (KEY("mtime")) {
            out->has_mtime = vlen > 0;
            if (vlen && parse_time(v, vlen, &out->sec, &out->nsec) < 0)
                return fmt_err(x, err, "malformed PAX mtime");
        } else if (KEY("uid")) {
            out->has_uid = vlen > 0;
            if (vlen && (parse_dec(v, vlen, &out->uid) < 0 || out->uid > UINT32_MAX))
                return fmt_err(x, err, "malformed PAX uid");
        } else if (KEY("gid")) {
            out->has_gid = vlen > 0;
            if (vlen && (parse_dec(v, vlen, &out->gid) < 0 || out->gid > UINT32_MAX))
                return fmt_err(x, err, "malformed PAX gid");
        } else if (klen > 13 && memcmp(kv, "SCHILY.xattr.", 13) == 0) {
            const uint8_t *name = kv + 13;
            uint32_t nl = (uint32_t)(klen - 13), vl = (uint32_t)vlen;
            if (memchr(name, '\0', nl) != NULL)
                return fmt_err(x, err, "xattr name contains a NUL byte");
            if (sd_buf_append_z(&out->xattrs, &nl, 4) < 0 || sd_buf_append_z(&out->xattrs, &vl, 4) < 0 ||
                sd_buf_append_z(&out->xattrs, name, nl) < 0 || sd_buf_append_z(&out->xattrs, "", 1) < 0 ||
                sd_buf_append_z(&out->xattrs, v, vl) < 0)
                return nomem(err);
        } else if (klen >= 11 && memcmp(kv, "GNU.sparse.", 11) == 0) {
            return sd_error_set(err, SD_ERR_FORMAT, "tar header", (const char *)x->path.data,
                                x->path.len, "GNU sparse entries are not supported in layers");
        }
#undef KEY
        p += rl;
        n -= rl;
    }
    return 0;
}

/* Is the xattr record `name` in the record list? */
static int xattr_has(const struct sd_buf *b, const char *name, uint32_t nl)
{
    const uint8_t *p = b->data, *end = b->data + b->len;
    while (p < end) {
        uint32_t l, vl;
        memcpy(&l, p, 4);
        memcpy(&vl, p + 4, 4);
        if (l == nl && memcmp(p + 8, name, nl) == 0)
            return 1;
        p += 8 + l + 1 + vl;
    }
    return 0;
}

/* x->xm = the entry's xattrs, then the global ones it does not override, minus overlay's. */
static int merge_xattrs(struct sd_extractor *x, struct sd_error *err)
{
    x->xm.len = 0;
    const struct sd_buf *src[2] = {&x->x.xattrs, &x->g.xattrs};
    for (int s = 0; s < 2; s++) {
        const uint8_t *p = src[s]->data, *end = src[s]->data + src[s]->len;
        while (p < end) {
            uint32_t nl, vl;
            memcpy(&nl, p, 4);
            memcpy(&vl, p + 4, 4);
            size_t rl = 8 + nl + 1 + vl;
            const char *name = (const char *)p + 8;
            int overlay_own = (nl >= 16 && memcmp(name, "trusted.overlay.", 16) == 0) ||
                              (nl >= 13 && memcmp(name, "user.overlay.", 13) == 0);
            if (overlay_own) {
                /* overlayfs's own markers never come from a layer: they would change what
                 * the overlay mount shows (opaque, redirect, metacopy) */
                if (add_skip(x, SD_SKIP_XATTR, err) < 0)
                    return -1;
            } else if (!(s == 1 && xattr_has(&x->x.xattrs, name, nl)) &&
                       !(s == 0 && xattr_has(&x->xm, name, nl))) {
                if (sd_buf_append_z(&x->xm, p, rl) < 0)
                    return nomem(err);
            }
            p += rl;
        }
    }
    return 0;
}

/* Rewrite raw into out: components joined by '/', no empty or "." component. */
static int normalize(struct sd_extractor *x, const uint8_t *raw, size_t len, struct sd_buf *out,
                     const char *what, struct sd_error *err)
{
    out->len = 0;
    if (sd_buf_reserve(out, len + 1) < 0)
        return nomem(err);
    out->data[0] = '\0';
    if (len == 0)
        return sd_error_set(err, SD_ERR_UNSAFE, "extract", NULL, 0, "%s is empty", what);
    if (memchr(raw, '\0', len) != NULL)
        return sd_error_set(err, SD_ERR_UNSAFE, "extract", (const char *)raw, strnlen((const char *)raw, len),
                            "%s contains a NUL byte", what);
    if (raw[0] == '/')
        return sd_error_set(err, SD_ERR_UNSAFE, "extract", (const char *)raw, len,
                            "%s is absolute (layer paths are relative)", what);
    size_t i = 0;
    while (i < len) {
        size_t j = i;
        while (j < len && raw[j] != '/')
            j++;
        size_t cl = j - i;
        if (cl == 2 && raw[i] == '.' && raw[i + 1] == '.')
            return sd_error_set(err, SD_ERR_UNSAFE, "extract", (const char *)raw, len,
                                "%s has a '..' component", what);
        if (cl > NAME_MAX_BYTES)
            return sd_error_os(err, ENAMETOOLONG, "extract", (const char *)raw, len);
        if (cl > 0 && !(cl == 1 && raw[i] == '.')) {
            if (out->len)
                out->data[out->len++] = '/';
            memcpy(out->data + out->len, raw + i, cl);
            out->len += cl;
        }
        i = j + 1;
    }
    out->data[out->len] = '\0';
    (void)x;
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Entries */

/* Register the ancestors of the current path (up to base_off) as F_IMPLICIT; refuse when one
 * of them is deleted by this layer. */
static int register_ancestors(struct sd_extractor *x, struct sd_error *err)
{
    size_t plen = x->base_off ? x->base_off - 1 : 0;
    if (x->last_parent_valid && x->last_parent.len == plen &&
        memcmp(x->last_parent.data, x->path.data, plen) == 0)
        return 0;
    for (size_t i = 1; i <= plen; i++) {
        if (i < plen && x->path.data[i] != '/')
            continue;
        long idx = pset_get(&x->set, x->path.data, i, 1);
        if (idx < 0)
            return nomem(err);
        if (x->set.recs[idx].flags & F_WHITEOUT) {
            char anc[SD_ERR_MSG_MAX / 2];
            snprintf(anc, sizeof anc, "%.*s", (int)i, (const char *)x->path.data);
            return unsafe(x, err, "is under '%s', which this same layer deletes", anc);
        }
        x->set.recs[idx].flags |= F_IMPLICIT;
    }
    if (sd_buf_set_z(&x->last_parent, x->path.data, plen) < 0)
        return nomem(err);
    x->last_parent_valid = 1;
    return 0;
}

static int do_whiteout(struct sd_extractor *x, struct sd_error *err)
{
    /* x->path is the deleted path (".wh." already stripped) */
    if (register_ancestors(x, err) < 0)
        return -1;
    long idx = pset_get(&x->set, x->path.data, x->path.len, 1);
    if (idx < 0)
        return nomem(err);
    uint32_t fl = x->set.recs[idx].flags;
    if (fl & F_WHITEOUT)
        return unsafe(x, err, "%s", "whiteout appears twice in the layer");
    if (fl & F_EXPLICIT)
        return unsafe(x, err, "%s", "the layer has both a whiteout and an entry of this name");
    if (fl & F_IMPLICIT)
        return unsafe(x, err, "%s", "whiteout of a directory this same layer writes into");
    x->set.recs[idx].flags = F_WHITEOUT;
    x->stats.whiteouts++;
    const char *name = (const char *)x->path.data + x->base_off;
    int pfd;
    if (x->opts.overlay) {
        if (entry_parent(x, 1, &pfd, err) < 0)
            return -1;
        for (int attempt = 0;; attempt++) {
            if (mknodat(pfd, name, S_IFCHR | 0, makedev(0, 0)) == 0)
                break;
            if (errno != EEXIST || attempt)
                return os_err(x, err, "mknodat (overlay whiteout)");
            if (clear_slot(x, pfd, err) < 0)
                return -1;
        }
        if (chown_at(x, pfd, err) < 0 || set_mtime_at(x, pfd, err) < 0)
            return -1;
        return 0;
    }
    if (entry_parent(x, 0, &pfd, err) < 0) {
        if (err->code == SD_ERR_OS && (err->errnum == ENOENT || err->errnum == ENOTDIR)) {
            sd_error_clear(err);
            return 0;  /* nothing there to delete */
        }
        return -1;
    }
    return clear_slot(x, pfd, err);
}

static int do_opaque(struct sd_extractor *x, struct sd_error *err)
{
    /* x->path is "D/.wh..wh..opq"; the key keeps duplicates apart from D itself */
    if (register_ancestors(x, err) < 0)
        return -1;
    long idx = pset_get(&x->set, x->path.data, x->path.len, 1);
    if (idx < 0)
        return nomem(err);
    if (x->set.recs[idx].flags)
        return unsafe(x, err, "%s", "opaque marker appears twice in the layer");
    x->set.recs[idx].flags = F_EXPLICIT;
    x->stats.whiteouts++;
    size_t dlen = x->base_off ? x->base_off - 1 : 0;
    int dfd;
    if (resolve_dir(x, x->path.data, dlen, x->opts.overlay, &dfd, err) < 0) {
        if (!x->opts.overlay && err->code == SD_ERR_OS &&
            (err->errnum == ENOENT || err->errnum == ENOTDIR)) {
            sd_error_clear(err);
            return 0;  /* no such directory below: nothing to hide */
        }
        return -1;
    }
    int rc = 0;
    if (x->opts.overlay) {
        int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0 || fsetxattr(fd, "trusted.overlay.opaque", "y", 1, 0) < 0)
            rc = sd_error_os(err, errno, "setxattr trusted.overlay.opaque",
                             (const char *)x->path.data, dlen);
        if (fd >= 0)
            close(fd);
    } else {
        struct sd_buf d = {0};
        if (sd_buf_set_z(&d, x->path.data, dlen) < 0)
            rc = nomem(err);
        else
            rc = prune(x, dfd, &d, err);
        sd_buf_free(&d);
    }
    close_dir(x, dfd);
    return rc;
}

static int do_dir(struct sd_extractor *x, long rec, struct sd_error *err)
{
    x->stats.dirs++;
    if (x->path.len == 0) {  /* "./": the root itself */
        if (x->is_root && fchownat(x->root_fd, "", (uid_t)x->uid, (gid_t)x->gid,
                                   AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
            return os_err(x, err, "lchown");
        if (x->xm.len && apply_xattrs(x, x->root_fd, 0, err) < 0)
            return -1;
        return defer_dir(x, rec, err);
    }
    int pfd;
    if (entry_parent(x, 1, &pfd, err) < 0)
        return -1;
    const char *name = (const char *)x->path.data + x->base_off;
    if (mkdirat(pfd, name, 0700) < 0) {
        if (errno != EEXIST)
            return os_err(x, err, "mkdirat");
        struct stat st;
        if (fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            return os_err(x, err, "fstatat");
        if (!S_ISDIR(st.st_mode)) {
            if (clear_slot(x, pfd, err) < 0)
                return -1;
            if (mkdirat(pfd, name, 0700) < 0)
                return os_err(x, err, "mkdirat");
        }
    }
    if (chown_at(x, pfd, err) < 0)
        return -1;
    if (x->xm.len) {
        int fd = openat(pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            return os_err(x, err, "openat");
        int rc = apply_xattrs(x, fd, 0, err);
        close(fd);
        if (rc < 0)
            return -1;
    }
    return defer_dir(x, rec, err);
}

static int do_file_open(struct sd_extractor *x, struct sd_error *err)
{
    int pfd;
    if (entry_parent(x, 1, &pfd, err) < 0)
        return -1;
    const char *name = (const char *)x->path.data + x->base_off;
    for (int attempt = 0;; attempt++) {
        x->fd = openat(pfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (x->fd >= 0)
            break;
        if (errno != EEXIST || attempt)
            return os_err(x, err, "openat");
        if (clear_slot(x, pfd, err) < 0)
            return -1;
    }
    x->stats.files++;
    x->foff = x->wend = 0;
    x->blk_fill = 0;
    x->data_left = x->size;
    return 0;
}

static int pwrite_all(struct sd_extractor *x, const uint8_t *p, size_t n, uint64_t off,
                      struct sd_error *err)
{
    while (n > 0) {
        ssize_t w = pwrite(x->fd, p, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return os_err(x, err, "write");
        }
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    if (off > x->wend)
        x->wend = off;
    return 0;
}

static const uint8_t zero_block[BLK];

static inline int is_zero(const uint8_t *p)
{
    return memcmp(p, zero_block, BLK) == 0;
}

/* Write file content, leaving holes for aligned all-zero blocks. */
static int file_data(struct sd_extractor *x, const uint8_t *p, size_t n, struct sd_error *err)
{
    x->stats.bytes += n;
    while (n > 0) {
        if (x->blk_fill > 0 || n < BLK) {
            /* a block that straddles chunks, or the file's tail */
            size_t take = BLK - x->blk_fill < n ? BLK - x->blk_fill : n;
            memcpy(x->blk + x->blk_fill, p, take);
            x->blk_fill += take;
            x->foff += take;
            p += take;
            n -= take;
            if (x->blk_fill == BLK) {
                if (is_zero(x->blk))
                    x->stats.holes += BLK;
                else if (pwrite_all(x, x->blk, BLK, x->foff - BLK, err) < 0)
                    return -1;
                x->blk_fill = 0;
            }
            continue;
        }
        /* aligned whole blocks straight from the caller's buffer: runs of data, holes */
        size_t nb = n / BLK, i = 0;
        while (i < nb) {
            size_t j = i;
            if (is_zero(p + i * BLK)) {
                while (j < nb && is_zero(p + j * BLK))
                    j++;
                x->stats.holes += (j - i) * BLK;
            } else {
                while (j < nb && !is_zero(p + j * BLK))
                    j++;
                if (pwrite_all(x, p + i * BLK, (j - i) * BLK, x->foff + i * BLK, err) < 0)
                    return -1;
            }
            i = j;
        }
        x->foff += nb * BLK;
        p += nb * BLK;
        n -= nb * BLK;
    }
    return 0;
}

static int file_close(struct sd_extractor *x, struct sd_error *err)
{
    int rc = 0;
    if (x->blk_fill > 0) {
        int zero = 1;
        for (size_t i = 0; i < x->blk_fill && zero; i++)
            zero = x->blk[i] == 0;
        if (zero)
            x->stats.holes += x->blk_fill;
        else
            rc = pwrite_all(x, x->blk, x->blk_fill, x->foff - x->blk_fill, err);
        x->blk_fill = 0;
    }
    if (rc == 0 && x->wend < x->size && ftruncate(x->fd, (off_t)x->size) < 0)
        rc = os_err(x, err, "ftruncate");
    if (rc == 0 && x->is_root && fchown(x->fd, (uid_t)x->uid, (gid_t)x->gid) < 0)
        rc = os_err(x, err, "fchown");
    /* after chown, which clears setuid/setgid */
    if (rc == 0 && fchmod(x->fd, x->mode) < 0)
        rc = os_err(x, err, "fchmod");
    /* after chown, which drops security.capability */
    if (rc == 0 && x->xm.len)
        rc = apply_xattrs(x, x->fd, 0, err);
    if (rc == 0) {
        struct timespec ts[2] = {{x->sec, x->nsec}, {x->sec, x->nsec}};
        if (futimens(x->fd, ts) < 0)
            rc = os_err(x, err, "futimens");
    }
    if (close(x->fd) < 0 && rc == 0)
        rc = os_err(x, err, "close");
    x->fd = -1;
    return rc;
}

static int do_symlink(struct sd_extractor *x, struct sd_error *err)
{
    int pfd;
    if (entry_parent(x, 1, &pfd, err) < 0)
        return -1;
    const char *name = (const char *)x->path.data + x->base_off;
    for (int attempt = 0;; attempt++) {
        if (symlinkat((const char *)x->link.data, pfd, name) == 0)
            break;
        if (errno != EEXIST || attempt)
            return os_err(x, err, "symlinkat");
        if (clear_slot(x, pfd, err) < 0)
            return -1;
    }
    if (chown_at(x, pfd, err) < 0 || apply_xattrs_at(x, pfd, err) < 0 ||
        set_mtime_at(x, pfd, err) < 0)
        return -1;
    return 0;
}

static int do_hardlink(struct sd_extractor *x, struct sd_error *err)
{
    if (x->link.len == x->path.len && memcmp(x->link.data, x->path.data, x->path.len) == 0)
        return sd_error_set(err, SD_ERR_FORMAT, "extract", (const char *)x->path.data,
                            x->path.len, "hard link to itself");
    if (x->link.len == 0)
        return unsafe(x, err, "%s", "hard link to the root directory");
    size_t tb = x->link.len;
    while (tb > 0 && x->link.data[tb - 1] != '/')
        tb--;
    int tfd, pfd;
    if (resolve_dir(x, x->link.data, tb ? tb - 1 : 0, 0, &tfd, err) < 0) {
        if (err->code == SD_ERR_OS && err->errnum == ENOENT)
            return sd_error_set(err, SD_ERR_UNSAFE, "extract", (const char *)x->path.data,
                                x->path.len, "hard link target '%s' is not under the root",
                                (const char *)x->link.data);
        return -1;
    }
    int rc = entry_parent(x, 1, &pfd, err);
    const char *name = (const char *)x->path.data + x->base_off;
    for (int attempt = 0; rc == 0; attempt++) {
        if (linkat(tfd, (const char *)x->link.data + tb, pfd, name, 0) == 0)
            break;
        if (errno == ENOENT) {
            rc = sd_error_set(err, SD_ERR_UNSAFE, "extract", (const char *)x->path.data,
                              x->path.len, "hard link target '%s' is not under the root",
                              (const char *)x->link.data);
        } else if (errno != EEXIST || attempt) {
            rc = os_err(x, err, "linkat");
        } else {
            rc = clear_slot(x, pfd, err);
            if (rc == 0 && x->pfd < 0)
                rc = entry_parent(x, 1, &pfd, err);
        }
    }
    close_dir(x, tfd);
    return rc;
}

static int do_node(struct sd_extractor *x, char type, int64_t major, int64_t minor,
                   struct sd_error *err)
{
    mode_t kind = type == '3' ? S_IFCHR : type == '4' ? S_IFBLK : S_IFIFO;
    if (kind != S_IFIFO && !x->is_root)
        return add_skip(x, SD_SKIP_DEVICE, err);
    int pfd;
    if (entry_parent(x, 1, &pfd, err) < 0)
        return -1;
    const char *name = (const char *)x->path.data + x->base_off;
    dev_t dev = kind == S_IFIFO ? 0 : makedev((unsigned)major, (unsigned)minor);
    for (int attempt = 0;; attempt++) {
        if (mknodat(pfd, name, kind | 0600, dev) == 0)
            break;
        if (errno != EEXIST || attempt)
            return os_err(x, err, "mknodat");
        if (clear_slot(x, pfd, err) < 0)
            return -1;
    }
    if (chown_at(x, pfd, err) < 0)
        return -1;
    if (fchmodat(pfd, name, x->mode, AT_SYMLINK_NOFOLLOW) < 0)
        return os_err(x, err, "fchmodat");
    if (apply_xattrs_at(x, pfd, err) < 0 || set_mtime_at(x, pfd, err) < 0)
        return -1;
    return 0;
}

static uint64_t pad512(uint64_t n)
{
    return (512 - n % 512) % 512;
}

static void enter_skip(struct sd_extractor *x, uint64_t n)
{
    x->skip_left = n;
    x->state = n ? ST_SKIP : ST_HEADER;
}

/* A header block of a real entry: build its attributes and apply it. */
static int begin_entry(struct sd_extractor *x, char type, uint64_t hsize, struct sd_error *err)
{
    const uint8_t *h = x->hdr;
    int posix = memcmp(h + 257, "ustar\0", 6) == 0;
    int64_t v;

    /* name: PAX path > GNU long name > ustar prefix/name */
    const uint8_t *rp;
    size_t rl;
    uint8_t ustar_name[256 + 2];
    if (x->x.has_path) {
        rp = x->x.path.data;
        rl = x->x.path.len;
    } else if (x->has_longname) {
        rp = x->longname.data;
        rl = strnlen((const char *)x->longname.data, x->longname.len);
    } else {
        size_t nl = strnlen((const char *)h, 100), pl = posix ? strnlen((const char *)h + 345, 155) : 0;
        rl = 0;
        if (pl) {
            memcpy(ustar_name, h + 345, pl);
            ustar_name[pl] = '/';
            rl = pl + 1;
        }
        memcpy(ustar_name + rl, h, nl);
        rl += nl;
        rp = ustar_name;
    }
    int trailing_slash = rl > 0 && rp[rl - 1] == '/';
    if (normalize(x, rp, rl, &x->path, "name", err) < 0)
        return -1;

    /* link target */
    const uint8_t *lp;
    size_t ll;
    if (x->x.has_linkpath) {
        lp = x->x.linkpath.data;
        ll = x->x.linkpath.len;
    } else if (x->has_longlink) {
        lp = x->longlink.data;
        ll = strnlen((const char *)x->longlink.data, x->longlink.len);
    } else {
        lp = h + 157;
        ll = strnlen((const char *)h + 157, 100);
    }

    x->size = x->x.has_size ? x->x.size : hsize;
    if (parse_num(h + 100, 8, &v) < 0)
        return fmt_err(x, err, "bad mode field");
    x->mode = (uint32_t)v & 07777;
    if (x->x.has_uid || x->g.has_uid) {
        x->uid = x->x.has_uid ? x->x.uid : x->g.uid;
    } else {
        if (parse_num(h + 108, 8, &v) < 0 || v < 0 || v > UINT32_MAX)
            return fmt_err(x, err, "bad uid field");
        x->uid = (uint64_t)v;
    }
    if (x->x.has_gid || x->g.has_gid) {
        x->gid = x->x.has_gid ? x->x.gid : x->g.gid;
    } else {
        if (parse_num(h + 116, 8, &v) < 0 || v < 0 || v > UINT32_MAX)
            return fmt_err(x, err, "bad gid field");
        x->gid = (uint64_t)v;
    }
    if (x->x.has_mtime || x->g.has_mtime) {
        x->sec = x->x.has_mtime ? x->x.sec : x->g.sec;
        x->nsec = x->x.has_mtime ? x->x.nsec : x->g.nsec;
    } else {
        if (parse_num(h + 136, 12, &v) < 0)
            return fmt_err(x, err, "bad mtime field");
        x->sec = v;
        x->nsec = 0;
    }
    int64_t major = 0, minor = 0;
    if (type == '3' || type == '4') {
        if (parse_num(h + 329, 8, &major) < 0 || parse_num(h + 337, 8, &minor) < 0 ||
            major < 0 || minor < 0 || major > 0xfffff || minor > 0xfffff)
            return fmt_err(x, err, "bad device number");
    }
    if (merge_xattrs(x, err) < 0)
        return -1;
    /* per-entry extended headers are used up */
    pax_reset(&x->x);
    x->has_longname = x->has_longlink = 0;

    if ((type == '0' || type == '\0') && trailing_slash)
        type = '5';  /* pre-POSIX directory */
    if (type == '7')
        type = '0';

    x->base_off = x->path.len;
    while (x->base_off > 0 && x->path.data[x->base_off - 1] != '/')
        x->base_off--;
    const uint8_t *base = x->path.data + x->base_off;
    size_t blen = x->path.len - x->base_off;
    x->stats.entries++;

    /* a ".wh." component anywhere but last is a path under a whiteout name */
    for (size_t i = 0; i < x->base_off; i++) {
        if ((i == 0 || x->path.data[i - 1] == '/') && x->base_off - i >= 4 &&
            memcmp(x->path.data + i, ".wh.", 4) == 0)
            return unsafe(x, err, "%s", "a parent directory has a whiteout name (.wh.*)");
    }

    if (blen >= 4 && memcmp(base, ".wh.", 4) == 0) {
        uint64_t skip = x->size + pad512(x->size);
        if (blen == 12 && memcmp(base, ".wh..wh..opq", 12) == 0) {
            if (do_opaque(x, err) < 0)
                return -1;
        } else if (blen >= 8 && memcmp(base, ".wh..wh.", 8) == 0) {
            return unsafe(x, err, "%s", "reserved whiteout name (.wh..wh.*)");
        } else {
            const uint8_t *t = base + 4;
            size_t tl = blen - 4;
            if (tl == 0 || (tl == 1 && t[0] == '.') || (tl == 2 && t[0] == '.' && t[1] == '.'))
                return unsafe(x, err, "invalid whiteout name: it would delete '%s'",
                              tl == 0 ? "" : tl == 1 ? "." : "..");
            memmove(x->path.data + x->base_off, t, tl);
            x->path.len -= 4;
            x->path.data[x->path.len] = '\0';
            if (do_whiteout(x, err) < 0)
                return -1;
        }
        enter_skip(x, skip);
        return 0;
    }

    /* symlink and hard link targets */
    if (type == '2') {
        if (ll == 0)
            return fmt_err(x, err, "symlink with an empty target");
        if (memchr(lp, '\0', ll) != NULL)
            return unsafe(x, err, "%s", "symlink target contains a NUL byte");
        if (sd_buf_set_z(&x->link, lp, ll) < 0)
            return nomem(err);
    } else if (type == '1') {
        if (ll == 0)
            return fmt_err(x, err, "hard link with an empty target");
        if (normalize(x, lp, ll, &x->link, "hard link target", err) < 0) {
            /* name the entry, quote the target */
            if (err->code == SD_ERR_UNSAFE) {
                char msg[SD_ERR_MSG_MAX];
                snprintf(msg, sizeof msg, "%s", err->msg);
                return unsafe(x, err, "%s", msg);
            }
            return -1;
        }
    }

    /* the set: duplicates and entries under what this layer deletes */
    if (register_ancestors(x, err) < 0)
        return -1;
    long rec = pset_get(&x->set, x->path.data, x->path.len, 1);
    if (rec < 0)
        return nomem(err);
    uint32_t fl = x->set.recs[rec].flags;
    if (fl & F_EXPLICIT)
        return unsafe(x, err, "%s", "duplicate entry: the path appears twice in the layer");
    if (fl & F_WHITEOUT)
        return unsafe(x, err, "%s", "the layer has both a whiteout and an entry of this name");
    x->set.recs[rec].flags = fl | F_EXPLICIT | (type == '5' ? F_DIR : 0);

    if (x->path.len == 0 && type != '5')
        return unsafe(x, err, "%s", "the root entry '.' must be a directory");

    switch (type) {
    case '0':
    case '\0':
        if (do_file_open(x, err) < 0)
            return -1;
        if (x->size == 0) {
            if (file_close(x, err) < 0)
                return -1;
            enter_skip(x, 0);
        } else {
            x->state = ST_DATA;
        }
        return 0;
    case '5':
        if (do_dir(x, rec, err) < 0)
            return -1;
        break;
    case '2':
        if (do_symlink(x, err) < 0)
            return -1;
        break;
    case '1':
        if (do_hardlink(x, err) < 0)
            return -1;
        break;
    case '3':
    case '4':
    case '6':
        if (do_node(x, type, major, minor, err) < 0)
            return -1;
        break;
    default:
        return fmt_err(x, err, "unsupported tar entry type");
    }
    enter_skip(x, x->size + pad512(x->size));
    return 0;
}

static int on_header(struct sd_extractor *x, struct sd_error *err)
{
    const uint8_t *h = x->hdr;
    x->path.len = 0;
    if (x->path.data)
        x->path.data[0] = '\0';
    if (memcmp(h, zero_block, 512) == 0) {
        if (++x->zero_blocks == 2)
            x->state = ST_END;
        return 0;
    }
    if (x->zero_blocks)
        return fmt_err(x, err, "an entry follows a zero block inside the archive");
    int64_t stored;
    if (parse_num(h + 148, 8, &stored) < 0)
        return fmt_err(x, err, "bad header checksum field");
    uint64_t usum = 0;
    int64_t ssum = 0;
    for (int i = 0; i < 512; i++) {
        uint8_t c = (i >= 148 && i < 156) ? ' ' : h[i];
        usum += c;
        ssum += (int8_t)c;
    }
    if ((int64_t)usum != stored && ssum != stored)
        return fmt_err(x, err, "header checksum mismatch (not a tar stream, or corrupt)");
    char type = (char)h[156];
    int64_t sz;
    if (parse_num(h + 124, 12, &sz) < 0 || sz < 0)
        return fmt_err(x, err, "bad size field");
    switch (type) {
    case 'L':
    case 'K':
    case 'x':
    case 'g':
        if ((uint64_t)sz > META_MAX)
            return fmt_err(x, err, "extended header too large");
        x->meta_type = type;
        x->meta_left = (uint64_t)sz;
        x->meta.len = 0;
        x->state = ST_META;
        if (sz == 0) {
            x->state = ST_HEADER;  /* an empty extended header changes nothing */
        }
        return 0;
    case 'S':
        return fmt_err(x, err, "GNU sparse entries are not supported in layers");
    case 'V':
        enter_skip(x, (uint64_t)sz + pad512((uint64_t)sz));  /* volume label */
        return 0;
    default:
        return begin_entry(x, type, (uint64_t)sz, err);
    }
}

static int on_meta(struct sd_extractor *x, struct sd_error *err)
{
    switch (x->meta_type) {
    case 'L':
        if (sd_buf_set_z(&x->longname, x->meta.data, x->meta.len) < 0)
            return nomem(err);
        x->has_longname = 1;
        return 0;
    case 'K':
        if (sd_buf_set_z(&x->longlink, x->meta.data, x->meta.len) < 0)
            return nomem(err);
        x->has_longlink = 1;
        return 0;
    case 'x':
        pax_reset(&x->x);
        return parse_pax(x, x->meta.data, x->meta.len, &x->x, err);
    default: {
        /* global: only the attributes that make sense for every entry are kept */
        struct pax tmp = {0};
        int rc = parse_pax(x, x->meta.data, x->meta.len, &tmp, err);
        if (rc == 0) {
            if (tmp.has_mtime) {
                x->g.has_mtime = 1;
                x->g.sec = tmp.sec;
                x->g.nsec = tmp.nsec;
            }
            if (tmp.has_uid) {
                x->g.has_uid = 1;
                x->g.uid = tmp.uid;
            }
            if (tmp.has_gid) {
                x->g.has_gid = 1;
                x->g.gid = tmp.gid;
            }
            if (tmp.xattrs.len && sd_buf_set_z(&x->g.xattrs, tmp.xattrs.data, tmp.xattrs.len) < 0)
                rc = nomem(err);
        }
        pax_free(&tmp);
        return rc;
    }
    }
}

/* ------------------------------------------------------------------------------------------
 * Public API */

struct sd_extractor *sd_extractor_new(int root_fd, const struct sd_extract_opts *opts,
                                      struct sd_error *err)
{
    struct stat st;
    if (fstat(root_fd, &st) < 0) {
        sd_error_os(err, errno, "fstat", NULL, 0);
        return NULL;
    }
    if (!S_ISDIR(st.st_mode)) {
        sd_error_os(err, ENOTDIR, "extract", NULL, 0);
        return NULL;
    }
    struct sd_extractor *x = calloc(1, sizeof *x);
    if (x == NULL || (x->blk = malloc(BLK)) == NULL) {
        free(x);
        nomem(err);
        return NULL;
    }
    x->root_fd = root_fd;
    if (opts)
        x->opts = *opts;
    x->is_root = geteuid() == 0;
    x->have_openat2 = !x->opts.no_openat2;
    x->state = ST_HEADER;
    x->fd = -1;
    x->pfd = -1;
    return x;
}

static int fail(struct sd_extractor *x, struct sd_error *err)
{
    x->saved = *err;
    x->state = ST_FAILED;
    if (x->fd >= 0) {
        close(x->fd);
        x->fd = -1;
    }
    return -1;
}

int sd_extractor_feed(struct sd_extractor *x, const uint8_t *buf, size_t len,
                      struct sd_error *err)
{
    if (x->state == ST_FAILED) {
        *err = x->saved;
        return -1;
    }
    x->stats.stream += len;
    while (len > 0) {
        size_t take;
        switch (x->state) {
        case ST_HEADER:
            take = 512 - x->hdr_fill < len ? 512 - x->hdr_fill : len;
            memcpy(x->hdr + x->hdr_fill, buf, take);
            x->hdr_fill += take;
            if (x->hdr_fill == 512) {
                x->hdr_fill = 0;
                if (on_header(x, err) < 0)
                    return fail(x, err);
            }
            break;
        case ST_META:
            take = x->meta_left < len ? (size_t)x->meta_left : len;
            if (sd_buf_append_z(&x->meta, buf, take) < 0)
                return fail(x, (nomem(err), err));
            x->meta_left -= take;
            if (x->meta_left == 0) {
                if (on_meta(x, err) < 0)
                    return fail(x, err);
                enter_skip(x, pad512(x->meta.len));
            }
            break;
        case ST_DATA:
            take = x->data_left < len ? (size_t)x->data_left : len;
            if (file_data(x, buf, take, err) < 0)
                return fail(x, err);
            x->data_left -= take;
            if (x->data_left == 0) {
                if (file_close(x, err) < 0)
                    return fail(x, err);
                enter_skip(x, pad512(x->size));
            }
            break;
        case ST_SKIP:
            take = x->skip_left < len ? (size_t)x->skip_left : len;
            x->skip_left -= take;
            if (x->skip_left == 0)
                x->state = ST_HEADER;
            break;
        default: /* ST_END: what follows the end blocks (record padding) is ignored */
            take = len;
            break;
        }
        buf += take;
        len -= take;
    }
    return 0;
}

static int drec_cmp(const void *a, const void *b)
{
    const struct drec *x = a, *y = b;
    if (x->depth != y->depth)
        return x->depth > y->depth ? -1 : 1;
    return x->rec < y->rec ? -1 : x->rec > y->rec;
}

int sd_extractor_finish(struct sd_extractor *x, struct sd_error *err)
{
    if (x->state == ST_FAILED) {
        *err = x->saved;
        return -1;
    }
    if (x->state != ST_END) {
        if (x->state == ST_HEADER && x->hdr_fill == 0 && x->zero_blocks == 0)
            sd_error_set(err, SD_ERR_FORMAT, "tar", NULL, 0,
                         "truncated: the stream ends without the end-of-archive blocks");
        else if (x->state == ST_HEADER && x->hdr_fill == 0)
            sd_error_set(err, SD_ERR_FORMAT, "tar", NULL, 0,
                         "truncated: the stream ends after one of the two end blocks");
        else
            sd_error_set(err, SD_ERR_FORMAT, "tar", (const char *)x->path.data, x->path.len,
                         "truncated: the stream ends inside an entry");
        return fail(x, err);
    }
    /* directories: mode and mtime after their contents, deepest first */
    struct drec *d = (struct drec *)x->dirs.data;
    size_t n = x->dirs.len / sizeof *d;
    if (n)
        qsort(d, n, sizeof *d, drec_cmp);
    for (size_t i = 0; i < n; i++) {
        const struct prec *r = &x->set.recs[d[i].rec];
        if (sd_buf_set_z(&x->path, x->set.arena.data + r->off, r->len) < 0)
            return fail(x, (nomem(err), err));
        struct timespec ts[2] = {{d[i].sec, d[i].nsec}, {d[i].sec, d[i].nsec}};
        if (r->len == 0) {
            if (fchmod(x->root_fd, d[i].mode) < 0)
                return fail(x, (os_err(x, err, "fchmod"), err));
            if (futimens(x->root_fd, ts) < 0)
                return fail(x, (os_err(x, err, "futimens"), err));
            continue;
        }
        x->base_off = x->path.len;
        while (x->base_off > 0 && x->path.data[x->base_off - 1] != '/')
            x->base_off--;
        int pfd;
        if (entry_parent(x, 0, &pfd, err) < 0)
            return fail(x, err);
        const char *name = (const char *)x->path.data + x->base_off;
        if (fchmodat(pfd, name, d[i].mode, AT_SYMLINK_NOFOLLOW) < 0)
            return fail(x, (os_err(x, err, "fchmodat"), err));
        if (utimensat(pfd, name, ts, AT_SYMLINK_NOFOLLOW) < 0)
            return fail(x, (os_err(x, err, "utimensat"), err));
    }
    x->dirs.len = 0;
    close_dir(x, x->pfd);
    x->pfd = -1;
    return 0;
}

void sd_extractor_free(struct sd_extractor *x)
{
    if (x == NULL)
        return;
    if (x->fd >= 0)
        close(x->fd);
    close_dir(x, x->pfd);
    free(x->blk);
    sd_buf_free(&x->meta);
    pax_free(&x->g);
    pax_free(&x->x);
    sd_buf_free(&x->longname);
    sd_buf_free(&x->longlink);
    sd_buf_free(&x->path);
    sd_buf_free(&x->link);
    sd_buf_free(&x->xm);
    sd_buf_free(&x->ppath);
    sd_buf_free(&x->last_parent);
    sd_buf_free(&x->tmp);
    pset_free(&x->set);
    sd_buf_free(&x->dirs);
    sd_buf_free(&x->skipped);
    free(x);
}

const struct sd_extract_stats *sd_extractor_stats(const struct sd_extractor *x)
{
    return &x->stats;
}

const uint8_t *sd_extractor_skipped(const struct sd_extractor *x, size_t *len)
{
    *len = x->skipped.len;
    return x->skipped.data;
}
