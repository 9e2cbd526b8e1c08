# Mirrors csrc/sd_tar.h
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from snapdiff.includes.sd_error cimport sd_error


cdef extern from "sd_tar.h" nogil:
    enum sd_tar_kind:
        SD_TAR_ENTRY
        SD_TAR_WHITEOUT
        SD_TAR_OPAQUE

    struct sd_tar_opts:
        int64_t timestamp
        size_t read_chunk
        int hash_content

    struct sd_tar_skipped:
        uint64_t path_off
        uint32_t path_len
        const char *reason

    struct sd_tar_writer:
        pass

    sd_tar_writer *sd_tar_writer_new(int root_fd, const sd_tar_opts *opts, sd_error *err)
    int sd_tar_writer_add_items(sd_tar_writer *w, const uint8_t *paths_blob,
                                const uint64_t *offs, const uint32_t *lens,
                                const uint8_t *kinds, size_t n, sd_error *err)
    int sd_tar_writer_read(sd_tar_writer *w, uint8_t *buf, size_t cap, size_t *n_out,
                           sd_error *err)
    uint64_t sd_tar_writer_offset(const sd_tar_writer *w)
    size_t sd_tar_writer_skipped(const sd_tar_writer *w, const sd_tar_skipped **out,
                                 const uint8_t **paths)
    size_t sd_tar_writer_hashes(const sd_tar_writer *w, const uint8_t **hashes,
                                const uint8_t **hashed)
    void sd_tar_writer_free(sd_tar_writer *w)
