# Mirrors csrc/sd_extract.h
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from snapdiff.includes.sd_error cimport sd_error


cdef extern from "sd_extract.h" nogil:
    struct sd_extract_opts:
        int overlay
        int no_openat2

    struct sd_extract_stats:
        uint64_t entries
        uint64_t files
        uint64_t dirs
        uint64_t whiteouts
        uint64_t bytes
        uint64_t holes
        uint64_t skipped
        uint64_t stream

    enum sd_extract_skip:
        SD_SKIP_DEVICE
        SD_SKIP_XATTR

    struct sd_extractor:
        pass

    sd_extractor *sd_extractor_new(int root_fd, const sd_extract_opts *opts, sd_error *err)
    int sd_extractor_feed(sd_extractor *x, const uint8_t *buf, size_t len, sd_error *err)
    int sd_extractor_finish(sd_extractor *x, sd_error *err)
    void sd_extractor_free(sd_extractor *x)
    const sd_extract_stats *sd_extractor_stats(const sd_extractor *x)
    const uint8_t *sd_extractor_skipped(const sd_extractor *x, size_t *len)
