# Mirrors csrc/sd_error.h
cdef extern from "sd_error.h" nogil:
    enum sd_error_code:
        SD_OK
        SD_ERR_OS
        SD_ERR_FORMAT
        SD_ERR_UNSAFE
        SD_ERR_CHANGED
        SD_ERR_NOMEM
        SD_ERR_INTERRUPTED

    struct sd_error:
        int code
        int errnum
        const char *op
        char path[1024]
        char msg[256]

    void sd_error_clear(sd_error *e)
