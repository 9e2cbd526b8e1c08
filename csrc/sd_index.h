/* sd_index: operations on sorted entry arrays (struct sd_entry + path blob):
 * tree-order comparison, lookup, validation of a loaded index, join and diff. */
#ifndef SD_INDEX_H
#define SD_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "sd_error.h"
#include "sd_walk.h"

/* Compare two relative paths in tree order: component by component, so that a
 * directory's descendants follow it directly ('/' sorts before every other byte). */
int sd_path_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen);

/* Index of the entry with that path, or -1.  O(log n). */
int64_t sd_index_find(const struct sd_entry *e, size_t n, const uint8_t *paths,
                      const uint8_t *key, size_t keylen);

/* Check that offsets and lengths lie inside the blobs and that paths are strictly
 * increasing in tree order, non-empty, without NUL, leading or doubled '/'. */
int sd_index_validate(const struct sd_entry *e, size_t n, size_t paths_len, size_t extra_len,
                      const uint8_t *paths, struct sd_error *err);

/* For every entry of b, the index of the entry of a with the same path, or -1. */
void sd_index_join(const struct sd_entry *a, size_t na, const uint8_t *pa,
                   const struct sd_entry *b, size_t nb, const uint8_t *pb, int64_t *b_to_a);

enum sd_change_kind {
    SD_ADDED = 1,
    SD_DELETED = 2,
    SD_MODIFIED = 3,   /* content (or link target, or device number) changed */
    SD_METADATA = 4,   /* only mode, owner, mtime or xattrs changed */
    SD_TYPE = 5,       /* the entry changed type (file <-> dir <-> symlink ...) */
};

/* which fields differ, for MODIFIED and METADATA */
#define SD_DIFF_CONTENT 0x001
#define SD_DIFF_SIZE 0x002
#define SD_DIFF_LINK 0x004
#define SD_DIFF_RDEV 0x008
#define SD_DIFF_MODE 0x010
#define SD_DIFF_UID 0x020
#define SD_DIFF_GID 0x040
#define SD_DIFF_MTIME 0x080
#define SD_DIFF_XATTR 0x100
#define SD_DIFF_UNHASHED 0x200 /* content judged from stat data: no hash on one side */
#define SD_DIFF_TYPE 0x400     /* the two entries are of different types */
#define SD_DIFF_OPAQUE 0x800   /* SD_ENTRY_OPAQUE differs (overlay walks only) */

struct sd_change {
    int64_t ia;      /* index in a, or -1 */
    int64_t ib;      /* index in b, or -1 */
    uint32_t kind;   /* enum sd_change_kind */
    uint32_t fields; /* SD_DIFF_* */
};

#define SD_DIFF_IGNORE_MTIME 0x1 /* do not report mtime-only changes */

/* Merge two sorted indexes into a list of changes (struct sd_change[] appended to out).
 * Regular files compare by hash when both sides have one; otherwise by size and stat
 * data (size, mtime, ctime, inode, device): equal stat data means equal content. */
int sd_index_diff(const struct sd_entry *a, size_t na, const uint8_t *pa, const uint8_t *xa,
                  const struct sd_entry *b, size_t nb, const uint8_t *pb, const uint8_t *xb,
                  unsigned flags, struct sd_buf *out, struct sd_error *err);

/* Indexes (into b) of regular files present as regular files in a with the same size but
 * different stat data, which must be hashed to tell whether their content changed.
 * b_to_a comes from sd_index_join. */
int sd_index_stat_changed(const struct sd_entry *a, const struct sd_entry *b, size_t nb,
                          const int64_t *b_to_a, struct sd_buf *out_idx, struct sd_error *err);

/* fields[k] = the SD_DIFF_* bits telling a[ia[k]] from b[ib[k]] (SD_DIFF_TYPE alone when
 * their types differ), for k < n.  Positions must be valid. */
void sd_index_compare_pairs(const struct sd_entry *a, const uint8_t *xa, const int64_t *ia,
                            const struct sd_entry *b, const uint8_t *xb, const int64_t *ib,
                            size_t n, unsigned flags, uint32_t *fields);

/* parent[i] = position of the directory holding entry i, or -1 when it is at the top level
 * (or its parent is not in the index).  One pass with a stack: O(n). */
void sd_index_parents(const struct sd_entry *e, size_t n, const uint8_t *paths,
                      int64_t *parent);

#endif
