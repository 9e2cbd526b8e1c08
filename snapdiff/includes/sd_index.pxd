# Mirrors csrc/sd_index.h
from libc.stdint cimport int64_t, uint8_t, uint32_t

from snapdiff.includes.sd_error cimport sd_error
from snapdiff.includes.sd_buf cimport sd_buf
from snapdiff.includes.sd_walk cimport sd_entry


cdef extern from "sd_index.h" nogil:
    int sd_path_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
    int64_t sd_index_find(const sd_entry *e, size_t n, const uint8_t *paths,
                          const uint8_t *key, size_t keylen)
    int sd_index_validate(const sd_entry *e, size_t n, size_t paths_len, size_t extra_len,
                          const uint8_t *paths, sd_error *err)
    void sd_index_join(const sd_entry *a, size_t na, const uint8_t *pa,
                       const sd_entry *b, size_t nb, const uint8_t *pb, int64_t *b_to_a)

    enum:
        SD_ADDED
        SD_DELETED
        SD_MODIFIED
        SD_METADATA
        SD_TYPE
        SD_DIFF_IGNORE_MTIME

    struct sd_change:
        int64_t ia
        int64_t ib
        uint32_t kind
        uint32_t fields

    int sd_index_diff(const sd_entry *a, size_t na, const uint8_t *pa, const uint8_t *xa,
                      const sd_entry *b, size_t nb, const uint8_t *pb, const uint8_t *xb,
                      unsigned flags, sd_buf *out, sd_error *err)
    int sd_index_stat_changed(const sd_entry *a, const sd_entry *b, size_t nb,
                              const int64_t *b_to_a, sd_buf *out_idx, sd_error *err)
    void sd_index_compare_pairs(const sd_entry *a, const uint8_t *xa, const int64_t *ia,
                                const sd_entry *b, const uint8_t *xb, const int64_t *ib,
                                size_t n, unsigned flags, uint32_t *fields)
    void sd_index_parents(const sd_entry *e, size_t n, const uint8_t *paths, int64_t *parent)
