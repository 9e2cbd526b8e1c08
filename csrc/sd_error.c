#include "sd_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void sd_error_clear(struct sd_error *e)
{
    e->code = SD_OK;
    e->errnum = 0;
    e->op = "";
    e->path[0] = '\0';
    e->msg[0] = '\0';
}

static void set_path(struct sd_error *e, const char *path, size_t len)
{
    if (path == NULL) {
        e->path[0] = '\0';
        return;
    }
    if (len < SD_ERR_PATH_MAX) {
        memcpy(e->path, path, len);
        e->path[len] = '\0';
    } else {
        /* keep the tail, which names the file; mark the cut */
        size_t keep = SD_ERR_PATH_MAX - 4;
        memcpy(e->path, "...", 3);
        memcpy(e->path + 3, path + len - keep, keep);
        e->path[SD_ERR_PATH_MAX - 1] = '\0';
    }
}

int sd_error_os(struct sd_error *e, int errnum, const char *op, const char *path, size_t path_len)
{
    e->code = SD_ERR_OS;
    e->errnum = errnum;
    e->op = op;
    set_path(e, path, path_len);
    e->msg[0] = '\0';
    return -1;
}

int sd_error_set(struct sd_error *e, int code, const char *op, const char *path, size_t path_len,
                 const char *fmt, ...)
{
    va_list ap;
    e->code = code;
    e->errnum = 0;
    e->op = op;
    set_path(e, path, path_len);
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return -1;
}
