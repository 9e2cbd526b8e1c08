/* sd_tar: the layer tar writer.  See sd_tar.h for the contract.
 *
 * The writer keeps one staging buffer `out` of header bytes not yet handed to the caller and,
 * while a regular file's content is due, that file's descriptor: content is read() straight
 * into the caller's buffer, never buffered whole.  Each item becomes, in order: an optional
 * PAX 'x' header and its records, the ustar header, then the content and its padding. */
#include "sd_tar.h"
#include "sd_buf.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

#define BLOCK 512
#define DEFAULT_READ_CHUNK ((size_t)4 << 20)
#define OCTAL7_MAX 07777777ULL          /* mode, uid, gid, devmajor, devminor */
#define OCTAL11_MAX 077777777777ULL     /* size, mtime: 8 GiB - 1 */
#define NAME_FIELD 100
#define PREFIX_FIELD 155
#define LINK_FIELD 100

static const char WH_PREFIX[] = ".wh.";
static const char OPQ_NAME[] = ".wh..wh..opq";

/* ---------------------------------------------------------------------------------------
 * Buffers (sd_buf.h). */
static int tbuf_zeros(struct sd_buf *b, size_t n)
{
    if (sd_buf_reserve(b, n) < 0)
        return -1;
    memset(b->data + b->len, 0, n);
    b->len += n;
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * The writer. */
struct item {
    uint64_t off;   /* into paths */
    uint32_t len;
    uint8_t kind;
};

/* First tar name emitted for an inode with nlink > 1 (open addressing, key (dev, ino)). */
struct link_slot {
    uint64_t dev;
    uint64_t ino;
    uint64_t name_off;  /* into link_names */
    uint32_t name_len;
    uint32_t used;
};

struct sd_tar_writer {
    int root_fd;              /* borrowed */
    int64_t timestamp;
    size_t read_chunk;

    struct sd_buf paths;        /* owned: the items' paths */
    struct sd_buf items;        /* owned: struct item[] */
    size_t n_items;
    size_t next;              /* next item to emit */
    int started;              /* the first read happened: no more items */
    int trailer_done;         /* the two zero blocks are queued */
    int failed;
    struct sd_error fail;     /* the error every call repeats once failed */

    int dir_fd;               /* owned or -1: parent directory of a recent item */
    struct sd_buf dir_path;     /* its path relative to the root */

    struct sd_buf out;          /* owned: bytes waiting to be read */
    size_t out_pos;

    int file_fd;              /* owned or -1: the regular file being streamed */
    uint64_t file_size;
    uint64_t file_left;
    uint64_t file_pos;
    size_t file_item;
    int file_sparse;          /* fewer blocks than bytes: holes are found with SEEK_DATA */
    int seg_hole;             /* the segment [file_pos, seg_end) is a hole (zeros) */
    uint64_t seg_end;

    struct link_slot *links;  /* owned */
    size_t links_cap;
    size_t links_used;
    struct sd_buf link_names;

    struct sd_buf skipped;      /* struct sd_tar_skipped[] */
    struct sd_buf skipped_paths;

    int hash_content;
    XXH3_state_t *hstate;     /* owned, when hashing: the current file's content */
    struct sd_buf hashes;       /* 16 bytes per item */
    struct sd_buf hashed;       /* 1 byte per item */

    /* scratch, reused for every item */
    struct sd_buf name;         /* the entry's tar name */
    struct sd_buf target;       /* symlink target or hard link name */
    struct sd_buf pax;          /* PAX records of the entry */
    struct sd_buf xrec;         /* SCHILY.xattr records */
    struct sd_buf xlist;        /* listxattr output */
    struct sd_buf xnames;       /* const char *[] into xlist */
    struct sd_buf xval;

    uint64_t offset;
};

/* The XXH3-128 of the content hashed so far becomes item idx's hash. */
static void store_hash(struct sd_tar_writer *w, size_t idx)
{
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits_digest(w->hstate));
    memcpy(w->hashes.data + 16 * idx, c.digest, 16);
}

static const struct item *item_at(const struct sd_tar_writer *w, size_t i)
{
    return (const struct item *)w->items.data + i;
}

static int nomem(struct sd_error *err, const char *op)
{
    return sd_error_set(err, SD_ERR_NOMEM, op, NULL, 0, "out of memory");
}

struct sd_tar_writer *sd_tar_writer_new(int root_fd, const struct sd_tar_opts *opts,
                                        struct sd_error *err)
{
    struct sd_tar_writer *w = calloc(1, sizeof *w);
    if (w == NULL) {
        nomem(err, "tar writer");
        return NULL;
    }
    w->root_fd = root_fd;
    w->timestamp = opts ? opts->timestamp : -1;
    w->read_chunk = opts && opts->read_chunk ? opts->read_chunk : DEFAULT_READ_CHUNK;
    w->dir_fd = -1;
    w->file_fd = -1;
    w->hash_content = opts ? opts->hash_content : 0;
    if (w->hash_content && (w->hstate = XXH3_createState()) == NULL) {
        free(w);
        nomem(err, "tar writer");
        return NULL;
    }
    sd_error_clear(&w->fail);
    return w;
}

void sd_tar_writer_free(struct sd_tar_writer *w)
{
    if (w == NULL)
        return;
    if (w->dir_fd >= 0)
        close(w->dir_fd);
    if (w->file_fd >= 0)
        close(w->file_fd);
    if (w->hstate)
        XXH3_freeState(w->hstate);
    sd_buf_free(&w->hashes);
    sd_buf_free(&w->hashed);
    sd_buf_free(&w->paths);
    sd_buf_free(&w->items);
    sd_buf_free(&w->dir_path);
    sd_buf_free(&w->out);
    free(w->links);
    sd_buf_free(&w->link_names);
    sd_buf_free(&w->skipped);
    sd_buf_free(&w->skipped_paths);
    sd_buf_free(&w->name);
    sd_buf_free(&w->target);
    sd_buf_free(&w->pax);
    sd_buf_free(&w->xrec);
    sd_buf_free(&w->xlist);
    sd_buf_free(&w->xnames);
    sd_buf_free(&w->xval);
    free(w);
}

uint64_t sd_tar_writer_offset(const struct sd_tar_writer *w)
{
    return w->offset;
}

size_t sd_tar_writer_skipped(const struct sd_tar_writer *w, const struct sd_tar_skipped **out,
                             const uint8_t **paths)
{
    *out = (const struct sd_tar_skipped *)w->skipped.data;
    *paths = w->skipped_paths.data;
    return w->skipped.len / sizeof(struct sd_tar_skipped);
}

/* ---------------------------------------------------------------------------------------
 * Items. */

static int unsafe(struct sd_error *err, const uint8_t *p, size_t len, const char *why)
{
    return sd_error_set(err, SD_ERR_UNSAFE, "add item", (const char *)p, len, "%s", why);
}

/* A path a layer can carry: relative, no empty, "." or ".." component, no NUL, and no
 * component starting with ".wh." (the prefix OCI reserves for whiteouts). */
static int check_path(const uint8_t *p, size_t len, struct sd_error *err)
{
    size_t start = 0, i;
    if (len == 0)
        return unsafe(err, p, len, "empty path");
    if (p[0] == '/')
        return unsafe(err, p, len, "absolute path");
    if (memchr(p, '\0', len) != NULL)
        return unsafe(err, p, len, "NUL byte in path");
    for (i = 0; i <= len; i++) {
        size_t cl;
        if (i < len && p[i] != '/')
            continue;
        cl = i - start;
        if (cl == 0)
            return unsafe(err, p, len, "empty path component");
        if ((cl == 1 && p[start] == '.') || (cl == 2 && p[start] == '.' && p[start + 1] == '.'))
            return unsafe(err, p, len, "'.' or '..' path component");
        if (cl >= 4 && memcmp(p + start, WH_PREFIX, 4) == 0)
            return unsafe(err, p, len,
                          "name starts with '.wh.', which a layer reserves for whiteouts");
        start = i + 1;
    }
    return 0;
}

int sd_tar_writer_add_items(struct sd_tar_writer *w, const uint8_t *paths_blob,
                            const uint64_t *offs, const uint32_t *lens, const uint8_t *kinds,
                            size_t n, struct sd_error *err)
{
    size_t i, total = 0;
    if (w->started)
        return sd_error_set(err, SD_ERR_FORMAT, "add items", NULL, 0,
                            "items must be added before the stream is read");
    for (i = 0; i < n; i++) {
        if (kinds[i] > SD_TAR_OPAQUE)
            return sd_error_set(err, SD_ERR_FORMAT, "add item", (const char *)paths_blob + offs[i],
                                lens[i], "unknown item kind %u", (unsigned)kinds[i]);
        if (check_path(paths_blob + offs[i], lens[i], err) < 0)
            return -1;
        total += lens[i];
    }
    if (sd_buf_reserve(&w->paths, total) < 0 || sd_buf_reserve(&w->items, n * sizeof(struct item)) < 0)
        return nomem(err, "add items");
    for (i = 0; i < n; i++) {
        struct item it = {.off = w->paths.len, .len = lens[i], .kind = kinds[i]};
        sd_buf_append(&w->paths, paths_blob + offs[i], lens[i]);
        sd_buf_append(&w->items, &it, sizeof it);
    }
    w->n_items += n;
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Opening parents beneath the root, one component at a time, never following a symlink. */

/* Open rel[0..len) under base.  errpath[0..errbase) is the path of base, for messages. */
static int open_dirs(int base, const uint8_t *rel, size_t len, const uint8_t *errpath,
                     size_t errbase, struct sd_error *err)
{
    char comp[NAME_MAX + 1];
    int fd = base, owned = 0;
    size_t i = 0;
    while (i < len) {
        size_t j = i, cl;
        int nfd, e;
        while (j < len && rel[j] != '/')
            j++;
        cl = j - i;
        if (cl > NAME_MAX) {
            if (owned)
                close(fd);
            return sd_error_os(err, ENAMETOOLONG, "openat", (const char *)errpath, errbase + j);
        }
        memcpy(comp, rel + i, cl);
        comp[cl] = '\0';
        nfd = openat(fd, comp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        e = errno;
        if (owned)
            close(fd);
        if (nfd < 0)
            return sd_error_os(err, e, "openat", (const char *)errpath, errbase + j);
        fd = nfd;
        owned = 1;
        i = j + 1;
    }
    return fd;
}

/* The fd of the directory holding path (borrowed from the writer), and where its last
 * component starts. */
static int parent_fd(struct sd_tar_writer *w, const uint8_t *path, size_t len, size_t *name_off,
                     struct sd_error *err)
{
    const uint8_t *slash = memrchr(path, '/', len);
    size_t plen, start = 0;
    int base = w->root_fd, fd;
    if (slash == NULL) {
        *name_off = 0;
        return w->root_fd;
    }
    plen = (size_t)(slash - path);
    *name_off = plen + 1;
    if (w->dir_fd >= 0 && w->dir_path.len == plen && memcmp(w->dir_path.data, path, plen) == 0)
        return w->dir_fd;
    if (w->dir_fd >= 0 && plen > w->dir_path.len && path[w->dir_path.len] == '/' &&
        memcmp(w->dir_path.data, path, w->dir_path.len) == 0) {
        base = w->dir_fd;  /* descending from the cached directory */
        start = w->dir_path.len + 1;
    }
    fd = open_dirs(base, path + start, plen - start, path, start, err);
    if (fd < 0)
        return -1;
    if (w->dir_fd >= 0)
        close(w->dir_fd);
    w->dir_fd = fd;
    w->dir_path.len = 0;
    if (sd_buf_append(&w->dir_path, path, plen) < 0) {
        close(w->dir_fd);
        w->dir_fd = -1;
        return nomem(err, "openat");
    }
    return fd;
}

/* ---------------------------------------------------------------------------------------
 * Header encoding. */

static void octal(uint8_t *field, size_t width, uint64_t v)
{
    size_t i = width - 1;
    field[i] = '\0';
    while (i-- > 0) {
        field[i] = (uint8_t)('0' + (v & 7));
        v >>= 3;
    }
}

static size_t ndigits(size_t v)
{
    size_t d = 1;
    while (v >= 10) {
        v /= 10;
        d++;
    }
    return d;
}

/* Append the record "LEN key1key2=value\n" (LEN counts the whole record). */
static int pax_record(struct sd_buf *b, const char *k1, const uint8_t *k2, size_t k2len,
                      const uint8_t *val, size_t vlen)
{
    size_t k1len = strlen(k1);
    size_t body = 1 + k1len + k2len + 1 + vlen + 1, d = 1, total;
    char num[24];
    int nl;
    for (;;) {
        total = body + d;
        if (ndigits(total) == d)
            break;
        d = ndigits(total);
    }
    nl = snprintf(num, sizeof num, "%zu ", total);
    if (sd_buf_append(b, num, (size_t)nl) < 0 || sd_buf_append(b, k1, k1len) < 0 ||
        sd_buf_append(b, k2, k2len) < 0 || sd_buf_append(b, "=", 1) < 0 ||
        sd_buf_append(b, val, vlen) < 0 || sd_buf_append(b, "\n", 1) < 0)
        return -1;
    return 0;
}

static int pax_number(struct sd_buf *b, const char *key, uint64_t v)
{
    char s[24];
    int n = snprintf(s, sizeof s, "%llu", (unsigned long long)v);
    return pax_record(b, key, NULL, 0, (const uint8_t *)s, (size_t)n);
}

static int valid_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xE0) == 0xC0) {
            k = 1;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (k >= n - i)
            return 0;  /* truncated sequence */
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* Where to cut a name into ustar prefix and name: the index of the '/' or 0 when the whole
 * name fits the name field; -1 when it fits neither way. */
static long ustar_split(const uint8_t *n, size_t len)
{
    size_t i, lo;
    if (len <= NAME_FIELD)
        return 0;
    if (len > PREFIX_FIELD + 1 + NAME_FIELD)
        return -1;
    lo = len - NAME_FIELD - 1;  /* the name part n[i+1..len) must fit 100 bytes */
    for (i = lo; i <= PREFIX_FIELD && i + 1 < len; i++)
        if (n[i] == '/' && i > 0)
            return (long)i;
    return -1;
}

struct hdr {
    uint8_t type;
    uint32_t mode;
    uint64_t uid;
    uint64_t gid;
    uint64_t size;
    int64_t mtime;
    long nsec;
    uint32_t devmajor;
    uint32_t devminor;
    const uint8_t *link;   /* symlink target or hard link name, or NULL */
    size_t link_len;
};

static void checksum(uint8_t *h)
{
    unsigned sum = 0;
    memset(h + 148, ' ', 8);
    for (size_t i = 0; i < BLOCK; i++)
        sum += h[i];
    octal(h + 148, 7, sum);  /* six digits and a NUL, then the space already there */
}

/* Fill one ustar header block (appended to out) for name[0..len). */
static int ustar_block(struct sd_buf *out, const uint8_t *name, size_t len, const struct hdr *h,
                       int with_devs)
{
    uint8_t *b;
    long split;
    if (tbuf_zeros(out, BLOCK) < 0)
        return -1;
    b = out->data + out->len - BLOCK;
    split = ustar_split(name, len);
    if (split > 0) {
        memcpy(b + 345, name, (size_t)split);
        memcpy(b, name + split + 1, len - (size_t)split - 1);
    } else {
        memcpy(b, name, len < NAME_FIELD ? len : NAME_FIELD);  /* PAX path when cut */
    }
    octal(b + 100, 8, h->mode & 07777);
    octal(b + 108, 8, h->uid <= OCTAL7_MAX ? h->uid : 0);
    octal(b + 116, 8, h->gid <= OCTAL7_MAX ? h->gid : 0);
    octal(b + 124, 12, h->size <= OCTAL11_MAX ? h->size : 0);
    octal(b + 136, 12, h->mtime >= 0 && (uint64_t)h->mtime <= OCTAL11_MAX ? (uint64_t)h->mtime : 0);
    b[156] = h->type;
    if (h->link)
        memcpy(b + 157, h->link, h->link_len < LINK_FIELD ? h->link_len : LINK_FIELD);
    memcpy(b + 257, "ustar", 6);
    memcpy(b + 263, "00", 2);
    if (with_devs) {
        octal(b + 329, 8, h->devmajor);
        octal(b + 337, 8, h->devminor);
    }
    checksum(b);
    return 0;
}

/* Append the entry for tar name w->name: PAX header when needed (records built here plus the
 * xattr records already in w->xrec), then the ustar header.  Content follows separately. */
static int put_entry(struct sd_tar_writer *w, const struct hdr *h, const uint8_t *path,
                     size_t path_len, struct sd_error *err)
{
    const uint8_t *name = w->name.data;
    size_t len = w->name.len, pad;
    int binary = 0;
    struct sd_buf *pax = &w->pax;
    pax->len = 0;
    if (ustar_split(name, len) < 0) {
        if (pax_record(pax, "path", NULL, 0, name, len) < 0)
            return nomem(err, "tar header");
        binary |= !valid_utf8(name, len);
    }
    if (h->link && h->link_len > LINK_FIELD) {
        if (pax_record(pax, "linkpath", NULL, 0, h->link, h->link_len) < 0)
            return nomem(err, "tar header");
        binary |= !valid_utf8(h->link, h->link_len);
    }
    if ((h->size > OCTAL11_MAX && pax_number(pax, "size", h->size) < 0) ||
        (h->uid > OCTAL7_MAX && pax_number(pax, "uid", h->uid) < 0) ||
        (h->gid > OCTAL7_MAX && pax_number(pax, "gid", h->gid) < 0))
        return nomem(err, "tar header");
    if (h->nsec != 0 || h->mtime < 0 || (uint64_t)h->mtime > OCTAL11_MAX) {
        char s[48];
        int n;
        if (h->nsec != 0 && h->mtime < 0) {
            /* sec.nsec means sec + nsec/1e9; a negative time with nanoseconds is written as
             * -(|sec| - 1).(1e9 - nsec) */
            n = snprintf(s, sizeof s, "-%lld.%09ld", -(long long)h->mtime - 1,
                         1000000000L - h->nsec);
        } else if (h->nsec != 0) {
            n = snprintf(s, sizeof s, "%lld.%09ld", (long long)h->mtime, h->nsec);
        } else {
            n = snprintf(s, sizeof s, "%lld", (long long)h->mtime);
        }
        if (pax_record(pax, "mtime", NULL, 0, (const uint8_t *)s, (size_t)n) < 0)
            return nomem(err, "tar header");
    }
    if (binary && pax_record(pax, "hdrcharset", NULL, 0, (const uint8_t *)"BINARY", 6) < 0)
        return nomem(err, "tar header");
    if (sd_buf_append(pax, w->xrec.data, w->xrec.len) < 0)
        return nomem(err, "tar header");
    if (h->type == '3' || h->type == '4') {
        if (h->devmajor > OCTAL7_MAX || h->devminor > OCTAL7_MAX)
            return sd_error_set(err, SD_ERR_FORMAT, "tar header", (const char *)path, path_len,
                                "device number %u:%u does not fit a tar header", h->devmajor,
                                h->devminor);
    }
    if (pax->len > 0) {
        /* the 'x' header's own name: PaxHeaders/<last component>, deterministic */
        uint8_t xname[NAME_FIELD];
        size_t end = len, start, bl;
        struct hdr xh = {.type = 'x', .mode = 0644, .size = pax->len};
        while (end > 0 && name[end - 1] == '/')
            end--;
        start = end;
        while (start > 0 && name[start - 1] != '/')
            start--;
        bl = end - start;
        if (bl > NAME_FIELD - 11)
            bl = NAME_FIELD - 11;
        memcpy(xname, "PaxHeaders/", 11);
        memcpy(xname + 11, name + start, bl);
        if (ustar_block(&w->out, xname, 11 + bl, &xh, 0) < 0)
            return nomem(err, "tar header");
        pad = (BLOCK - pax->len % BLOCK) % BLOCK;
        if (sd_buf_append(&w->out, pax->data, pax->len) < 0 || tbuf_zeros(&w->out, pad) < 0)
            return nomem(err, "tar header");
    }
    if (ustar_block(&w->out, name, len, h, 1) < 0)
        return nomem(err, "tar header");
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Extended attributes. */

static int is_overlay_xattr(const char *n)
{
    return strncmp(n, "trusted.overlay.", 16) == 0 || strncmp(n, "user.overlay.", 13) == 0;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static ssize_t do_list(int fd, const char *p, char *buf, size_t size)
{
    return fd >= 0 ? flistxattr(fd, buf, size) : llistxattr(p, buf, size);
}

static ssize_t do_get(int fd, const char *p, const char *name, void *buf, size_t size)
{
    return fd >= 0 ? fgetxattr(fd, name, buf, size) : lgetxattr(p, name, buf, size);
}

/* Read every xattr of the entry (through fd when >= 0, else through the path p, not
 * followed) into w->xrec as SCHILY.xattr records sorted by name. */
static int read_xattrs(struct sd_tar_writer *w, int fd, const char *p, const uint8_t *path,
                       size_t path_len, struct sd_error *err)
{
    ssize_t n;
    size_t count = 0, i;
    const char **names;
    w->xrec.len = 0;
    for (;;) {
        n = do_list(fd, p, NULL, 0);
        if (n < 0) {
            if (errno == ENOTSUP || errno == ENOSYS)
                return 0;
            return sd_error_os(err, errno, "listxattr", (const char *)path, path_len);
        }
        if (n == 0)
            return 0;
        w->xlist.len = 0;
        if (sd_buf_reserve(&w->xlist, (size_t)n + 1) < 0)
            return nomem(err, "listxattr");
        n = do_list(fd, p, (char *)w->xlist.data, (size_t)n);
        if (n >= 0)
            break;
        if (errno != ERANGE)  /* ERANGE: an xattr was added in between; list again */
            return sd_error_os(err, errno, "listxattr", (const char *)path, path_len);
    }
    w->xlist.len = (size_t)n;
    w->xnames.len = 0;
    for (i = 0; i < (size_t)n;) {
        const char *nm = (const char *)w->xlist.data + i;
        size_t l = strnlen(nm, (size_t)n - i);
        if (l == (size_t)n - i)
            break;  /* not NUL-terminated: the kernel always terminates, be safe anyway */
        if (l > 0 && !is_overlay_xattr(nm)) {
            if (sd_buf_append(&w->xnames, &nm, sizeof nm) < 0)
                return nomem(err, "listxattr");
            count++;
        }
        i += l + 1;
    }
    names = (const char **)w->xnames.data;
    qsort(names, count, sizeof *names, cmp_names);
    for (i = 0; i < count; i++) {
        ssize_t v;
        for (;;) {
            v = do_get(fd, p, names[i], NULL, 0);
            if (v < 0)
                break;
            w->xval.len = 0;
            if (sd_buf_reserve(&w->xval, (size_t)v + 1) < 0)
                return nomem(err, "getxattr");
            v = do_get(fd, p, names[i], w->xval.data, (size_t)v);
            if (v >= 0 || errno != ERANGE)
                break;
        }
        if (v < 0) {
            if (errno == ENODATA)
                continue;  /* removed since it was listed */
            return sd_error_os(err, errno, "getxattr", (const char *)path, path_len);
        }
        if (pax_record(&w->xrec, "SCHILY.xattr.", (const uint8_t *)names[i], strlen(names[i]),
                       w->xval.data, (size_t)v) < 0)
            return nomem(err, "getxattr");
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Hard links. */

static uint64_t link_hash(uint64_t dev, uint64_t ino)
{
    uint64_t h = ino * 0x9E3779B97F4A7C15ULL ^ (dev + 0x632BE59BD9B4E019ULL);
    h ^= h >> 31;
    return h * 0xBF58476D1CE4E5B9ULL;
}

/* The slot for (dev, ino): used when the inode was seen, else the free slot to fill. */
static struct link_slot *link_find(struct sd_tar_writer *w, uint64_t dev, uint64_t ino)
{
    size_t mask = w->links_cap - 1, i = (size_t)link_hash(dev, ino) & mask;
    while (w->links[i].used && !(w->links[i].dev == dev && w->links[i].ino == ino))
        i = (i + 1) & mask;
    return &w->links[i];
}

static int link_grow(struct sd_tar_writer *w)
{
    size_t old_cap = w->links_cap, cap = old_cap ? old_cap * 2 : 256;
    struct link_slot *old = w->links;
    w->links = calloc(cap, sizeof *w->links);
    if (w->links == NULL) {
        w->links = old;
        return -1;
    }
    w->links_cap = cap;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].used)
            *link_find(w, old[i].dev, old[i].ino) = old[i];
    free(old);
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Emitting items. */

static int skip(struct sd_tar_writer *w, const uint8_t *path, size_t len, const char *reason,
                struct sd_error *err)
{
    struct sd_tar_skipped s = {.path_off = w->skipped_paths.len, .path_len = (uint32_t)len,
                               .reason = reason};
    if (sd_buf_append(&w->skipped_paths, path, len) < 0 || sd_buf_append(&w->skipped, &s, sizeof s) < 0)
        return nomem(err, "tar entry");
    return 0;
}

static void clamp_mtime(const struct sd_tar_writer *w, struct hdr *h)
{
    if (w->timestamp >= 0 && (h->mtime > w->timestamp || (h->mtime == w->timestamp && h->nsec > 0))) {
        h->mtime = w->timestamp;
        h->nsec = 0;
    }
}

/* A whiteout or opaque marker: an empty regular file with fixed metadata. */
static int emit_marker(struct sd_tar_writer *w, const struct item *it, struct sd_error *err)
{
    const uint8_t *path = w->paths.data + it->off;
    size_t len = it->len;
    struct hdr h = {.type = '0', .mode = 0644, .mtime = w->timestamp >= 0 ? w->timestamp : 0};
    w->name.len = 0;
    if (it->kind == SD_TAR_OPAQUE) {
        if (sd_buf_append(&w->name, path, len) < 0 || sd_buf_append(&w->name, "/", 1) < 0 ||
            sd_buf_append(&w->name, OPQ_NAME, sizeof OPQ_NAME - 1) < 0)
            return nomem(err, "tar entry");
    } else {
        const uint8_t *slash = memrchr(path, '/', len);
        size_t base = slash ? (size_t)(slash - path) + 1 : 0;
        if (sd_buf_append(&w->name, path, base) < 0 ||
            sd_buf_append(&w->name, WH_PREFIX, sizeof WH_PREFIX - 1) < 0 ||
            sd_buf_append(&w->name, path + base, len - base) < 0)
            return nomem(err, "tar entry");
    }
    w->xrec.len = 0;
    return put_entry(w, &h, path, len, err);
}

static int read_link(struct sd_tar_writer *w, int dfd, const char *name, const uint8_t *path,
                     size_t len, size_t hint, struct sd_error *err)
{
    size_t cap = hint + 1 > 256 ? hint + 1 : 256;
    for (;;) {
        ssize_t n;
        w->target.len = 0;
        if (sd_buf_reserve(&w->target, cap) < 0)
            return nomem(err, "readlink");
        n = readlinkat(dfd, name, (char *)w->target.data, cap);
        if (n < 0)
            return sd_error_os(err, errno, "readlink", (const char *)path, len);
        if ((size_t)n < cap) {
            w->target.len = (size_t)n;
            return 0;
        }
        cap *= 2;
    }
}

static int emit_entry(struct sd_tar_writer *w, size_t idx, struct sd_error *err)
{
    const struct item *it = item_at(w, idx);
    const uint8_t *path = w->paths.data + it->off;
    size_t len = it->len, name_off, nl;
    char name[NAME_MAX + 1];
    char proc[64 + NAME_MAX];
    struct stat st;
    struct hdr h = {0};
    int dfd, fd = -1, is_dir;

    dfd = parent_fd(w, path, len, &name_off, err);
    if (dfd < 0)
        return -1;
    nl = len - name_off;
    if (nl > NAME_MAX)
        return sd_error_os(err, ENAMETOOLONG, "lstat", (const char *)path, len);
    memcpy(name, path + name_off, nl);
    name[nl] = '\0';
    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return sd_error_os(err, errno, "lstat", (const char *)path, len);

    switch (st.st_mode & S_IFMT) {
    case S_IFREG: h.type = '0'; break;
    case S_IFDIR: h.type = '5'; break;
    case S_IFLNK: h.type = '2'; break;
    case S_IFCHR: h.type = '3'; break;
    case S_IFBLK: h.type = '4'; break;
    case S_IFIFO: h.type = '6'; break;
    case S_IFSOCK: return skip(w, path, len, "socket", err);
    default: return skip(w, path, len, "file type tar cannot carry", err);
    }
    is_dir = h.type == '5';
    w->name.len = 0;
    if (sd_buf_append(&w->name, path, len) < 0 || (is_dir && sd_buf_append(&w->name, "/", 1) < 0))
        return nomem(err, "tar entry");
    w->xrec.len = 0;

    if (!is_dir && st.st_nlink > 1) {
        struct link_slot *s;
        if (w->links_used * 2 >= w->links_cap && link_grow(w) < 0)
            return nomem(err, "tar entry");
        s = link_find(w, (uint64_t)st.st_dev, (uint64_t)st.st_ino);
        if (s->used) {
            h.type = '1';
            h.link = w->link_names.data + s->name_off;
            h.link_len = s->name_len;
            goto header;
        }
        s->used = 1;
        s->dev = (uint64_t)st.st_dev;
        s->ino = (uint64_t)st.st_ino;
        s->name_off = w->link_names.len;
        s->name_len = (uint32_t)w->name.len;
        w->links_used++;
        if (sd_buf_append(&w->link_names, w->name.data, w->name.len) < 0)
            return nomem(err, "tar entry");
    }

    if (h.type == '0') {
        struct stat fst;
        fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd < 0)
            return sd_error_os(err, errno, "open", (const char *)path, len);
        if (fstat(fd, &fst) < 0) {
            int e = errno;
            close(fd);
            return sd_error_os(err, e, "fstat", (const char *)path, len);
        }
        if (!S_ISREG(fst.st_mode) || fst.st_ino != st.st_ino || fst.st_dev != st.st_dev) {
            close(fd);
            return sd_error_set(err, SD_ERR_CHANGED, "open", (const char *)path, len,
                                "file replaced while the layer was being written");
        }
        st = fst;
        h.size = (uint64_t)st.st_size;
    } else if (h.type == '2') {
        if (read_link(w, dfd, name, path, len, (size_t)st.st_size, err) < 0)
            return -1;
        h.link = w->target.data;
        h.link_len = w->target.len;
    } else if (h.type == '3' || h.type == '4') {
        h.devmajor = major(st.st_rdev);
        h.devminor = minor(st.st_rdev);
    }

    if (fd >= 0) {
        if (read_xattrs(w, fd, NULL, path, len, err) < 0)
            goto fail;
    } else {
        snprintf(proc, sizeof proc, "/proc/self/fd/%d/%s", dfd, name);
        if (read_xattrs(w, -1, proc, path, len, err) < 0)
            return -1;
    }

header:
    h.mode = st.st_mode & 07777;
    h.uid = st.st_uid;
    h.gid = st.st_gid;
    h.mtime = st.st_mtim.tv_sec;
    h.nsec = st.st_mtim.tv_nsec;
    clamp_mtime(w, &h);
    if (put_entry(w, &h, path, len, err) < 0)
        goto fail;
    if (fd >= 0 && w->hash_content) {
        XXH3_128bits_reset(w->hstate);
        w->hashed.data[idx] = 1;
        if (h.size == 0)
            store_hash(w, idx);
    }
    if (fd >= 0) {
        if (h.size == 0) {
            close(fd);
        } else {
            w->file_fd = fd;
            w->file_size = w->file_left = h.size;
            w->file_pos = 0;
            w->file_item = idx;
            /* holes are written as the zeros they read, without reading them */
            w->file_sparse = (uint64_t)st.st_blocks * 512 < h.size;
            w->seg_end = 0;
        }
    }
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    return -1;
}

static int emit_item(struct sd_tar_writer *w, size_t idx, struct sd_error *err)
{
    const struct item *it = item_at(w, idx);
    if (it->kind == SD_TAR_ENTRY)
        return emit_entry(w, idx, err);
    return emit_marker(w, it, err);
}

/* Find the segment (data or hole) of the current sparse file that starts at file_pos. */
static int next_segment(struct sd_tar_writer *w, struct sd_error *err)
{
    off_t pos = (off_t)w->file_pos, d, h;
    d = lseek(w->file_fd, pos, SEEK_DATA);
    if (d < 0 && errno == ENXIO) {  /* a hole up to the end (a shrink is caught by end_file) */
        w->seg_hole = 1;
        w->seg_end = w->file_size;
        return 0;
    }
    if (d < 0 && (errno == EINVAL || errno == EOPNOTSUPP)) {  /* no SEEK_DATA here: read it */
        w->seg_hole = 0;
        w->seg_end = w->file_size;
        return 0;
    }
    if (d < 0) {
        const struct item *it = item_at(w, w->file_item);
        return sd_error_os(err, errno, "lseek", (const char *)w->paths.data + it->off, it->len);
    }
    if (d > pos) {
        w->seg_hole = 1;
        w->seg_end = (uint64_t)d < w->file_size ? (uint64_t)d : w->file_size;
        return 0;
    }
    h = lseek(w->file_fd, pos, SEEK_HOLE);
    w->seg_hole = 0;
    w->seg_end = h > pos && (uint64_t)h < w->file_size ? (uint64_t)h : w->file_size;
    return 0;
}

/* The current file's content is read: check it still has the size its header says. */
static int end_file(struct sd_tar_writer *w, struct sd_error *err)
{
    const struct item *it = item_at(w, w->file_item);
    const char *path = (const char *)w->paths.data + it->off;
    struct stat st;
    int r = fstat(w->file_fd, &st);
    int e = errno;
    close(w->file_fd);
    w->file_fd = -1;
    if (r < 0)
        return sd_error_os(err, e, "fstat", path, it->len);
    if ((uint64_t)st.st_size != w->file_size)
        return sd_error_set(err, SD_ERR_CHANGED, "read", path, it->len,
                            "file changed while being written (size %llu, now %llu)",
                            (unsigned long long)w->file_size, (unsigned long long)st.st_size);
    if (w->hash_content)
        store_hash(w, w->file_item);
    if (tbuf_zeros(&w->out, (BLOCK - w->file_size % BLOCK) % BLOCK) < 0)
        return nomem(err, "read");
    return 0;
}

size_t sd_tar_writer_hashes(const struct sd_tar_writer *w, const uint8_t **hashes,
                            const uint8_t **hashed)
{
    if (!w->hash_content || !w->trailer_done || w->failed || w->hashes.data == NULL)
        return 0;
    *hashes = w->hashes.data;
    *hashed = w->hashed.data;
    return w->n_items;
}

int sd_tar_writer_read(struct sd_tar_writer *w, uint8_t *buf, size_t cap, size_t *n_out,
                       struct sd_error *err)
{
    size_t n = 0;
    *n_out = 0;
    if (w->failed) {
        *err = w->fail;
        return -1;
    }
    if (!w->started && w->hash_content) {
        if (sd_buf_reserve(&w->hashes, 16 * w->n_items + 1) < 0 ||
            sd_buf_reserve(&w->hashed, w->n_items + 1) < 0) {
            nomem(err, "read");
            goto fail;
        }
        memset(w->hashes.data, 0, 16 * w->n_items);
        memset(w->hashed.data, 0, w->n_items);
        w->hashes.len = 16 * w->n_items;
        w->hashed.len = w->n_items;
    }
    w->started = 1;
    while (n < cap) {
        if (w->out_pos < w->out.len) {
            size_t k = w->out.len - w->out_pos;
            if (k > cap - n)
                k = cap - n;
            memcpy(buf + n, w->out.data + w->out_pos, k);
            w->out_pos += k;
            n += k;
            continue;
        }
        w->out.len = w->out_pos = 0;
        if (w->file_fd >= 0) {
            if (w->file_left > 0) {
                size_t want = cap - n;
                ssize_t r;
                if (want > w->file_left)
                    want = (size_t)w->file_left;
                if (want > w->read_chunk)
                    want = w->read_chunk;
                if (w->file_sparse) {
                    if (w->file_pos >= w->seg_end && next_segment(w, err) < 0)
                        goto fail;
                    if (want > w->seg_end - w->file_pos)
                        want = (size_t)(w->seg_end - w->file_pos);
                    if (w->seg_hole) {
                        memset(buf + n, 0, want);
                        r = (ssize_t)want;
                    } else {
                        r = pread(w->file_fd, buf + n, want, (off_t)w->file_pos);
                    }
                } else {
                    r = read(w->file_fd, buf + n, want);
                }
                if (r < 0) {
                    const struct item *it = item_at(w, w->file_item);
                    if (errno == EINTR)
                        continue;
                    sd_error_os(err, errno, "read", (const char *)w->paths.data + it->off, it->len);
                    goto fail;
                }
                if (r == 0) {
                    const struct item *it = item_at(w, w->file_item);
                    sd_error_set(err, SD_ERR_CHANGED, "read", (const char *)w->paths.data + it->off,
                                 it->len, "file changed while being written (size %llu, "
                                 "ended after %llu bytes)", (unsigned long long)w->file_size,
                                 (unsigned long long)(w->file_size - w->file_left));
                    goto fail;
                }
                if (w->hash_content)
                    XXH3_128bits_update(w->hstate, buf + n, (size_t)r);
                n += (size_t)r;
                w->file_left -= (uint64_t)r;
                w->file_pos += (uint64_t)r;
                continue;
            }
            if (end_file(w, err) < 0)
                goto fail;
            continue;
        }
        if (w->next < w->n_items) {
            if (emit_item(w, w->next, err) < 0)
                goto fail;
            w->next++;
            continue;
        }
        if (!w->trailer_done) {
            if (tbuf_zeros(&w->out, 2 * BLOCK) < 0) {
                nomem(err, "read");
                goto fail;
            }
            w->trailer_done = 1;
            continue;
        }
        break;
    }
    w->offset += n;
    *n_out = n;
    return 0;
fail:
    if (w->file_fd >= 0) {
        close(w->file_fd);
        w->file_fd = -1;
    }
    w->failed = 1;
    w->fail = *err;
    return -1;
}
