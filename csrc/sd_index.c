/* sd_index.c: tree-order comparison, lookup, validation, join and diff of sorted indexes. */
#include "sd_index.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int sd_path_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    size_t i = 0;
    /* skip the common prefix quickly, then decide on the first differing byte */
    while (i < n && a[i] == b[i])
        i++;
    if (i == n)
        return alen < blen ? -1 : (alen > blen ? 1 : 0);
    unsigned ca = a[i] == '/' ? 0u : (unsigned)a[i] + 1u;
    unsigned cb = b[i] == '/' ? 0u : (unsigned)b[i] + 1u;
    return ca < cb ? -1 : 1;
}

static inline int cmp_entries(const struct sd_entry *x, const uint8_t *px,
                              const struct sd_entry *y, const uint8_t *py)
{
    return sd_path_cmp(px + x->path_off, x->path_len, py + y->path_off, y->path_len);
}

int64_t sd_index_find(const struct sd_entry *e, size_t n, const uint8_t *paths,
                      const uint8_t *key, size_t keylen)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = sd_path_cmp(paths + e[mid].path_off, e[mid].path_len, key, keylen);
        if (c == 0)
            return (int64_t)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

int sd_index_validate(const struct sd_entry *e, size_t n, size_t paths_len, size_t extra_len,
                      const uint8_t *paths, struct sd_error *err)
{
    for (size_t i = 0; i < n; i++) {
        const struct sd_entry *x = &e[i];
        if (x->path_len == 0 || x->path_off > paths_len || x->path_len > paths_len - x->path_off)
            return sd_error_set(err, SD_ERR_FORMAT, "index", NULL, 0,
                                "entry %zu: path out of bounds", i);
        if ((uint64_t)x->link_len + x->xattr_len > extra_len ||
            x->extra_off > extra_len - ((uint64_t)x->link_len + x->xattr_len))
            return sd_error_set(err, SD_ERR_FORMAT, "index", NULL, 0,
                                "entry %zu: extra data out of bounds", i);
        const uint8_t *p = paths + x->path_off;
        if (p[0] == '/' || p[x->path_len - 1] == '/' || memchr(p, 0, x->path_len) != NULL)
            return sd_error_set(err, SD_ERR_FORMAT, "index", (const char *)p, x->path_len,
                                "entry %zu: malformed path", i);
        if (i > 0 && cmp_entries(&e[i - 1], paths, x, paths) >= 0)
            return sd_error_set(err, SD_ERR_FORMAT, "index", (const char *)p, x->path_len,
                                "entry %zu: not in tree order", i);
    }
    return 0;
}

void sd_index_join(const struct sd_entry *a, size_t na, const uint8_t *pa,
                   const struct sd_entry *b, size_t nb, const uint8_t *pb, int64_t *b_to_a)
{
    size_t i = 0, j = 0;
    while (j < nb) {
        if (i >= na) {
            b_to_a[j++] = -1;
            continue;
        }
        int c = cmp_entries(&a[i], pa, &b[j], pb);
        if (c < 0) {
            i++;
        } else if (c > 0) {
            b_to_a[j++] = -1;
        } else {
            b_to_a[j++] = (int64_t)i++;
        }
    }
}

static int same_content_by_stat(const struct sd_entry *x, const struct sd_entry *y)
{
    return x->size == y->size && x->mtime_ns == y->mtime_ns && x->ctime_ns == y->ctime_ns &&
           x->ino == y->ino && x->dev == y->dev;
}

/* fields that differ between two entries of the same type */
static uint32_t compare(const struct sd_entry *x, const uint8_t *xx, const struct sd_entry *y,
                        const uint8_t *xy, unsigned flags)
{
    uint32_t f = 0;
    mode_t t = x->mode & S_IFMT;
    if (t == S_IFREG) {
        if (x->size != y->size) {
            f |= SD_DIFF_SIZE | SD_DIFF_CONTENT;
        } else if ((x->flags & SD_ENTRY_HASHED) && (y->flags & SD_ENTRY_HASHED)) {
            if (memcmp(x->hash, y->hash, 16) != 0)
                f |= SD_DIFF_CONTENT;
        } else if (!same_content_by_stat(x, y)) {
            f |= SD_DIFF_CONTENT | SD_DIFF_UNHASHED;
        }
    } else if (t == S_IFLNK) {
        if (x->link_len != y->link_len ||
            memcmp(xx + x->extra_off, xy + y->extra_off, x->link_len) != 0)
            f |= SD_DIFF_LINK;
    } else if (t == S_IFCHR || t == S_IFBLK) {
        if (x->rdev != y->rdev)
            f |= SD_DIFF_RDEV;
    }
    if (x->mode != y->mode)
        f |= SD_DIFF_MODE;
    if (x->uid != y->uid)
        f |= SD_DIFF_UID;
    if (x->gid != y->gid)
        f |= SD_DIFF_GID;
    if (!(flags & SD_DIFF_IGNORE_MTIME) && x->mtime_ns != y->mtime_ns)
        f |= SD_DIFF_MTIME;
    if (x->xattr_len != y->xattr_len ||
        memcmp(xx + x->extra_off + x->link_len, xy + y->extra_off + y->link_len,
               x->xattr_len) != 0)
        f |= SD_DIFF_XATTR;
    if ((x->flags ^ y->flags) & SD_ENTRY_OPAQUE)
        f |= SD_DIFF_OPAQUE;
    return f;
}

#define CONTENT_FIELDS \
    (SD_DIFF_CONTENT | SD_DIFF_SIZE | SD_DIFF_LINK | SD_DIFF_RDEV | SD_DIFF_OPAQUE)

void sd_index_compare_pairs(const struct sd_entry *a, const uint8_t *xa, const int64_t *ia,
                            const struct sd_entry *b, const uint8_t *xb, const int64_t *ib,
                            size_t n, unsigned flags, uint32_t *fields)
{
    for (size_t k = 0; k < n; k++) {
        const struct sd_entry *x = &a[ia[k]], *y = &b[ib[k]];
        fields[k] = ((x->mode ^ y->mode) & S_IFMT) ? SD_DIFF_TYPE : compare(x, xa, y, xb, flags);
    }
}

void sd_index_parents(const struct sd_entry *e, size_t n, const uint8_t *paths,
                      int64_t *parent)
{
    /* stack of the previous entry's ancestors; depth is bounded by the path length */
    int64_t small[256], *stack = small;
    size_t cap = 256, top = 0;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = paths + e[i].path_off;
        size_t len = e[i].path_len;
        size_t slash = len;
        while (slash > 0 && p[slash - 1] != '/')
            slash--;
        /* the parent's path is p[0 .. slash-1), empty for top-level entries */
        parent[i] = -1;
        while (top > 0) {
            const struct sd_entry *t = &e[stack[top - 1]];
            if (t->path_len < len && p[t->path_len] == '/' &&
                memcmp(paths + t->path_off, p, t->path_len) == 0)
                break; /* an ancestor of entry i */
            top--;
        }
        if (top > 0 && slash > 0 && e[stack[top - 1]].path_len == slash - 1)
            parent[i] = stack[top - 1];
        if (top == cap) {
            int64_t *bigger = malloc(2 * cap * sizeof *bigger);
            if (bigger == NULL) {
                /* cannot happen for real trees (depth < PATH_MAX*...); degrade to no parent */
                for (size_t k = i + 1; k < n; k++)
                    parent[k] = -1;
                break;
            }
            memcpy(bigger, stack, top * sizeof *bigger);
            if (stack != small)
                free(stack);
            stack = bigger;
            cap *= 2;
        }
        stack[top++] = (int64_t)i;
    }
    if (stack != small)
        free(stack);
}

static int emit(struct sd_buf *out, int64_t ia, int64_t ib, uint32_t kind, uint32_t fields,
                struct sd_error *err)
{
    struct sd_change c = {.ia = ia, .ib = ib, .kind = kind, .fields = fields};
    if (sd_buf_append(out, &c, sizeof c) < 0)
        return sd_error_set(err, SD_ERR_NOMEM, "diff", NULL, 0, "out of memory");
    return 0;
}

int sd_index_diff(const struct sd_entry *a, size_t na, const uint8_t *pa, const uint8_t *xa,
                  const struct sd_entry *b, size_t nb, const uint8_t *pb, const uint8_t *xb,
                  unsigned flags, struct sd_buf *out, struct sd_error *err)
{
    size_t i = 0, j = 0;
    while (i < na || j < nb) {
        int c = i >= na ? 1 : (j >= nb ? -1 : cmp_entries(&a[i], pa, &b[j], pb));
        if (c < 0) {
            if (emit(out, (int64_t)i++, -1, SD_DELETED, 0, err) < 0)
                return -1;
        } else if (c > 0) {
            if (emit(out, -1, (int64_t)j++, SD_ADDED, 0, err) < 0)
                return -1;
        } else {
            const struct sd_entry *x = &a[i], *y = &b[j];
            if ((x->mode & S_IFMT) != (y->mode & S_IFMT)) {
                if (emit(out, (int64_t)i, (int64_t)j, SD_TYPE, 0, err) < 0)
                    return -1;
            } else {
                uint32_t f = compare(x, xa, y, xb, flags);
                if (f && emit(out, (int64_t)i, (int64_t)j,
                              (f & CONTENT_FIELDS) ? SD_MODIFIED : SD_METADATA, f, err) < 0)
                    return -1;
            }
            i++;
            j++;
        }
    }
    return 0;
}

int sd_index_stat_changed(const struct sd_entry *a, const struct sd_entry *b, size_t nb,
                          const int64_t *b_to_a, struct sd_buf *out_idx, struct sd_error *err)
{
    for (size_t j = 0; j < nb; j++) {
        int64_t i = b_to_a[j];
        if (i < 0 || !S_ISREG(b[j].mode) || !S_ISREG(a[i].mode))
            continue;
        if (a[i].size != b[j].size || same_content_by_stat(&a[i], &b[j]))
            continue;
        int64_t v = (int64_t)j;
        if (sd_buf_append(out_idx, &v, sizeof v) < 0)
            return sd_error_set(err, SD_ERR_NOMEM, "diff", NULL, 0, "out of memory");
    }
    return 0;
}
