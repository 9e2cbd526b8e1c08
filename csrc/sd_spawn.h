/* sd_spawn: mounts and the container launcher, in C so that no Python runs between
 * fork and exec.
 *
 * sd_mount_overlay   mounts overlayfs with the new mount API (fsopen/fsconfig/fsmount/
 *                    move_mount), one `lowerdir+` call per layer, so a long layer list never
 *                    meets the page-size limit of a mount(2) options string.
 * sd_mount/sd_umount thin wrappers over mount(2)/umount2(2) with sd_error reporting.
 * sd_spawn           clones a process into new mount, PID, UTS, IPC (and network) namespaces,
 *                    builds its root (proc, dev, sys, volumes), pivots into it and execs.
 * sd_exec_in         runs a command inside the namespaces of a running container.
 *
 * A child that fails reports (errno, step, path) to the parent over a close-on-exec pipe;
 * the parent returns -1 with err->op = the step.  All pointers in the option structs are
 * borrowed: the caller keeps them alive for the duration of the call. */
#ifndef SD_SPAWN_H
#define SD_SPAWN_H

#include <stddef.h>
#include <sys/types.h>

#include "sd_error.h"

/* Mount overlayfs on `target`.  lowers: top layer first.  opts: "key=value" or "flag"
 * strings passed one by one to fsconfig.  Returns 0, or -1 with err->op naming the call
 * ("fsopen", "fsconfig lowerdir+", "fsmount", ...) and err->msg holding the kernel's own
 * message from the filesystem context log when it wrote one. */
int sd_mount_overlay(const char *const *lowers, size_t nlowers, const char *upper,
                     const char *work, const char *target, const char *const *opts,
                     size_t nopts, struct sd_error *err);

int sd_mount(const char *source, const char *target, const char *fstype, unsigned long flags,
             const char *data, struct sd_error *err);
int sd_umount(const char *target, int flags, struct sd_error *err);

struct sd_bind {
    const char *src;    /* borrowed: host path */
    const char *dst;    /* borrowed: absolute path inside the container */
    int readonly;
};

struct sd_spawn_opts {
    const char *rootfs;            /* borrowed: the merged tree (absolute) */
    const char *const *argv;       /* borrowed, NULL-terminated; argv[0] searched in PATH */
    const char *const *envp;       /* borrowed, NULL-terminated */
    const char *cwd;               /* borrowed: inside the container; NULL = "/" */
    const char *hostname;          /* borrowed; NULL = leave the UTS name as cloned */
    uid_t uid;
    gid_t gid;
    const gid_t *groups;           /* borrowed: supplementary groups */
    size_t ngroups;
    int host_network;              /* 1: share the host's network namespace */
    const struct sd_bind *binds;   /* borrowed */
    size_t nbinds;
    int stdin_fd, stdout_fd, stderr_fd;   /* -1: inherit */
    int new_session;               /* 1: setsid (detached); 0: own process group */
    int tty_fd;                    /* >= 0: make the child's group the foreground of this tty */
    const char *cgroup_procs;      /* borrowed; NULL or a cgroup.procs file the child joins */
};

/* Start the container process; *pid_out is its pid in the caller's PID namespace (it is
 * PID 1 in its own).  Returns once the child has exec'd (0) or failed (-1, err->op = step). */
int sd_spawn(const struct sd_spawn_opts *o, pid_t *pid_out, struct sd_error *err);

struct sd_exec_opts {
    pid_t target;                  /* a process of the running container (its PID 1) */
    const char *const *argv;       /* borrowed, NULL-terminated */
    const char *const *envp;       /* borrowed, NULL-terminated */
    const char *cwd;               /* borrowed; NULL = "/" */
    uid_t uid;
    gid_t gid;
    const gid_t *groups;
    size_t ngroups;
    int stdin_fd, stdout_fd, stderr_fd;
};

/* Start argv inside the namespaces (mnt, pid, uts, ipc, net) and root of o->target.  The new
 * process is a child of the caller (CLONE_PARENT from a helper that joined the namespaces),
 * so the caller waits for it with waitpid(*pid_out). */
int sd_exec_in(const struct sd_exec_opts *o, pid_t *pid_out, struct sd_error *err);

#endif
