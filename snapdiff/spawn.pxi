# Binding for csrc/sd_spawn.h: see that header.
