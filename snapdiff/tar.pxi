# Binding for csrc/sd_tar.h: see that header.
