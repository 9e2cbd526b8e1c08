# Mirrors csrc/sd_buf.h
from libc.stdint cimport uint8_t


cdef extern from "sd_buf.h" nogil:
    struct sd_buf:
        uint8_t *data
        size_t len
        size_t cap

    int sd_buf_reserve(sd_buf *b, size_t extra)
    int sd_buf_append(sd_buf *b, const void *p, size_t n)
    void sd_buf_free(sd_buf *b)
    uint8_t *sd_buf_steal(sd_buf *b, size_t *len)
