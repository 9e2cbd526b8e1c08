# Binding for csrc/sd_extract.h: see that header.
