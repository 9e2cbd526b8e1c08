/* sd_spawn: overlay mounts and the container launcher.  See sd_spawn.h.
 *
 * The children created here run only C: they were cloned from a Python process (with the
 * GIL released by the binding) and either exec or _exit.  They use no malloc and no stdio
 * stream; every failure is written as one fixed-size record (smaller than PIPE_BUF, so it
 * is atomic) to a close-on-exec pipe that the parent reads: end of file means the exec
 * succeeded. */
#include "sd_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

/* ---- mounts --------------------------------------------------------------------------- */

/* Append the messages the kernel left in a filesystem context's log ("e overlay: ...")
 * to err->msg, so "fsconfig lowerdir+: Invalid argument" says why. */
static void read_fs_log(int fsfd, struct sd_error *err)
{
    char line[512];
    size_t used = strlen(err->msg);
    for (;;) {
        ssize_t n = read(fsfd, line, sizeof line - 1);
        if (n <= 0)
            break;
        line[n] = '\0';
        const char *text = (n > 2 && line[1] == ' ') ? line + 2 : line;
        int w = snprintf(err->msg + used, sizeof err->msg - used, "%s%s",
                         used ? "; " : "", text);
        if (w < 0 || (size_t)w >= sizeof err->msg - used)
            break;
        used += (size_t)w;
    }
}

static int fs_fail(int fsfd, struct sd_error *err, int errnum, const char *op, const char *path)
{
    sd_error_os(err, errnum, op, path, path ? strlen(path) : 0);
    if (fsfd >= 0)
        read_fs_log(fsfd, err);
    return -1;
}

int sd_mount_overlay(const char *const *lowers, size_t nlowers, const char *upper,
                     const char *work, const char *target, const char *const *opts,
                     size_t nopts, struct sd_error *err)
{
    int fsfd = fsopen("overlay", FSOPEN_CLOEXEC);
    if (fsfd < 0)
        return fs_fail(-1, err, errno, "fsopen", "overlay");
    int rc = -1, mfd = -1;
    for (size_t i = 0; i < nopts; i++) {
        char key[64];
        const char *eq = strchr(opts[i], '=');
        if (eq == NULL) {
            if (fsconfig(fsfd, FSCONFIG_SET_FLAG, opts[i], NULL, 0) < 0) {
                fs_fail(fsfd, err, errno, "fsconfig", opts[i]);
                goto out;
            }
            continue;
        }
        size_t klen = (size_t)(eq - opts[i]);
        if (klen >= sizeof key) {
            sd_error_set(err, SD_ERR_FORMAT, "fsconfig", opts[i], strlen(opts[i]),
                         "option name too long");
            goto out;
        }
        memcpy(key, opts[i], klen);
        key[klen] = '\0';
        if (fsconfig(fsfd, FSCONFIG_SET_STRING, key, eq + 1, 0) < 0) {
            fs_fail(fsfd, err, errno, "fsconfig", opts[i]);
            goto out;
        }
    }
    for (size_t i = 0; i < nlowers; i++) {
        if (fsconfig(fsfd, FSCONFIG_SET_STRING, "lowerdir+", lowers[i], 0) < 0) {
            fs_fail(fsfd, err, errno, "fsconfig lowerdir+", lowers[i]);
            goto out;
        }
    }
    if (upper && fsconfig(fsfd, FSCONFIG_SET_STRING, "upperdir", upper, 0) < 0) {
        fs_fail(fsfd, err, errno, "fsconfig upperdir", upper);
        goto out;
    }
    if (work && fsconfig(fsfd, FSCONFIG_SET_STRING, "workdir", work, 0) < 0) {
        fs_fail(fsfd, err, errno, "fsconfig workdir", work);
        goto out;
    }
    if (fsconfig(fsfd, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
        fs_fail(fsfd, err, errno, "fsconfig create", target);
        goto out;
    }
    mfd = fsmount(fsfd, FSMOUNT_CLOEXEC, 0);
    if (mfd < 0) {
        fs_fail(fsfd, err, errno, "fsmount", target);
        goto out;
    }
    if (move_mount(mfd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH) < 0) {
        fs_fail(-1, err, errno, "move_mount", target);
        goto out;
    }
    rc = 0;
out:
    if (mfd >= 0)
        close(mfd);
    close(fsfd);
    return rc;
}

int sd_mount(const char *source, const char *target, const char *fstype, unsigned long flags,
             const char *data, struct sd_error *err)
{
    if (mount(source, target, fstype, flags, data) < 0)
        return sd_error_os(err, errno, "mount", target, strlen(target));
    return 0;
}

int sd_umount(const char *target, int flags, struct sd_error *err)
{
    if (umount2(target, flags) < 0)
        return sd_error_os(err, errno, "umount", target, strlen(target));
    return 0;
}

/* ---- the child's report ------------------------------------------------------------- */

enum step {
    ST_SETSID, ST_SETPGID, ST_TCSETPGRP, ST_CGROUP, ST_LOOPBACK, ST_MAKE_PRIVATE,
    ST_OPEN_TREE, ST_SETATTR_RO, ST_BIND_ROOT, ST_CHDIR_ROOT, ST_PIVOT_ROOT,
    ST_DETACH_OLDROOT, ST_MKDIR, ST_MOUNT_PROC, ST_MOUNT_DEV, ST_MKNOD, ST_SYMLINK,
    ST_MOUNT_DEVPTS, ST_MOUNT_SHM, ST_MOUNT_SYS, ST_BIND_VOLUME, ST_SETHOSTNAME,
    ST_CHDIR, ST_SETGROUPS, ST_SETGID, ST_SETUID, ST_DUP2, ST_EXECVE, ST_OPEN_NS, ST_SETNS,
    ST_CHROOT, ST_CLONE, ST_COUNT
};

/* static strings: err->op must outlive the call */
static const char *const step_names[ST_COUNT] = {
    [ST_SETSID] = "setsid", [ST_SETPGID] = "setpgid", [ST_TCSETPGRP] = "tcsetpgrp",
    [ST_CGROUP] = "join cgroup", [ST_LOOPBACK] = "bring up lo",
    [ST_MAKE_PRIVATE] = "make mounts private", [ST_OPEN_TREE] = "open_tree",
    [ST_SETATTR_RO] = "mount_setattr ro", [ST_BIND_ROOT] = "bind rootfs",
    [ST_CHDIR_ROOT] = "chdir rootfs", [ST_PIVOT_ROOT] = "pivot_root",
    [ST_DETACH_OLDROOT] = "detach old root", [ST_MKDIR] = "mkdir",
    [ST_MOUNT_PROC] = "mount proc", [ST_MOUNT_DEV] = "mount dev", [ST_MKNOD] = "mknod",
    [ST_SYMLINK] = "symlink", [ST_MOUNT_DEVPTS] = "mount devpts",
    [ST_MOUNT_SHM] = "mount shm", [ST_MOUNT_SYS] = "mount sysfs",
    [ST_BIND_VOLUME] = "bind volume", [ST_SETHOSTNAME] = "sethostname",
    [ST_CHDIR] = "chdir", [ST_SETGROUPS] = "setgroups", [ST_SETGID] = "setgid",
    [ST_SETUID] = "setuid", [ST_DUP2] = "dup2", [ST_EXECVE] = "execve",
    [ST_OPEN_NS] = "open namespace", [ST_SETNS] = "setns", [ST_CHROOT] = "chroot",
    [ST_CLONE] = "clone",
};

enum { REC_ERROR = 1, REC_PID = 2 };

struct report {
    int kind;
    int errnum;
    int step;
    pid_t pid;
    char path[512];
};

static void write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        p += n;
        len -= (size_t)n;
    }
}

__attribute__((noreturn)) static void die(int wfd, int errnum, enum step step, const char *path)
{
    struct report r;
    memset(&r, 0, sizeof r);
    r.kind = REC_ERROR;
    r.errnum = errnum;
    r.step = step;
    if (path) {
        size_t n = strlen(path);
        if (n >= sizeof r.path)
            n = sizeof r.path - 1;
        memcpy(r.path, path, n);
    }
    write_all(wfd, &r, sizeof r);
    _exit(127);
}

/* Read one record; 0 = end of file (the exec happened), 1 = a record, -1 = read error. */
static int read_report(int rfd, struct report *r)
{
    size_t got = 0;
    while (got < sizeof *r) {
        ssize_t n = read(rfd, (char *)r + got, sizeof *r - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            return got == 0 ? 0 : -1;
        got += (size_t)n;
    }
    return 1;
}

static int report_to_error(const struct report *r, struct sd_error *err)
{
    const char *op = (r->step >= 0 && r->step < ST_COUNT) ? step_names[r->step] : "spawn";
    return sd_error_os(err, r->errnum, op, r->path[0] ? r->path : NULL, strlen(r->path));
}

/* ---- helpers run in the child ------------------------------------------------------- */

static void reset_signals(void)
{
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    for (int s = 1; s < NSIG; s++) {
        if (s == SIGKILL || s == SIGSTOP)
            continue;
        signal(s, SIG_DFL);   /* Python ignores SIGPIPE; the container must not inherit that */
    }
}

/* mkdir -p for an absolute path inside the (new) root; missing mount points are created in
 * the container's writable layer, as other runtimes do. */
static void mkdir_p(int wfd, const char *path, mode_t mode)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n >= sizeof buf)
        die(wfd, ENAMETOOLONG, ST_MKDIR, path);
    memcpy(buf, path, n + 1);
    for (char *p = buf + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, mode) < 0 && errno != EEXIST)
                die(wfd, errno, ST_MKDIR, buf);
            *p = c;
            if (c == '\0')
                break;
        }
    }
}

static void loopback_up(int wfd)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        die(wfd, errno, ST_LOOPBACK, "lo");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, "lo", 3);
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        die(wfd, errno, ST_LOOPBACK, "lo");
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
        die(wfd, errno, ST_LOOPBACK, "lo");
    close(s);
}

static void setup_dev(int wfd)
{
    static const struct { const char *name; unsigned maj, min; } nodes[] = {
        {"/dev/null", 1, 3}, {"/dev/zero", 1, 5}, {"/dev/full", 1, 7},
        {"/dev/random", 1, 8}, {"/dev/urandom", 1, 9}, {"/dev/tty", 5, 0},
    };
    static const struct { const char *target, *name; } links[] = {
        {"/proc/self/fd", "/dev/fd"}, {"/proc/self/fd/0", "/dev/stdin"},
        {"/proc/self/fd/1", "/dev/stdout"}, {"/proc/self/fd/2", "/dev/stderr"},
        {"pts/ptmx", "/dev/ptmx"},
    };
    mkdir_p(wfd, "/dev", 0755);
    if (mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k") < 0)
        die(wfd, errno, ST_MOUNT_DEV, "/dev");
    for (size_t i = 0; i < sizeof nodes / sizeof nodes[0]; i++) {
        if (mknod(nodes[i].name, S_IFCHR | 0666, makedev(nodes[i].maj, nodes[i].min)) < 0)
            die(wfd, errno, ST_MKNOD, nodes[i].name);
        chmod(nodes[i].name, 0666);   /* the umask applied to mknod */
    }
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
        if (symlink(links[i].target, links[i].name) < 0)
            die(wfd, errno, ST_SYMLINK, links[i].name);
    mkdir_p(wfd, "/dev/pts", 0755);
    if (mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620") < 0)
        die(wfd, errno, ST_MOUNT_DEVPTS, "/dev/pts");
    mkdir_p(wfd, "/dev/shm", 01777);
    if (mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "mode=1777,size=65536k") < 0)
        die(wfd, errno, ST_MOUNT_SHM, "/dev/shm");
}

static void set_ids(int wfd, uid_t uid, gid_t gid, const gid_t *groups, size_t ngroups)
{
    if (setgroups(ngroups, groups) < 0)
        die(wfd, errno, ST_SETGROUPS, NULL);
    if (setgid(gid) < 0)
        die(wfd, errno, ST_SETGID, NULL);
    if (setuid(uid) < 0)
        die(wfd, errno, ST_SETUID, NULL);
}

static void set_stdio(int wfd, int in, int out, int errfd)
{
    int fds[3] = {in, out, errfd};
    for (int i = 0; i < 3; i++) {
        if (fds[i] < 0)
            continue;
        if (fds[i] == i) {
            int fl = fcntl(i, F_GETFD);
            if (fl >= 0)
                fcntl(i, F_SETFD, fl & ~FD_CLOEXEC);
        } else if (dup2(fds[i], i) < 0) {
            die(wfd, errno, ST_DUP2, NULL);
        }
    }
    /* everything else the Python process had open must not reach the container */
    syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);
}

/* execvpe without malloc: PATH comes from the container's environment. */
__attribute__((noreturn)) static void exec_path(int wfd, const char *const *argv,
                                                const char *const *envp)
{
    const char *file = argv[0];
    if (file == NULL || file[0] == '\0')
        die(wfd, ENOENT, ST_EXECVE, "");
    if (strchr(file, '/')) {
        execve(file, (char *const *)argv, (char *const *)envp);
        die(wfd, errno, ST_EXECVE, file);
    }
    const char *path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    for (const char *const *e = envp; *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0)
            path = *e + 5;
    int saved = ENOENT;
    char buf[4096];
    for (const char *p = path; ; ) {
        const char *colon = strchr(p, ':');
        size_t dlen = colon ? (size_t)(colon - p) : strlen(p);
        if (dlen == 0) {
            dlen = 1;
            p = ".";
        }
        if (dlen + 1 + strlen(file) < sizeof buf) {
            memcpy(buf, p, dlen);
            buf[dlen] = '/';
            strcpy(buf + dlen + 1, file);
            execve(buf, (char *const *)argv, (char *const *)envp);
            if (errno != ENOENT && errno != ENOTDIR)
                saved = errno;   /* e.g. EACCES: report it rather than a later ENOENT */
        }
        if (!colon)
            break;
        p = colon + 1;
    }
    die(wfd, saved, ST_EXECVE, file);
}

__attribute__((noreturn)) static void spawn_child(const struct sd_spawn_opts *o, int wfd,
                                                  int *vfds)
{
    if (o->new_session) {
        if (setsid() < 0)
            die(wfd, errno, ST_SETSID, NULL);
    } else {
        if (setpgid(0, 0) < 0)
            die(wfd, errno, ST_SETPGID, NULL);
        if (o->tty_fd >= 0) {
            signal(SIGTTOU, SIG_IGN);   /* a background group may not set the tty otherwise */
            if (tcsetpgrp(o->tty_fd, getpgrp()) < 0)
                die(wfd, errno, ST_TCSETPGRP, NULL);
        }
    }
    reset_signals();
    if (o->cgroup_procs) {
        int fd = open(o->cgroup_procs, O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, "0", 1) != 1)
            die(wfd, errno, ST_CGROUP, o->cgroup_procs);
        close(fd);
    }
    if (!o->host_network)
        loopback_up(wfd);
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        die(wfd, errno, ST_MAKE_PRIVATE, "/");
    /* Volumes are opened on the host side, before the pivot, as detached mount trees; they
     * are attached after it, so a symlink in the container resolves inside the container. */
    for (size_t i = 0; i < o->nbinds; i++) {
        vfds[i] = open_tree(AT_FDCWD, o->binds[i].src,
                            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
        if (vfds[i] < 0)
            die(wfd, errno, ST_OPEN_TREE, o->binds[i].src);
        if (o->binds[i].readonly) {
            struct mount_attr attr;
            memset(&attr, 0, sizeof attr);
            attr.attr_set = MOUNT_ATTR_RDONLY;
            if (mount_setattr(vfds[i], "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr) < 0)
                die(wfd, errno, ST_SETATTR_RO, o->binds[i].src);
        }
    }
    if (mount(o->rootfs, o->rootfs, NULL, MS_BIND | MS_REC, NULL) < 0)
        die(wfd, errno, ST_BIND_ROOT, o->rootfs);
    if (chdir(o->rootfs) < 0)
        die(wfd, errno, ST_CHDIR_ROOT, o->rootfs);
    /* pivot_root(".", "."): the old root ends up mounted on top of the new one; detaching
     * it leaves the new root alone, with no directory needed to hold the old one. */
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        die(wfd, errno, ST_PIVOT_ROOT, o->rootfs);
    if (umount2(".", MNT_DETACH) < 0)
        die(wfd, errno, ST_DETACH_OLDROOT, NULL);
    if (chdir("/") < 0)
        die(wfd, errno, ST_CHDIR_ROOT, "/");

    mkdir_p(wfd, "/proc", 0555);
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        die(wfd, errno, ST_MOUNT_PROC, "/proc");
    setup_dev(wfd);
    mkdir_p(wfd, "/sys", 0555);
    if (mount("sysfs", "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        die(wfd, errno, ST_MOUNT_SYS, "/sys");

    for (size_t i = 0; i < o->nbinds; i++) {
        const char *dst = o->binds[i].dst;
        struct stat st;
        if (fstat(vfds[i], &st) < 0)
            die(wfd, errno, ST_BIND_VOLUME, dst);
        if (S_ISDIR(st.st_mode)) {
            mkdir_p(wfd, dst, 0755);
        } else {
            char parent[4096];
            size_t n = strlen(dst);
            if (n >= sizeof parent)
                die(wfd, ENAMETOOLONG, ST_BIND_VOLUME, dst);
            memcpy(parent, dst, n + 1);
            char *slash = strrchr(parent, '/');
            if (slash && slash != parent) {
                *slash = '\0';
                mkdir_p(wfd, parent, 0755);
            }
            int fd = open(dst, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
            if (fd < 0)
                die(wfd, errno, ST_BIND_VOLUME, dst);
            close(fd);
        }
        if (move_mount(vfds[i], "", AT_FDCWD, dst, MOVE_MOUNT_F_EMPTY_PATH) < 0)
            die(wfd, errno, ST_BIND_VOLUME, dst);
        close(vfds[i]);
    }
    if (o->hostname && sethostname(o->hostname, strlen(o->hostname)) < 0)
        die(wfd, errno, ST_SETHOSTNAME, o->hostname);
    const char *cwd = o->cwd ? o->cwd : "/";
    mkdir_p(wfd, cwd, 0755);   /* a missing WorkingDir is created, as docker does */
    if (chdir(cwd) < 0)
        die(wfd, errno, ST_CHDIR, cwd);
    set_ids(wfd, o->uid, o->gid, o->groups, o->ngroups);
    set_stdio(wfd, o->stdin_fd, o->stdout_fd, o->stderr_fd);
    exec_path(wfd, o->argv, o->envp);
}

/* fork-like clone: no new stack, returns 0 in the child. */
static pid_t raw_clone(unsigned long flags)
{
    return (pid_t)syscall(SYS_clone, flags, NULL, NULL, NULL, 0UL);
}

int sd_spawn(const struct sd_spawn_opts *o, pid_t *pid_out, struct sd_error *err)
{
    int p[2];
    if (o->argv == NULL || o->argv[0] == NULL)
        return sd_error_set(err, SD_ERR_FORMAT, "spawn", NULL, 0, "no command given");
    int *vfds = calloc(o->nbinds ? o->nbinds : 1, sizeof *vfds);
    if (vfds == NULL)
        return sd_error_set(err, SD_ERR_NOMEM, "spawn", NULL, 0, "out of memory");
    if (pipe2(p, O_CLOEXEC) < 0) {
        free(vfds);
        return sd_error_os(err, errno, "pipe2", NULL, 0);
    }
    unsigned long flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC | SIGCHLD;
    if (!o->host_network)
        flags |= CLONE_NEWNET;
    pid_t pid = raw_clone(flags);
    if (pid < 0) {
        int e = errno;
        close(p[0]);
        close(p[1]);
        free(vfds);
        return sd_error_os(err, e, "clone", NULL, 0);
    }
    if (pid == 0) {
        close(p[0]);
        spawn_child(o, p[1], vfds);
    }
    free(vfds);
    close(p[1]);
    struct report r;
    int got = read_report(p[0], &r);
    int e = errno;
    close(p[0]);
    if (got == 0) {
        *pid_out = pid;
        return 0;
    }
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    if (got < 0)
        return sd_error_os(err, e ? e : EPIPE, "read child report", NULL, 0);
    return report_to_error(&r, err);
}

/* ---- exec into a running container --------------------------------------------------- */

int sd_exec_in(const struct sd_exec_opts *o, pid_t *pid_out, struct sd_error *err)
{
    static const char *const ns_names[] = {"ipc", "uts", "net", "pid", "mnt"};
    enum { NNS = sizeof ns_names / sizeof ns_names[0] };
    int nsfd[NNS], rootfd = -1, p[2] = {-1, -1}, rc = -1;
    char path[64];
    for (size_t i = 0; i < NNS; i++)
        nsfd[i] = -1;
    if (o->argv == NULL || o->argv[0] == NULL)
        return sd_error_set(err, SD_ERR_FORMAT, "exec", NULL, 0, "no command given");
    for (size_t i = 0; i < NNS; i++) {
        snprintf(path, sizeof path, "/proc/%d/ns/%s", (int)o->target, ns_names[i]);
        nsfd[i] = open(path, O_RDONLY | O_CLOEXEC);
        if (nsfd[i] < 0) {
            sd_error_os(err, errno, "open namespace", path, strlen(path));
            goto out;
        }
    }
    snprintf(path, sizeof path, "/proc/%d/root", (int)o->target);
    rootfd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0) {
        sd_error_os(err, errno, "open root", path, strlen(path));
        goto out;
    }
    if (pipe2(p, O_CLOEXEC) < 0) {
        sd_error_os(err, errno, "pipe2", NULL, 0);
        goto out;
    }
    pid_t helper = raw_clone(SIGCHLD);
    if (helper < 0) {
        sd_error_os(err, errno, "clone", NULL, 0);
        goto out;
    }
    if (helper == 0) {
        /* the helper joins the namespaces (a single-threaded process may join a mount
         * namespace), then clones the real process as a sibling, i.e. a child of the caller,
         * inside the container's PID namespace */
        close(p[0]);
        for (size_t i = 0; i < NNS; i++)
            if (setns(nsfd[i], 0) < 0)
                die(p[1], errno, ST_SETNS, ns_names[i]);
        pid_t child = raw_clone(CLONE_PARENT | SIGCHLD);
        if (child < 0)
            die(p[1], errno, ST_CLONE, NULL);
        if (child > 0) {
            struct report r;
            memset(&r, 0, sizeof r);
            r.kind = REC_PID;
            r.pid = child;
            write_all(p[1], &r, sizeof r);
            _exit(0);
        }
        reset_signals();
        if (setsid() < 0)
            die(p[1], errno, ST_SETSID, NULL);
        if (fchdir(rootfd) < 0 || chroot(".") < 0)
            die(p[1], errno, ST_CHROOT, NULL);
        const char *cwd = o->cwd ? o->cwd : "/";
        if (chdir(cwd) < 0)
            die(p[1], errno, ST_CHDIR, cwd);
        set_ids(p[1], o->uid, o->gid, o->groups, o->ngroups);
        set_stdio(p[1], o->stdin_fd, o->stdout_fd, o->stderr_fd);
        exec_path(p[1], o->argv, o->envp);
    }
    close(p[1]);
    p[1] = -1;
    int status;
    while (waitpid(helper, &status, 0) < 0 && errno == EINTR)
        ;
    struct report r;
    int got = read_report(p[0], &r);
    if (got <= 0) {
        sd_error_os(err, got == 0 ? ECHILD : errno, "exec helper", NULL, 0);
        goto out;
    }
    if (r.kind == REC_ERROR) {
        report_to_error(&r, err);
        goto out;
    }
    pid_t child = r.pid;
    got = read_report(p[0], &r);
    if (got == 0) {
        *pid_out = child;
        rc = 0;
        goto out;
    }
    while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
        ;
    if (got < 0)
        sd_error_os(err, errno, "read child report", NULL, 0);
    else
        report_to_error(&r, err);
out:
    for (size_t i = 0; i < NNS; i++)
        if (nsfd[i] >= 0)
            close(nsfd[i]);
    if (rootfd >= 0)
        close(rootfd);
    if (p[0] >= 0)
        close(p[0]);
    if (p[1] >= 0)
        close(p[1]);
    return rc;
}
