/* sd_error: how every function of the core reports a failure.
 *
 * A function returns 0 on success and -1 on failure, after filling the
 * struct sd_error passed as its last argument.  The Cython layer turns it into
 * one Python exception (snapdiff/_core.pyx: raise_sd_error).  No function of
 * csrc/ includes Python.h. */
#ifndef SD_ERROR_H
#define SD_ERROR_H

#include <stddef.h>

enum sd_error_code {
    SD_OK = 0,
    SD_ERR_OS = 1,        /* a system call failed: errnum is the errno */
    SD_ERR_FORMAT = 2,    /* malformed input (index file, tar stream) */
    SD_ERR_UNSAFE = 3,    /* an entry would write outside its root or is not valid */
    SD_ERR_CHANGED = 4,   /* a file changed while it was read */
    SD_ERR_NOMEM = 5,
    SD_ERR_INTERRUPTED = 6, /* the caller asked to stop */
};

#define SD_ERR_PATH_MAX 1024
#define SD_ERR_MSG_MAX 256

struct sd_error {
    int code;                    /* enum sd_error_code */
    int errnum;                  /* errno for SD_ERR_OS, else 0 */
    const char *op;              /* static string: "openat", "read", "tar header" */
    char path[SD_ERR_PATH_MAX];  /* relative path of the subject, truncated with "..." */
    char msg[SD_ERR_MSG_MAX];    /* free text for domain errors */
};

void sd_error_clear(struct sd_error *e);
/* Fill e from errno (captured by the caller) for a syscall `op` on `path` (may be NULL). */
int sd_error_os(struct sd_error *e, int errnum, const char *op, const char *path, size_t path_len);
/* Fill e with a domain error; fmt is printf-style. Always returns -1. */
int sd_error_set(struct sd_error *e, int code, const char *op, const char *path, size_t path_len,
                 const char *fmt, ...) __attribute__((format(printf, 6, 7)));

#endif
