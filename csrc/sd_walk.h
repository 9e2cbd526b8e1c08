/* sd_walk: walk a directory tree relative to directory fds and record every entry.
 *
 * The result is columnar: an array of struct sd_entry, one blob of paths and one
 * "extra" blob holding each entry's symlink target followed by its xattrs.
 * Entries come in tree order: a directory before its children, siblings in byte
 * order of their names (so "a", "a/b", "a-b").  The root itself is not an entry.
 */
#ifndef SD_WALK_H
#define SD_WALK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "sd_buf.h"
#include "sd_error.h"

#define SD_ENTRY_HASHED 0x01     /* hash[] holds the XXH3-128 of the content */
#define SD_ENTRY_HASH_FAILED 0x02 /* hashing was asked for but failed (see errors) */
/* Set only when sd_walk_opts.overlay_prefix is given; those xattrs are then left out. */
#define SD_ENTRY_OPAQUE 0x04     /* <prefix>opaque = "y": a directory that hides lower ones */
#define SD_ENTRY_REDIRECT 0x08   /* <prefix>redirect: a renamed directory (redirect_dir=on) */
#define SD_ENTRY_METACOPY 0x10   /* <prefix>metacopy: metadata-only copy-up (metacopy=on) */
#define SD_ENTRY_XWHITEOUT 0x20  /* <prefix>whiteout: a whiteout made as a file with an xattr */

/* 112 bytes; snapdiff/index.py declares the same layout as a numpy dtype. */
struct sd_entry {
    uint64_t path_off;   /* into the path blob; paths have no leading '/' and no NUL */
    uint64_t extra_off;  /* into the extra blob: link target, then xattrs */
    uint64_t size;
    int64_t mtime_ns;
    int64_t ctime_ns;
    uint64_t ino;
    uint64_t dev;
    uint64_t rdev;
    uint8_t hash[16];    /* XXH3-128, big-endian canonical form */
    uint32_t path_len;
    uint32_t link_len;   /* symlink target bytes at extra_off */
    uint32_t xattr_len;  /* xattr records at extra_off + link_len */
    uint32_t mode;       /* full st_mode: type and permission bits with suid/sgid/sticky */
    uint32_t uid;
    uint32_t gid;
    uint32_t nlink;
    uint8_t flags;       /* SD_ENTRY_* */
    uint8_t pad[3];
};

/* xattr record in the extra blob: u32 name_len, u32 value_len, name, value.
 * Records are sorted by name. */

/* An error met while walking that did not stop the walk (e.g. EACCES on a subtree). */
struct sd_walk_problem {
    uint64_t path_off;   /* into the problems' own path blob */
    uint32_t path_len;
    int32_t errnum;
    const char *op;      /* static string */
};

struct sd_walk_opts {
    int one_file_system; /* do not descend into directories on another device */
    int xattrs;          /* read extended attributes */
    /* When non-NULL ("trusted.overlay." or "user.overlay."): xattrs with this prefix are
     * overlayfs' own markers; they set SD_ENTRY_* flags and are not recorded. Borrowed. */
    const char *overlay_prefix;
};

/* The result of a walk.  All memory is owned by the struct; sd_walk_result_free releases it. */
struct sd_walk_result {
    struct sd_buf entries;  /* struct sd_entry[] */
    struct sd_buf paths;
    struct sd_buf extra;
    struct sd_buf problems; /* struct sd_walk_problem[] */
    struct sd_buf problem_paths;
    volatile int *cancel;   /* borrowed: when non-NULL and set, the walk stops with SD_ERR_INTERRUPTED */
};

/* Walk the tree under root_fd (a directory fd, borrowed).  Vanished entries are skipped;
 * unreadable ones are recorded as problems and the walk goes on.  Returns -1 only on a
 * failure that makes the result meaningless (out of memory, root unreadable, cancel). */
int sd_walk(int root_fd, const struct sd_walk_opts *opts, struct sd_walk_result *out,
            struct sd_error *err);
void sd_walk_result_free(struct sd_walk_result *r);

/* Hash the regular files entries[idx[i]] for i < n_idx, on `threads` threads, opening each
 * relative to root_fd.  Fills hash[] and sets SD_ENTRY_HASHED, or SD_ENTRY_HASH_FAILED and a
 * problem record.  A file whose size changed while hashing is a problem (op "changed"). */
int sd_hash_entries(int root_fd, struct sd_entry *entries, const uint8_t *paths,
                    const int64_t *idx, size_t n_idx, int threads,
                    struct sd_walk_result *problems_out, struct sd_error *err);

/* XXH3-128 of the bytes of an open file (streamed; holes are hashed as the zeros they read). */
int sd_hash_fd(int fd, uint8_t out[16], uint64_t *bytes_read, struct sd_error *err);

/* Open a relative path under root_fd without following symlinks in any component
 * (component by component when the path is longer than PATH_MAX). */
int sd_open_beneath(int root_fd, const uint8_t *path, size_t len, int flags,
                    struct sd_error *err);

#endif
