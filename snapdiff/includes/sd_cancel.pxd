# Mirrors csrc/sd_cancel.h
cdef extern from "sd_cancel.h" nogil:
    int sd_cancel_begin(volatile int *flag)
    void sd_cancel_end(int slot)
