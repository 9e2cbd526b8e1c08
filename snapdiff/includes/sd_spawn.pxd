# Mirrors csrc/sd_spawn.h
from posix.types cimport gid_t, pid_t, uid_t

from snapdiff.includes.sd_error cimport sd_error


cdef extern from "sd_spawn.h" nogil:
    int sd_mount_overlay(const char *const *lowers, size_t nlowers, const char *upper,
                         const char *work, const char *target, const char *const *opts,
                         size_t nopts, sd_error *err)
    int sd_mount(const char *source, const char *target, const char *fstype,
                 unsigned long flags, const char *data, sd_error *err)
    int sd_umount(const char *target, int flags, sd_error *err)

    struct sd_bind:
        const char *src
        const char *dst
        int readonly

    struct sd_spawn_opts:
        const char *rootfs
        const char *const *argv
        const char *const *envp
        const char *cwd
        const char *hostname
        uid_t uid
        gid_t gid
        const gid_t *groups
        size_t ngroups
        int host_network
        const sd_bind *binds
        size_t nbinds
        int stdin_fd
        int stdout_fd
        int stderr_fd
        int new_session
        int tty_fd
        const char *cgroup_procs

    int sd_spawn(const sd_spawn_opts *o, pid_t *pid_out, sd_error *err)

    struct sd_exec_opts:
        pid_t target
        const char *const *argv
        const char *const *envp
        const char *cwd
        uid_t uid
        gid_t gid
        const gid_t *groups
        size_t ngroups
        int stdin_fd
        int stdout_fd
        int stderr_fd

    int sd_exec_in(const sd_exec_opts *o, pid_t *pid_out, sd_error *err)
