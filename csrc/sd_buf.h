/* sd_buf: the growable byte buffer every part of the core uses.  `data` is owned. */
#ifndef SD_BUF_H
#define SD_BUF_H

#include <stddef.h>
#include <stdint.h>

struct sd_buf {
    uint8_t *data; /* owned */
    size_t len;
    size_t cap;
};

/* Make room for `extra` more bytes; -1 when out of memory (or on size overflow). */
int sd_buf_reserve(struct sd_buf *b, size_t extra);
int sd_buf_append(struct sd_buf *b, const void *p, size_t n);
/* Append, keeping a NUL after the data (not counted in len): for paths given to syscalls. */
int sd_buf_append_z(struct sd_buf *b, const void *p, size_t n);
/* Replace the content with p[0..n), NUL-terminated like sd_buf_append_z. */
int sd_buf_set_z(struct sd_buf *b, const void *p, size_t n);
void sd_buf_free(struct sd_buf *b);
/* Hand the memory over to the caller (who frees it with free()); the buffer is emptied. */
uint8_t *sd_buf_steal(struct sd_buf *b, size_t *len);

#endif
