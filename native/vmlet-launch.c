/* vmlet-launch: joins one VM's sandbox (netns, cgroups), connects back to the vmlet daemon, forks QEMU with the argv and fds the daemon hands over, and reports QEMU's pid and exit status across daemon restarts (protocol: docs/launcher-protocol.md). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROTO_VERSION "1"
#define MAX_ARGV_BYTES 65536
#define MAX_ARGC 4096
#define MAX_FDS 64
#define MAX_CGROUPS 16
#define MAX_LINE 1024
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000

/* Exit codes of the launcher itself (before QEMU ran); afterwards it exits with QEMU's status. */
enum {
    EXIT_USAGE = 120,
    EXIT_SANDBOX = 121,
    EXIT_REJECTED = 122,
    EXIT_PROTOCOL = 123,
    EXIT_UNREACHABLE = 124,
    EXIT_FORK = 125,
    EXIT_EXEC = 126,
    EXIT_EXEC_NOENT = 127,
};

enum state { ST_NEW, ST_RUNNING, ST_EXITED };

static struct {
    const char *uid;
    const char *sock_path;
    const char *run_dir;
    const char *netns;
    const char *cgroups[MAX_CGROUPS];
    int ncgroups;
    long linger_ms;
    int spare;
} opt = { .linger_ms = 60000 };

static enum state state = ST_NEW;
static pid_t self_pid;
static pid_t qemu_pid;
static int qemu_wstatus;        /* raw wait status once ST_EXITED */
static int conn = -1;           /* connection to the daemon, or -1 */
static int pending_acks;        /* OK answers still owed by the daemon on this connection */
static int exit_reported;       /* EXITED (or HELLO ... EXITED) sent on the current connection */
static long backoff = BACKOFF_MIN_MS; /* reset only by a positive answer (OK, ARGV), so rejections back off */
static char fail_code[16];      /* sandbox failure to report, if any */
static char fail_msg[256];

static char rbuf[MAX_ARGV_BYTES + MAX_LINE];
static size_t rlen;
static int rfds[MAX_FDS];
static int nrfds;
static char *qargv[MAX_ARGC + 1];

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logmsg(const char *fmt, ...)
{
    char line[MAX_LINE];
    int n = snprintf(line, sizeof line, "vmlet-launch[%d] %s: ", (int)self_pid, opt.uid ? opt.uid : "-");
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof line)
        n += vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line - 1)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    ssize_t w = write(2, line, (size_t)n);
    (void)w;
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Writes RUNDIR/name atomically (tmp file + rename); failures are logged, never fatal. */
/* Start time of a process (field 22 of /proc/PID/stat, clock ticks since boot), 0 when unreadable:
 * with the pid it names the process for good, so a recycled pid is never taken for it. */
static unsigned long long proc_starttime(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* comm may hold spaces and parentheses */
    if (!p)
        return 0;
    /* after ") " come fields 3, 4, ...: skip to field 22 */
    for (int field = 2; field < 22 && p; field++)
        p = strchr(p + 1, ' ');
    return p ? strtoull(p + 1, NULL, 10) : 0;
}

/* "PID STARTTIME\n": what launcher.pid and qemu.pid hold. */
static void pid_file_content(char *out, size_t len, pid_t pid)
{
    snprintf(out, len, "%d %llu\n", (int)pid, proc_starttime(pid));
}

/* Atomic (temp file, rename) but not fsynced: the file describes live processes, which a power loss ends too, and
 * the daemon treats a missing or unreadable one as gone. An fsync waited for the journal where /run is no tmpfs
 * (several ms before HELLO and before STARTED). */
static void write_run_file(const char *name, const char *content)
{
    char path[PATH_MAX], tmp[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", opt.run_dir, name) >= (int)sizeof path ||
        snprintf(tmp, sizeof tmp, "%s/.%s.tmp", opt.run_dir, name) >= (int)sizeof tmp) {
        logmsg("run dir path too long");
        return;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        logmsg("cannot write %s: %s", tmp, strerror(errno));
        return;
    }
    size_t len = strlen(content);
    ssize_t w = write(fd, content, len);
    if (w != (ssize_t)len) {
        logmsg("cannot write %s: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        return;
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        logmsg("cannot rename %s: %s", tmp, strerror(errno));
        unlink(tmp);
    }
}

static void unlink_run_file(const char *name)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", opt.run_dir, name) < (int)sizeof path)
        unlink(path);
}

/* "exit=N" or "signal=N" for a raw wait status. */
static void format_status(int ws, char *out, size_t len)
{
    if (WIFSIGNALED(ws))
        snprintf(out, len, "signal=%d", WTERMSIG(ws));
    else
        snprintf(out, len, "exit=%d", WEXITSTATUS(ws));
}

static int status_exit_code(int ws)
{
    return WIFSIGNALED(ws) ? 128 + WTERMSIG(ws) : WEXITSTATUS(ws);
}

static void close_received_fds(void)
{
    for (int i = 0; i < nrfds; i++)
        close(rfds[i]);
    nrfds = 0;
}

static void disconnect(const char *why)
{
    if (conn < 0)
        return;
    logmsg("disconnected from daemon: %s", why);
    close(conn);
    conn = -1;
    rlen = 0;
    pending_acks = 0;
    exit_reported = 0;
    close_received_fds();
}

/* Sends one text line; a failure drops the connection (the reconnect loop takes over). */
static int send_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int send_line(const char *fmt, ...)
{
    char line[MAX_LINE];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (conn < 0 || n < 0)
        return -1;
    if (n >= (int)sizeof line - 1)
        n = (int)sizeof line - 2; /* overlong free text is truncated */
    line[n++] = '\n';
    size_t off = 0;
    while (off < (size_t)n) {
        ssize_t w = send(conn, line + off, (size_t)n - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            disconnect(w < 0 ? strerror(errno) : "short write");
            return -1;
        }
        off += (size_t)w;
    }
    return 0;
}

static void send_hello(void)
{
    char st[64];
    switch (state) {
    case ST_NEW:
        send_line("HELLO " PROTO_VERSION " %s %d NEW", opt.uid, (int)self_pid);
        break;
    case ST_RUNNING:
        if (send_line("HELLO " PROTO_VERSION " %s %d RUNNING %d", opt.uid, (int)self_pid, (int)qemu_pid) == 0)
            pending_acks++;
        break;
    case ST_EXITED:
        format_status(qemu_wstatus, st, sizeof st);
        if (send_line("HELLO " PROTO_VERSION " %s %d EXITED %d %s", opt.uid, (int)self_pid, (int)qemu_pid, st) == 0) {
            pending_acks++;
            exit_reported = 1;
        }
        break;
    }
}

/* The daemon runs as root: anything else listening on the socket path (the file mode is not relied on) never gets a HELLO. */
#define DAEMON_UID 0

/* 0 when the peer of fd is the daemon's uid (SO_PEERCRED); a refusal is logged once per peer pid, retries back off. */
static int check_daemon_peer(int fd)
{
    static pid_t last_refused;
    struct ucred cr;
    socklen_t len = sizeof cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0 || len != sizeof cr) {
        logmsg("refusing %s: SO_PEERCRED: %s", opt.sock_path, strerror(errno));
        return -1;
    }
    if (cr.uid == DAEMON_UID)
        return 0;
    if (cr.pid != last_refused)
        logmsg("refusing %s: its peer (pid %d) runs as uid %u, not %u; retrying", opt.sock_path, (int)cr.pid, (unsigned)cr.uid, (unsigned)DAEMON_UID);
    last_refused = cr.pid;
    return -1;
}

static void try_connect(void)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(opt.sock_path) >= sizeof sa.sun_path)
        return;
    strcpy(sa.sun_path, opt.sock_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || check_daemon_peer(fd) != 0) {
        close(fd);
        return;
    }
    struct timeval tv = { .tv_sec = 5 };
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    conn = fd;
    rlen = 0;
    pending_acks = 0;
    exit_reported = 0;
    logmsg("connected to daemon at %s", opt.sock_path);
    send_hello();
}

static void record_exit(int ws)
{
    char st[64];
    state = ST_EXITED;
    qemu_wstatus = ws;
    format_status(ws, st, sizeof st);
    char content[80];
    snprintf(content, sizeof content, "%s\n", st);
    write_run_file("exit-status", content);
    logmsg("qemu %d exited: %s", (int)qemu_pid, st);
    if (conn >= 0 && send_line("EXITED %s", st) == 0) {
        pending_acks++;
        exit_reported = 1;
    }
}

static void reap(void)
{
    for (;;) {
        int ws;
        pid_t p = waitpid(-1, &ws, WNOHANG);
        if (p <= 0)
            return;
        if (state == ST_RUNNING && p == qemu_pid)
            record_exit(ws);
    }
}

/* ---- QEMU's sandbox (standalone): a private mount namespace that shows only what QEMU needs, then an unprivileged user. ---- */

#define MAX_BINDS 32

static struct {
    int enabled;                 /* --qemu-user given */
    uid_t uid;
    gid_t gid;
    gid_t groups[4];
    int ngroups;
    int mount_ns;                /* --mount-ns yes */
    const char *bind_ro[MAX_BINDS];
    int nbind_ro;
    const char *bind_rw[MAX_BINDS];
    int nbind_rw;
} qsb;

/* What every QEMU needs from the host, read-only (absent ones are skipped; symlinks such as /lib -> usr/lib are copied). */
static const char *const system_ro[] = {
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
    "/etc/ld.so.cache", "/etc/localtime", "/sys",
};
static const char *const dev_nodes[] = {
    "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/kvm", "/dev/vhost-net", "/dev/net/tun",
};

static int parse_uint(const char *s, char **end, unsigned long max, unsigned long *out)
{
    errno = 0;
    unsigned long v = strtoul(s, end, 10);
    if (errno || *end == s || v > max)
        return -1;
    *out = v;
    return 0;
}

/* UID:GID[:GROUP,...] (numbers; the daemon resolves names). */
static int parse_qemu_user(const char *v)
{
    char *end;
    unsigned long n;
    if (parse_uint(v, &end, 0x7fffffff, &n) || *end != ':')
        return -1;
    qsb.uid = (uid_t)n;
    if (parse_uint(end + 1, &end, 0x7fffffff, &n) || (*end != '\0' && *end != ':'))
        return -1;
    qsb.gid = (gid_t)n;
    while (*end == ':' || *end == ',') {
        if (qsb.ngroups >= (int)(sizeof qsb.groups / sizeof qsb.groups[0]))
            return -1;
        if (parse_uint(end + 1, &end, 0x7fffffff, &n) || (*end != '\0' && *end != ','))
            return -1;
        qsb.groups[qsb.ngroups++] = (gid_t)n;
    }
    if (qsb.uid == 0)
        return -1; /* root is what this option takes away */
    qsb.enabled = 1;
    return 0;
}

/* mkdir -p of `path` (absolute, below the new root's prefix `root`). */
static int mkdirs(char *path, size_t skip)
{
    for (char *p = path + skip + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        int r = mkdir(path, 0755);
        *p = '/';
        if (r != 0 && errno != EEXIST)
            return -1;
    }
    return 0;
}

/*
 * Makes `src` appear at the same path below `root`: a bind mount (read-only unless `rw`). A system path that is a
 * symlink (/lib -> usr/lib) is copied as one; a VM's path is bound as what it resolves to, at the path QEMU names.
 */
static int bind_into(const char *root, const char *src, int rw, int system)
{
    struct stat st;
    if ((system ? lstat(src, &st) : stat(src, &st)) != 0)
        return system && errno == ENOENT ? 0 : -1;
    char dst[PATH_MAX];
    if (snprintf(dst, sizeof dst, "%s%s", root, src) >= (int)sizeof dst) {
        errno = ENAMETOOLONG;
        return -1;
    }
    if (mkdirs(dst, strlen(root)) != 0)
        return -1;
    if (S_ISLNK(st.st_mode)) {
        char target[PATH_MAX];
        ssize_t n = readlink(src, target, sizeof target - 1);
        if (n < 0)
            return -1;
        target[n] = '\0';
        return symlink(target, dst) == 0 || errno == EEXIST ? 0 : -1;
    }
    if (S_ISDIR(st.st_mode)) {
        if (mkdir(dst, 0755) != 0 && errno != EEXIST)
            return -1;
    } else {
        int fd = open(dst, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0)
            return -1;
        close(fd);
    }
    /* A system folder without what is mounted below it (/sys without the cgroup mounts); a VM's path with it. */
    if (mount(src, dst, NULL, MS_BIND | (system ? 0 : MS_REC), NULL) != 0)
        return -1;
    unsigned long fl = MS_REMOUNT | MS_BIND | MS_NOSUID | (rw ? 0 : MS_RDONLY);
    if (!S_ISCHR(st.st_mode) && !S_ISBLK(st.st_mode))
        fl |= MS_NODEV;
    return mount(NULL, dst, NULL, fl, NULL);
}

static char sandbox_err[200]; /* the failed step, sent to the parent with errno */

static int sandbox_fail(const char *what, const char *path)
{
    int e = errno;
    snprintf(sandbox_err, sizeof sandbox_err, "%s %.150s", what, path ? path : "");
    errno = e;
    return -1;
}

/* In the forked child, before exec: the private root (pivot_root onto a tmpfs of bind mounts). */
static int enter_mount_ns(void)
{
    char root[PATH_MAX / 2];
    if (snprintf(root, sizeof root, "%s/.root", opt.run_dir) >= (int)sizeof root)
        return sandbox_fail("path too long", opt.run_dir);
    if (unshare(CLONE_NEWNS) != 0)
        return sandbox_fail("unshare", "mount namespace");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        return sandbox_fail("make private", "/");
    if (mkdir(root, 0700) != 0 && errno != EEXIST)
        return sandbox_fail("mkdir", root);
    if (mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=4096") != 0)
        return sandbox_fail("mount tmpfs", root);
    /* /proc as the host's (QEMU reads /proc/self); /tmp a small tmpfs of its own, before the binds that may lie below it. */
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/proc", root);
    if (mkdir(p, 0555) != 0 || mount("/proc", p, NULL, MS_BIND | MS_REC, NULL) != 0)
        return sandbox_fail("bind", "/proc");
    snprintf(p, sizeof p, "%s/tmp", root);
    if (mkdir(p, 01777) != 0 || mount("tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=16m") != 0)
        return sandbox_fail("mount tmpfs", "/tmp");
    for (size_t i = 0; i < sizeof system_ro / sizeof system_ro[0]; i++)
        if (bind_into(root, system_ro[i], 0, 1) != 0)
            return sandbox_fail("bind", system_ro[i]);
    for (size_t i = 0; i < sizeof dev_nodes / sizeof dev_nodes[0]; i++)
        if (bind_into(root, dev_nodes[i], 1, 1) != 0)
            return sandbox_fail("bind", dev_nodes[i]);
    for (int i = 0; i < qsb.nbind_ro; i++)
        if (bind_into(root, qsb.bind_ro[i], 0, 0) != 0)
            return sandbox_fail("bind", qsb.bind_ro[i]);
    for (int i = 0; i < qsb.nbind_rw; i++)
        if (bind_into(root, qsb.bind_rw[i], 1, 0) != 0)
            return sandbox_fail("bind", qsb.bind_rw[i]);
    snprintf(p, sizeof p, "%s/.old", root);
    if (mkdir(p, 0700) != 0)
        return sandbox_fail("mkdir", p);
    if (syscall(SYS_pivot_root, root, p) != 0)
        return sandbox_fail("pivot_root", root);
    if (chdir("/") != 0 || umount2("/.old", MNT_DETACH) != 0 || rmdir("/.old") != 0)
        return sandbox_fail("detach", "the old root");
    if (mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=4096") != 0)
        return sandbox_fail("remount read-only", "/");
    return 0;
}

/* The unprivileged user: no groups but the given ones, no capabilities (bounding set emptied too), no_new_privs. */
static int drop_privileges(void)
{
    for (int cap = 0; cap <= 63; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL)
            return sandbox_fail("drop capability", "bounding set");
    if (setgroups((size_t)qsb.ngroups, qsb.groups) != 0)
        return sandbox_fail("setgroups", NULL);
    if (setresgid(qsb.gid, qsb.gid, qsb.gid) != 0)
        return sandbox_fail("setresgid", NULL);
    if (setresuid(qsb.uid, qsb.uid, qsb.uid) != 0)
        return sandbox_fail("setresuid", NULL);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return sandbox_fail("no_new_privs", NULL);
    return 0;
}

/* Child side of the fork: fds to 3.., stdio to qemu.log, clean signal state, exec. Never returns. */
static void exec_qemu(int errfd, pid_t parent)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
        _exit(EXIT_FORK);
    sigset_t none;
    sigemptyset(&none);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    sigprocmask(SIG_SETMASK, &none, NULL);

    char logpath[PATH_MAX];
    snprintf(logpath, sizeof logpath, "%s/qemu.log", opt.run_dir);
    int logfd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (logfd < 0 || nullfd < 0)
        goto fail;
    int base = 3 + nrfds;
    /* Lift everything we still need above the target range so dup2 cannot clobber it. */
    int tmp[MAX_FDS];
    for (int i = 0; i < nrfds; i++)
        if ((tmp[i] = fcntl(rfds[i], F_DUPFD_CLOEXEC, base)) < 0)
            goto fail;
    int hi = fcntl(errfd, F_DUPFD_CLOEXEC, base);
    if (hi < 0)
        goto fail;
    errfd = hi;
    if ((logfd = fcntl(logfd, F_DUPFD_CLOEXEC, base)) < 0 || (nullfd = fcntl(nullfd, F_DUPFD_CLOEXEC, base)) < 0)
        goto fail;
    if (dup2(nullfd, 0) < 0 || dup2(logfd, 1) < 0 || dup2(logfd, 2) < 0)
        goto fail;
    for (int i = 0; i < nrfds; i++)
        if (dup2(tmp[i], 3 + i) < 0)
            goto fail;
    /* Everything from base up closes at exec; errfd stays usable until then. */
    if (syscall(SYS_close_range, (unsigned)base, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */) != 0) {
        for (int fd = base; fd < 65536; fd++)
            fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    if (qsb.mount_ns && enter_mount_ns() != 0)
        goto fail;
    if (qsb.enabled && drop_privileges() != 0)
        goto fail;
    /* A change of uid clears the parent-death signal: set it again, and make sure the launcher did not die meanwhile. */
    if (qsb.enabled && (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)) {
        sandbox_fail("parent-death signal", NULL);
        goto fail;
    }
    execv(qargv[0], qargv);
fail:;
    int e = errno;
    char msg[sizeof e + sizeof sandbox_err];
    memcpy(msg, &e, sizeof e);
    size_t n = strlen(sandbox_err);
    memcpy(msg + sizeof e, sandbox_err, n);
    ssize_t w = write(errfd, msg, sizeof e + n);
    (void)w;
    _exit(e == ENOENT ? EXIT_EXEC_NOENT : EXIT_EXEC);
}

static void start_qemu(void)
{
    int ep[2];
    if (pipe2(ep, O_CLOEXEC) != 0) {
        send_line("ERROR fork pipe2: %s", strerror(errno));
        exit(EXIT_FORK);
    }
    pid_t parent = getpid();
    pid_t p = fork();
    if (p < 0) {
        send_line("ERROR fork fork: %s", strerror(errno));
        exit(EXIT_FORK);
    }
    if (p == 0)
        exec_qemu(ep[1], parent);
    close(ep[1]);
    close_received_fds();
    int e = 0;
    char msg[sizeof e + sizeof sandbox_err];
    ssize_t r;
    do
        r = read(ep[0], msg, sizeof msg - 1);
    while (r < 0 && errno == EINTR);
    close(ep[0]);
    if (r >= (ssize_t)sizeof e) {
        int ws;
        waitpid(p, &ws, 0);
        memcpy(&e, msg, sizeof e);
        msg[r] = '\0';
        const char *step = msg + sizeof e;
        if (*step) {
            logmsg("QEMU's sandbox failed: %s: %s", step, strerror(e));
            send_line("ERROR exec QEMU's sandbox (user %d, private mounts): %s: %s", (int)qsb.uid, step, strerror(e));
            exit(EXIT_SANDBOX);
        }
        logmsg("exec %s failed: %s", qargv[0], strerror(e));
        send_line("ERROR exec %s: %s", qargv[0], strerror(e));
        exit(e == ENOENT ? EXIT_EXEC_NOENT : EXIT_EXEC);
    }
    qemu_pid = p;
    state = ST_RUNNING;
    char content[48];
    pid_file_content(content, sizeof content, p);
    write_run_file("qemu.pid", content);
    logmsg("qemu started: pid %d (%s)", (int)p, qargv[0]);
    send_line("STARTED %d", (int)p);
}

static void join_netns(const char *path);

/* A malformed message from the daemon: fatal before QEMU runs; afterwards QEMU must live on, so only the
 * connection is dropped (and re-established). Returns -1 for the caller to pass on. */
static int protocol_error(const char *what)
{
    logmsg("protocol error: %s", what);
    send_line("ERROR protocol %s", what);
    if (state == ST_NEW)
        exit(EXIT_PROTOCOL);
    disconnect("protocol error");
    return -1;
}

/* Handles a complete ARGV message: payload is `nbytes` of NUL-terminated strings at `p`. */
static int handle_argv(const char *p, size_t nbytes, int nfds)
{
    if (state != ST_NEW)
        return protocol_error("ARGV while QEMU already started");
    if (nfds != nrfds) {
        char m[96];
        snprintf(m, sizeof m, "ARGV announced %d fds, received %d", nfds, nrfds);
        protocol_error(m);
    }
    if (nbytes == 0 || p[nbytes - 1] != '\0')
        protocol_error("ARGV payload must end with NUL");
    static char argbuf[MAX_ARGV_BYTES];
    memcpy(argbuf, p, nbytes);
    int argc = 0;
    for (size_t off = 0; off < nbytes; off += strlen(argbuf + off) + 1) {
        if (argc >= MAX_ARGC)
            protocol_error("too many arguments");
        qargv[argc++] = argbuf + off;
    }
    qargv[argc] = NULL;
    if (qargv[0][0] != '/')
        protocol_error("argv[0] must be an absolute path");
    start_qemu();
    return 0;
}

/* Consumes complete messages from rbuf. */
static void process_input(void)
{
    for (;;) {
        char *nl = memchr(rbuf, '\n', rlen);
        if (!nl) {
            if (rlen >= MAX_LINE)
                protocol_error("line too long");
            return;
        }
        size_t linelen = (size_t)(nl - rbuf);
        *nl = '\0';
        size_t consumed = linelen + 1;
        if (strcmp(rbuf, "OK") == 0) {
            backoff = BACKOFF_MIN_MS;
            if (pending_acks > 0)
                pending_acks--;
            if (state == ST_EXITED && exit_reported && pending_acks == 0) {
                logmsg("daemon acknowledged exit; exiting");
                exit(status_exit_code(qemu_wstatus));
            }
        } else if (strncmp(rbuf, "REJECT", 6) == 0 && (rbuf[6] == ' ' || rbuf[6] == '\0')) {
            logmsg("daemon rejected us: %s", rbuf[6] ? rbuf + 7 : "");
            if (state == ST_NEW)
                exit(fail_code[0] ? EXIT_SANDBOX : EXIT_REJECTED);
            if (state == ST_EXITED)
                exit(status_exit_code(qemu_wstatus));
            disconnect("rejected while QEMU runs; will retry");
            return;
        } else if (strncmp(rbuf, "NETNS ", 6) == 0) {
            /* The sandbox's netns, made while this launcher started: joined before QEMU is forked. */
            if (state != ST_NEW) {
                protocol_error("NETNS while QEMU already started");
                return;
            }
            if (rbuf[6] != '/')
                protocol_error("NETNS path must be absolute"); /* exits */
            if (!fail_code[0])
                join_netns(rbuf + 6);
        } else if (strncmp(rbuf, "ARGV ", 5) == 0) {
            backoff = BACKOFF_MIN_MS;
            unsigned long nbytes;
            int nfds;
            char extra;
            if (sscanf(rbuf + 5, "%lu %d%c", &nbytes, &nfds, &extra) != 2 || nbytes > MAX_ARGV_BYTES || nfds < 0 ||
                nfds > MAX_FDS) {
                protocol_error("malformed ARGV header");
                return;
            }
            if (rlen - consumed < nbytes) {
                *nl = '\n'; /* wait for the rest of the payload */
                return;
            }
            if (fail_code[0]) {
                /* The daemon now knows us; tell it why QEMU will not run. */
                send_line("ERROR %s %s", fail_code, fail_msg);
                logmsg("reported sandbox failure, exiting");
                exit(EXIT_SANDBOX);
            }
            if (handle_argv(rbuf + consumed, nbytes, nfds) < 0)
                return;
            consumed += nbytes;
        } else {
            logmsg("ignoring unknown message from daemon: %.64s", rbuf);
        }
        memmove(rbuf, rbuf + consumed, rlen - consumed);
        rlen -= consumed;
    }
}

static void read_conn(void)
{
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int) * 253)];
    } ctl;
    struct iovec iov = { .iov_base = rbuf + rlen, .iov_len = sizeof rbuf - rlen };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf };
    if (iov.iov_len == 0) {
        protocol_error("message too large");
        return;
    }
    ssize_t n = recvmsg(conn, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n <= 0) {
        disconnect(n == 0 ? "EOF" : strerror(errno));
        return;
    }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *fds = (int *)(void *)CMSG_DATA(c);
        for (int i = 0; i < k; i++) {
            if (nrfds < MAX_FDS && state == ST_NEW)
                rfds[nrfds++] = fds[i];
            else {
                close(fds[i]);
                if (state == ST_NEW)
                    protocol_error("too many fds"); /* exits */
            }
        }
    }
    if ((mh.msg_flags & MSG_CTRUNC) && state == ST_NEW)
        protocol_error("fds truncated"); /* exits */
    rlen += (size_t)n;
    process_input();
}

/* Joins a netns; a failure is kept in fail_code/fail_msg and reported when ARGV comes. */
static void join_netns(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) {
        snprintf(fail_code, sizeof fail_code, "netns");
        snprintf(fail_msg, sizeof fail_msg, "%s %.200s: %s", fd < 0 ? "open" : "setns", path, strerror(errno));
        logmsg("cannot join netns: %s", fail_msg);
        if (fd >= 0)
            close(fd);
        return;
    }
    close(fd);
}

static void join_sandbox(void)
{
    if (opt.netns) {
        join_netns(opt.netns);
        if (fail_code[0])
            return;
    }
    for (int i = 0; i < opt.ncgroups; i++) {
        char path[PATH_MAX], pid[24];
        snprintf(path, sizeof path, "%s/cgroup.procs", opt.cgroups[i]);
        int n = snprintf(pid, sizeof pid, "%d\n", (int)self_pid);
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, pid, (size_t)n) != n) {
            snprintf(fail_code, sizeof fail_code, "cgroup");
            snprintf(fail_msg, sizeof fail_msg, "%s %.200s: %s", fd < 0 ? "open" : "write", path, strerror(errno));
            logmsg("cannot join cgroup: %s", fail_msg);
            if (fd >= 0)
                close(fd);
            return;
        }
        close(fd);
    }
}

static void usage(const char *why)
{
    logmsg("%s", why);
    logmsg("usage: vmlet-launch --uid UID --socket PATH --run-dir DIR [--netns PATH] [--cgroup DIR]... [--linger SECONDS] [--qemu-user UID:GID[:GID,...]] [--mount-ns yes|no] [--bind-ro PATH]... [--bind-rw PATH]...");
    logmsg("   or: vmlet-launch --spare yes [--cgroup DIR]...   (stdin: the handover, stdout: READY)");
    exit(EXIT_USAGE);
}

static void parse_args(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            usage("missing value");
        const char *v = argv[++i];
        if (strcmp(a, "--uid") == 0)
            opt.uid = v;
        else if (strcmp(a, "--socket") == 0)
            opt.sock_path = v;
        else if (strcmp(a, "--run-dir") == 0)
            opt.run_dir = v;
        else if (strcmp(a, "--netns") == 0)
            opt.netns = v;
        else if (strcmp(a, "--spare") == 0) {
            if (strcmp(v, "yes") != 0)
                usage("--spare takes yes");
            opt.spare = 1;
        }
        else if (strcmp(a, "--cgroup") == 0) {
            if (opt.ncgroups >= MAX_CGROUPS)
                usage("too many --cgroup");
            opt.cgroups[opt.ncgroups++] = v;
        } else if (strcmp(a, "--qemu-user") == 0) {
            if (parse_qemu_user(v) != 0)
                usage("bad --qemu-user (UID:GID[:GID,...], not root)");
        } else if (strcmp(a, "--mount-ns") == 0) {
            if (strcmp(v, "yes") != 0 && strcmp(v, "no") != 0)
                usage("--mount-ns takes yes or no");
            qsb.mount_ns = strcmp(v, "yes") == 0;
        } else if (strcmp(a, "--bind-ro") == 0 || strcmp(a, "--bind-rw") == 0) {
            int rw = strcmp(a, "--bind-rw") == 0;
            if ((rw ? qsb.nbind_rw : qsb.nbind_ro) >= MAX_BINDS)
                usage("too many --bind-ro/--bind-rw");
            if (v[0] != '/' || strstr(v, "/../") || strlen(v) >= PATH_MAX / 2)
                usage("--bind-ro/--bind-rw take an absolute path");
            if (rw)
                qsb.bind_rw[qsb.nbind_rw++] = v;
            else
                qsb.bind_ro[qsb.nbind_ro++] = v;
        } else if (strcmp(a, "--linger") == 0) {
            char *end;
            long s = strtol(v, &end, 10);
            if (*end || s < 0 || s > 86400)
                usage("bad --linger");
            opt.linger_ms = s * 1000;
        } else
            usage("unknown option");
    }
    if (opt.spare) {
        if (opt.uid || opt.sock_path || opt.run_dir || opt.netns)
            usage("--spare takes only --cgroup");
        return;
    }
    if (!opt.uid || !opt.sock_path || !opt.run_dir)
        usage("--uid, --socket and --run-dir are required");
    size_t n = strlen(opt.uid);
    if (n == 0 || n > 128 || strspn(opt.uid, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") != n)
        usage("--uid must be 1-128 of [A-Za-z0-9._-]");
}

/*
 * A spare launcher: joins its (spare) group ahead of any VM, so that the join's RCU grace period is off a start's
 * critical path; says READY on stdout; then reads the handover from stdin until EOF (the log file's path, then the
 * real launcher argv, NUL-separated), points stdout and stderr at that log and execs itself with that argv. The
 * daemon renames the group to the VM's before the handover (v1), so nothing is joined again. EOF without a handover
 * (the daemon closed the pipe, or died) ends it. Protocol: docs/launcher-protocol.md.
 */
static int spare_main(void)
{
    join_sandbox();
    if (fail_code[0]) {
        dprintf(1, "ERROR %s %s\n", fail_code, fail_msg);
        return EXIT_SANDBOX;
    }
    if (write(1, "READY\n", 6) != 6)
        return EXIT_PROTOCOL;
    static char buf[MAX_ARGV_BYTES];
    size_t len = 0;
    for (;;) {
        if (len == sizeof buf) {
            logmsg("spare: handover larger than %d bytes", MAX_ARGV_BYTES);
            return EXIT_PROTOCOL;
        }
        ssize_t r = read(0, buf + len, sizeof buf - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            logmsg("spare: read: %s", strerror(errno));
            return EXIT_PROTOCOL;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    if (len == 0)
        return 0; /* released unused */
    if (buf[len - 1] != '\0') {
        logmsg("spare: handover must end with NUL");
        return EXIT_PROTOCOL;
    }
    int argc = 0;
    const char *log_path = buf;
    for (size_t off = strlen(buf) + 1; off < len; off += strlen(buf + off) + 1) {
        if (argc >= MAX_ARGC) {
            logmsg("spare: too many arguments");
            return EXIT_PROTOCOL;
        }
        qargv[argc++] = buf + off;
    }
    qargv[argc] = NULL;
    if (log_path[0] != '/' || argc == 0) {
        logmsg("spare: handover needs an absolute log path and an argv");
        return EXIT_PROTOCOL;
    }
    int lfd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    int nfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (lfd < 0 || nfd < 0) {
        logmsg("spare: cannot open %s: %s", lfd < 0 ? log_path : "/dev/null", strerror(errno));
        return EXIT_PROTOCOL;
    }
    if (dup2(nfd, 0) < 0 || dup2(lfd, 1) < 0 || dup2(lfd, 2) < 0)
        return EXIT_PROTOCOL;
    /* Only this program: the pipe is the daemon's, but a spare is no general exec. */
    execv("/proc/self/exe", qargv);
    logmsg("spare: exec: %s", strerror(errno));
    return EXIT_EXEC;
}

static void noop_handler(int sig)
{
    (void)sig;
}

int main(int argc, char **argv)
{
    self_pid = getpid();
    parse_args(argc, argv);
    if (opt.spare)
        return spare_main();

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    /* A (never run) handler as well: as PID 1 of a pod, signals left at SIG_DFL could be dropped. */
    struct sigaction sa = { .sa_handler = noop_handler };
    sigaction(SIGCHLD, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) {
        logmsg("signalfd: %s", strerror(errno));
        return EXIT_USAGE;
    }

    char content[48];
    pid_file_content(content, sizeof content, self_pid);
    unlink_run_file("qemu.pid");
    unlink_run_file("exit-status");
    write_run_file("launcher.pid", content);
    /* HELLO first: the daemon checks it while the cgroup join waits for the kernel (an RCU grace period on v1);
     * QEMU is forked only after the join, and a failed join is reported when ARGV comes, as before. */
    try_connect();
    join_sandbox();

    long next_connect = 0;
    long deadline = now_ms() + opt.linger_ms; /* NEW: give up reaching the daemon; EXITED: give up reporting */

    for (;;) {
        long now = now_ms();
        if (conn < 0 && now >= next_connect) {
            try_connect();
            if (conn < 0) {
                next_connect = now + backoff;
                backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
            }
        }
        now = now_ms();
        if (state != ST_RUNNING && now >= deadline) {
            if (state == ST_EXITED) {
                logmsg("daemon did not acknowledge the exit within the linger time; exiting");
                exit(status_exit_code(qemu_wstatus));
            }
            logmsg("daemon unreachable or silent for %ld s; exiting", opt.linger_ms / 1000);
            exit(fail_code[0] ? EXIT_SANDBOX : EXIT_UNREACHABLE);
        }
        long timeout = -1;
        if (conn < 0)
            timeout = next_connect > now ? next_connect - now : 0;
        if (state != ST_RUNNING) {
            long d = deadline > now ? deadline - now : 0;
            if (timeout < 0 || d < timeout)
                timeout = d;
        }
        struct pollfd pfd[2] = { { .fd = sfd, .events = POLLIN }, { .fd = conn, .events = POLLIN } };
        int r = poll(pfd, conn >= 0 ? 2 : 1, timeout > INT_MAX ? INT_MAX : (int)timeout);
        if (r < 0 && errno != EINTR) {
            logmsg("poll: %s", strerror(errno));
            return EXIT_PROTOCOL;
        }
        if (r <= 0)
            continue;
        if (pfd[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
                int sig = (int)si.ssi_signo;
                if (sig == SIGCHLD) {
                    enum state before = state;
                    reap();
                    if (before == ST_RUNNING && state == ST_EXITED)
                        deadline = now_ms() + opt.linger_ms;
                } else if (sig == SIGTERM || sig == SIGINT) {
                    if (state == ST_RUNNING) {
                        logmsg("got signal %d; forwarding to qemu %d", sig, (int)qemu_pid);
                        kill(qemu_pid, sig);
                    } else if (state == ST_EXITED) {
                        exit(status_exit_code(qemu_wstatus));
                    } else {
                        logmsg("got signal %d before qemu started; exiting", sig);
                        exit(128 + sig);
                    }
                } /* SIGHUP: ignored */
            }
        }
        if (conn >= 0 && (pfd[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            if (pfd[1].revents & POLLIN)
                read_conn();
            else
                disconnect("hangup");
            if (conn < 0) {
                next_connect = now_ms() + backoff;
                backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
            }
        }
    }
}
