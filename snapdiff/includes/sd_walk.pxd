# Mirrors csrc/sd_walk.h
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t

from snapdiff.includes.sd_buf cimport sd_buf
from snapdiff.includes.sd_error cimport sd_error


cdef extern from "sd_walk.h" nogil:
    enum:
        SD_ENTRY_HASHED
        SD_ENTRY_HASH_FAILED
        SD_ENTRY_OPAQUE
        SD_ENTRY_REDIRECT
        SD_ENTRY_METACOPY
        SD_ENTRY_XWHITEOUT

    struct sd_entry:
        uint64_t path_off
        uint64_t extra_off
        uint64_t size
        int64_t mtime_ns
        int64_t ctime_ns
        uint64_t ino
        uint64_t dev
        uint64_t rdev
        uint8_t hash[16]
        uint32_t path_len
        uint32_t link_len
        uint32_t xattr_len
        uint32_t mode
        uint32_t uid
        uint32_t gid
        uint32_t nlink
        uint8_t flags

    struct sd_walk_problem:
        uint64_t path_off
        uint32_t path_len
        int32_t errnum
        const char *op

    struct sd_walk_opts:
        int one_file_system
        int xattrs
        const char *overlay_prefix

    struct sd_walk_result:
        sd_buf entries
        sd_buf paths
        sd_buf extra
        sd_buf problems
        sd_buf problem_paths
        volatile int *cancel

    int sd_walk(int root_fd, const sd_walk_opts *opts, sd_walk_result *out, sd_error *err)
    void sd_walk_result_free(sd_walk_result *r)
    int sd_hash_entries(int root_fd, sd_entry *entries, const uint8_t *paths,
                        const int64_t *idx, size_t n_idx, int threads,
                        sd_walk_result *problems_out, sd_error *err)
    int sd_hash_fd(int fd, uint8_t out[16], uint64_t *bytes_read, sd_error *err)
    int sd_open_beneath(int root_fd, const uint8_t *path, size_t len, int flags, sd_error *err)
