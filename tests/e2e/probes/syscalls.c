/* A probe of what a container's seccomp filter lets through, for tests/e2e/test_seccomp.py.
 *
 * Compiled on the host at test time (gcc -static -O2), bind-mounted read-only into a busybox
 * container, and run as its command. Each probe makes one system call the way an attacker
 * or a tool would, and prints one line "name=RESULT", RESULT being "ok" or the errno's name
 * (EPERM, ENOSYS, ...). The last line is "probe-done". Calls are made through syscall(2)
 * so that libc's wrappers (or their absence in busybox-era headers) do not get in the way.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#ifndef SYS_io_uring_setup
#define SYS_io_uring_setup 425
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#define KCMP_FILE 0
#define KEYCTL_GET_KEYRING_ID 0
#define KEY_SPEC_SESSION_KEYRING -3

static void report(const char *name, long rc, int err) {
    if (rc >= 0)
        printf("%s=ok\n", name);
    else
        printf("%s=%s\n", name, strerrorname_np(err) ? strerrorname_np(err) : "E?");
    fflush(stdout);
}

#define PROBE(name, call)              \
    do {                               \
        errno = 0;                     \
        long rc_ = (long)(call);       \
        report(name, rc_, errno);      \
    } while (0)

/* A call that would change the probe itself (its mounts, its user namespace) is made in a
 * child, which passes its errno back as its exit status. */
static void in_child(const char *name, int which) {
    pid_t child = fork();
    if (child == 0) {
        long rc = which == 0 ? mount("none", "/tmp", "tmpfs", 0, NULL) : unshare(CLONE_NEWUSER);
        _exit(rc == 0 ? 0 : (errno & 0xff));
    }
    int status = 0;
    if (child < 0 || waitpid(child, &status, 0) < 0 || !WIFEXITED(status)) {
        report(name, -1, child < 0 ? errno : EINTR);
        return;
    }
    int err = WEXITSTATUS(status);
    report(name, err == 0 ? 0 : -1, err);
}

/* ptrace(PTRACE_ATTACH) on a child of ours that sleeps: another process, which the
 * kernel lets a parent trace; only seccomp can refuse it. */
static void probe_ptrace(void) {
    pid_t child = fork();
    if (child == 0) {
        pause();
        _exit(0);
    }
    if (child < 0) {
        report("ptrace", -1, errno);
        return;
    }
    errno = 0;
    long rc = ptrace(PTRACE_ATTACH, child, 0, 0);
    int err = errno;
    if (rc == 0) {
        waitpid(child, NULL, __WALL);
        ptrace(PTRACE_DETACH, child, 0, 0);
    }
    report("ptrace", rc, err);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
}

/* clone with CLONE_NEWUSER: a new user namespace, which needs no capability. */
static void probe_clone_newuser(void) {
    errno = 0;
    long rc = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (rc == 0)
        _exit(0);
    int err = errno;
    if (rc > 0)
        waitpid((pid_t)rc, NULL, 0);
    report("clone_newuser", rc, err);
}

/* clone3 with no flags: a plain fork; Docker's profile answers ENOSYS so that libc falls
 * back to clone, whose flags seccomp can read. */
static void probe_clone3(void) {
    uint64_t args[11] = {0};
    args[4] = SIGCHLD; /* exit_signal */
    errno = 0;
    long rc = syscall(SYS_clone3, args, sizeof(args));
    if (rc == 0)
        _exit(0);
    int err = errno;
    if (rc > 0)
        waitpid((pid_t)rc, NULL, 0);
    report("clone3", rc, err);
}

int main(void) {
    int fd;
    unsigned char uring_params[120] = {0};

    in_child("mount", 0);
    in_child("unshare", 1);
    PROBE("keyctl", syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0));
    PROBE("personality_query", syscall(SYS_personality, 0xffffffffUL));
    PROBE("personality_addr_no_randomize", syscall(SYS_personality, ADDR_NO_RANDOMIZE));
    PROBE("kcmp", syscall(SYS_kcmp, getpid(), getpid(), KCMP_FILE, 0, 0));
    PROBE("get_mempolicy", syscall(SYS_get_mempolicy, NULL, NULL, 0, NULL, 0));
    errno = 0;
    fd = (int)syscall(SYS_io_uring_setup, 1, uring_params);
    report("io_uring_setup", fd, errno);
    if (fd >= 0)
        close(fd);
    errno = 0;
    fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    report("socket_vsock", fd, errno);
    if (fd >= 0)
        close(fd);
    errno = 0;
    fd = socket(AF_INET, SOCK_STREAM, 0);
    report("socket_inet", fd, errno);
    if (fd >= 0)
        close(fd);
    probe_ptrace();
    PROBE("init_module", syscall(SYS_init_module, NULL, 0, ""));
    PROBE("finit_module", syscall(SYS_finit_module, -1, "", 0));
    probe_clone_newuser();
    probe_clone3();
    PROBE("mkdir", mkdir("/tmp/probe-dir", 0755));
    printf("probe-done\n");
    fflush(stdout);
    return 0;
}
