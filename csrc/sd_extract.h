/* sd_extract: apply a layer tar stream under a root directory, safely.
 *
 * Push model: the caller feeds the (already decompressed) tar bytes in chunks of any size;
 * nothing here calls back into the caller.  The parser accepts ustar, GNU long names
 * ('L'/'K') and PAX headers ('x' per entry and 'g' global: path, linkpath, size, mtime with
 * nanoseconds, uid, gid, SCHILY.xattr.*).
 *
 * Semantics are the OCI image-spec layer rules:
 *  - regular files, directories, symlinks, hard links, fifos, and char/block devices (devices
 *    only when running as root: otherwise skipped and listed by sd_extractor_skipped);
 *  - ownership (root only), mode with setuid/setgid/sticky (chmod after chown), every xattr
 *    (after chown, which drops security.capability), nanosecond mtimes; a directory's mode and
 *    mtime are set by sd_extractor_finish, after its contents, deepest first;
 *  - regular files are written sparse: aligned 4096-byte runs of zeros become holes;
 *  - an existing entry at a path is replaced; a directory over a directory keeps its contents;
 *  - whiteouts: `.wh.NAME` removes NAME, `.wh..wh..opq` in D removes what D held before this
 *    layer.  With opts.overlay they become overlayfs markers instead: a character device 0:0
 *    named NAME, and xattr trusted.overlay.opaque=y on D.
 *
 * Safety (SD_ERR_UNSAFE): absolute names and `..` components are rejected (not stripped:
 * OCI layer paths are relative); parents are resolved under root_fd with openat2
 * RESOLVE_IN_ROOT (a symlink is followed only as if root_fd were "/", so it never leads
 * outside), or component by component with O_NOFOLLOW where openat2 is missing, in which case
 * a symlink in a parent is rejected.  The last component is never followed.  Hard link
 * targets must be relative and exist under the root.  Invalid whiteout names, duplicate
 * entries, a whiteout and an entry of one name, and anything under a path the same layer
 * deletes are rejected.  Names: no NUL, not empty, each component at most 255 bytes
 * (ENAMETOOLONG otherwise); a whole path may exceed PATH_MAX.
 *
 * Memory: one record per entry (its path, for duplicate detection) plus one per directory
 * (deferred mode and mtime); file contents stream through.  After a failure the root holds
 * whatever was applied so far: callers that need all-or-nothing extract into a fresh
 * directory and remove it on failure (snapdiff/extraction.py does). */
#ifndef SD_EXTRACT_H
#define SD_EXTRACT_H

#include <stddef.h>
#include <stdint.h>

#include "sd_error.h"

struct sd_extract_opts {
    int overlay;     /* whiteouts become overlayfs markers instead of deletions */
    int no_openat2;  /* resolve component by component even where openat2 exists (tests) */
};

struct sd_extract_stats {
    uint64_t entries;    /* tar entries applied, whiteouts included, metadata headers not */
    uint64_t files;
    uint64_t dirs;
    uint64_t whiteouts;  /* .wh.NAME and opaque markers */
    uint64_t bytes;      /* regular file content bytes */
    uint64_t holes;      /* bytes skipped as holes */
    uint64_t skipped;
    uint64_t stream;     /* tar bytes consumed */
};

/* Why an entry (or part of it) was not applied. */
enum sd_extract_skip {
    SD_SKIP_DEVICE = 1,  /* char/block device while not root */
    SD_SKIP_XATTR = 2,   /* an xattr the filesystem or our privileges refused while not root */
};

/* Skip record in the buffer returned by sd_extractor_skipped:
 * u32 reason (enum sd_extract_skip), u32 path_len, path bytes. */

struct sd_extractor;

/* root_fd is borrowed: an open directory (not O_PATH) that outlives the extractor. */
struct sd_extractor *sd_extractor_new(int root_fd, const struct sd_extract_opts *opts,
                                      struct sd_error *err);
/* Consume len bytes of the tar stream.  Any chunking is accepted. After a failure every
 * later call fails again. */
int sd_extractor_feed(struct sd_extractor *x, const uint8_t *buf, size_t len,
                      struct sd_error *err);
/* End of stream: fails (SD_ERR_FORMAT) if it ended inside an entry or before the two zero
 * end blocks, else applies the deferred directory modes and mtimes. */
int sd_extractor_finish(struct sd_extractor *x, struct sd_error *err);
void sd_extractor_free(struct sd_extractor *x);

const struct sd_extract_stats *sd_extractor_stats(const struct sd_extractor *x);
/* Skip records (borrowed, valid until the next feed or free). */
const uint8_t *sd_extractor_skipped(const struct sd_extractor *x, size_t *len);

#endif
