#include "sd_buf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int sd_buf_reserve(struct sd_buf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return 0;
    size_t need = b->len + extra;
    if (need < b->len)
        return -1; /* overflow */
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    uint8_t *p = realloc(b->data, cap);
    if (p == NULL)
        return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

int sd_buf_append(struct sd_buf *b, const void *p, size_t n)
{
    if (sd_buf_reserve(b, n) < 0)
        return -1;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int sd_buf_append_z(struct sd_buf *b, const void *p, size_t n)
{
    if (n + 1 == 0 || sd_buf_reserve(b, n + 1) < 0)
        return -1;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int sd_buf_set_z(struct sd_buf *b, const void *p, size_t n)
{
    b->len = 0;
    return sd_buf_append_z(b, p, n);
}

void sd_buf_free(struct sd_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

uint8_t *sd_buf_steal(struct sd_buf *b, size_t *len)
{
    uint8_t *p = b->data;
    *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}
