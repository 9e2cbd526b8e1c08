/* sd_tar: stream an OCI layer tar from a list of items under a root directory.
 *
 * A pull-model state machine: the caller adds items (relative paths and what to emit for
 * them), then calls sd_tar_writer_read() repeatedly; each call fills a buffer with the next
 * bytes of the tar stream, reading file contents straight into it.  Nothing calls back into
 * the caller, so the binding can release the GIL around every call.
 *
 * Format: POSIX ustar headers, with a PAX extended header ('x') before an entry when it needs
 * one: a path or link target that does not fit the ustar fields, a size over 8 GiB - 1, a
 * uid/gid over 2097151, an mtime with nanoseconds (or out of the octal range), and extended
 * attributes as SCHILY.xattr.NAME records.  overlayfs's own xattrs (trusted.overlay.*,
 * user.overlay.*) are never written; every other one is kept byte for byte.  Owners are
 * numeric only (uname/gname stay empty): no user or group name is ever looked up.
 *
 * Items come in the order they are written: a directory before its children, an opaque
 * marker right after its directory.  The writer does not sort; it refuses paths that are
 * not safe or cannot be represented (SD_ERR_UNSAFE).  Output is deterministic: the same tree
 * and the same items give the same bytes.
 */
#ifndef SD_TAR_H
#define SD_TAR_H

#include <stddef.h>
#include <stdint.h>

#include "sd_error.h"

enum sd_tar_kind {
    SD_TAR_ENTRY = 0,    /* the file at this path as it is on disk (lstat, never followed) */
    SD_TAR_WHITEOUT = 1, /* a deletion: path "dir/NAME" is written as "dir/.wh.NAME" */
    SD_TAR_OPAQUE = 2,   /* directory "dir" hides its lower contents: "dir/.wh..wh..opq" */
};

struct sd_tar_opts {
    int64_t timestamp;   /* >= 0: clamp every mtime to at most this time (SOURCE_DATE_EPOCH)
                          * and use it as the mtime of whiteouts; < 0: keep mtimes, and
                          * whiteouts get mtime 0 */
    size_t read_chunk;   /* largest read() of file content; 0 means 4 MiB (tests make it
                          * small to change a file half-way through) */
    int hash_content;    /* compute the XXH3-128 of each regular file's content as it is
                          * streamed (sd_tar_writer_hashes): no second read of the files */
};

/* A socket (or any type tar cannot carry) that was left out of the stream. */
struct sd_tar_skipped {
    uint64_t path_off;   /* into the writer's skipped-path blob */
    uint32_t path_len;
    const char *reason;  /* static string, e.g. "socket" */
};

struct sd_tar_writer;

/* A writer for the tree under root_fd (a directory fd, borrowed: it must stay open until
 * sd_tar_writer_free).  opts may be NULL for the defaults.  Returns NULL on failure. */
struct sd_tar_writer *sd_tar_writer_new(int root_fd, const struct sd_tar_opts *opts,
                                        struct sd_error *err);

/* Append n items: item i is the path paths_blob[offs[i] .. offs[i] + lens[i]) (relative, no
 * leading '/', no empty, "." or ".." component, no NUL byte) of kind kinds[i].  The paths are
 * copied.  Every item is checked before any is added: on failure nothing is added.  Every
 * item must be added before the first sd_tar_writer_read (later calls fail). */
int sd_tar_writer_add_items(struct sd_tar_writer *w, const uint8_t *paths_blob,
                            const uint64_t *offs, const uint32_t *lens, const uint8_t *kinds,
                            size_t n, struct sd_error *err);

/* Fill buf with up to cap bytes of the stream; *n_out = 0 once it has ended (after the two
 * zero blocks).  On failure returns -1; the writer is then failed for good and every later
 * call fails with the same error. */
int sd_tar_writer_read(struct sd_tar_writer *w, uint8_t *buf, size_t cap, size_t *n_out,
                       struct sd_error *err);

/* Bytes of tar stream produced so far. */
uint64_t sd_tar_writer_offset(const struct sd_tar_writer *w);

/* The entries left out so far (sockets).  *paths points into memory owned by the writer,
 * valid until the next call on it. */
size_t sd_tar_writer_skipped(const struct sd_tar_writer *w, const struct sd_tar_skipped **out,
                             const uint8_t **paths);

/* With opts.hash_content, once the stream has ended: hashes[16 * i] is the XXH3-128
 * (canonical, big-endian) of item i's content where hashed[i] is 1 (a regular file whose
 * data the stream carries; hard links to an earlier item and non-files are 0).  Both
 * point into the writer's memory.  Returns the number of items, or 0 if not available. */
size_t sd_tar_writer_hashes(const struct sd_tar_writer *w, const uint8_t **hashes,
                            const uint8_t **hashed);

void sd_tar_writer_free(struct sd_tar_writer *w);

#endif
