/* The seccomp filter of the layer converter's processes (docs/templates.md §2): the same deny
 * list as warren/layers/seccomp.py, in C for the compiled converter and for tar2sqfs.
 *
 * Denied (EPERM): signals to any process and ways into other processes (kill, tgkill, ptrace,
 * process_vm_*, pidfd_*), sockets, namespaces, keyctl, bpf, userfaultfd, perf_event_open,
 * io_uring, mount. The converter (CONFINE_CONVERTER) also may not execve or make a process or
 * thread. tar2sqfs (CONFINE_PACKER: the filter is installed before its exec) keeps execve and
 * threads: clone with CLONE_THREAD and no namespace flag; clone3 answered ENOSYS (glibc then
 * uses clone, whose flags the filter can see); fork and vfork denied. Another ABI's calls
 * (i386, x32) kill it.
 * A deny list: a program that confines itself further stacks its own allow-list on it
 * (warren-layer-sqfs). The numbers are the build architecture's (<sys/syscall.h>).
 *
 * confine_converter() is the compiled converter's own filter, an allow-list of exactly what a
 * conversion takes once its buffers are made (measured with strace over the tests' layers):
 * read of its layer fd, write of its output and result fds, splice from the one to the other,
 * close, its own memory (brk, mmap without PROT_EXEC, munmap, mremap, madvise), futex,
 * rt_sigreturn, sigaltstack, gettid, exit. Anything else fails with EPERM, including every system call newer
 * than this list (the kernel's, not only libseccomp's); another ABI's calls (i386, x32) kill. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#include "layer_convert.h"

#if defined(__x86_64__)
#define ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH AUDIT_ARCH_AARCH64
#else
#error "no seccomp filter for this architecture"
#endif

#define NS_FLAGS \
    (CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | \
     CLONE_NEWCGROUP)

static const int DENIED[] = {
    SYS_kill, SYS_tkill, SYS_tgkill, SYS_rt_sigqueueinfo, SYS_rt_tgsigqueueinfo, SYS_ptrace,
    SYS_process_vm_readv, SYS_process_vm_writev, SYS_kcmp,
#ifdef SYS_pidfd_open
    SYS_pidfd_open, SYS_pidfd_send_signal,
#endif
#ifdef SYS_pidfd_getfd
    SYS_pidfd_getfd,
#endif
    SYS_socket, SYS_socketpair, SYS_connect, SYS_bind, SYS_listen, SYS_accept, SYS_accept4,
    SYS_unshare, SYS_setns, SYS_keyctl, SYS_add_key, SYS_request_key, SYS_bpf, SYS_userfaultfd,
    SYS_perf_event_open, SYS_mount, SYS_umount2, SYS_open_by_handle_at, SYS_name_to_handle_at,
#ifdef SYS_io_uring_setup
    SYS_io_uring_setup, SYS_io_uring_enter, SYS_io_uring_register,
#endif
#ifdef SYS_fork
    SYS_fork,
#endif
#ifdef SYS_vfork
    SYS_vfork,
#endif
};
static const int CONVERTER_ONLY[] = {
    SYS_execve, SYS_execveat, SYS_clone,
#ifdef SYS_clone3
    SYS_clone3,
#endif
};

#define N(a) (sizeof(a) / sizeof((a)[0]))
#define DENY (SECCOMP_RET_ERRNO | EPERM)

int confine(int kind) {
    struct sock_filter f[128];
    unsigned n = 0;
    f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
#if defined(__x86_64__)
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, __X32_SYSCALL_BIT, 0, 1);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, DENY);
#endif
    int nrs[N(DENIED) + N(CONVERTER_ONLY)];
    unsigned k = 0;
    for (unsigned i = 0; i < N(DENIED); i++) nrs[k++] = DENIED[i];
    if (kind == CONFINE_CONVERTER)
        for (unsigned i = 0; i < N(CONVERTER_ONLY); i++) nrs[k++] = CONVERTER_ONLY[i];
    if (kind == CONFINE_PACKER) {
#ifdef SYS_clone3
        f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone3, 0, 1);
        f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS);
#endif
        /* clone: threads (CLONE_THREAD), never a process or a namespace (its flags are the
         * first argument, low word, on both architectures) */
        f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 0, 5);
        f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0]));
        f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, NS_FLAGS, 1, 0);
        f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_THREAD, 1, 0);
        f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, DENY);
        f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    }
    for (unsigned i = 0; i < k; i++) /* a match jumps to the deny at the end */
        f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nrs[i], (unsigned char)(k - i), 0);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, DENY);
    struct sock_fprog prog = {.len = (unsigned short)n, .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}

/* ------------------------------------------------------------ the converter's allow-list */

/* sigaltstack and gettid: the sanitizers' runtime (the ASan build of the tests) */
static const int ALLOWED[] = {
    SYS_close, SYS_brk, SYS_munmap, SYS_mremap, SYS_madvise, SYS_futex, SYS_rt_sigreturn,
    SYS_sigaltstack, SYS_gettid, SYS_exit, SYS_exit_group,
};

/* Jumps to labels, resolved once the program is laid out (classic BPF jumps forward only). */
enum { L_NEXT, L_ALLOW, L_DENY, L_KILL, L_READ, L_WRITE, L_SPLICE, L_MMAP, L_COUNT };
struct ins {
    struct sock_filter f;
    int jt, jf; /* labels (L_NEXT: the next instruction) */
};
#define OP(c, k_) ((struct ins){.f = BPF_STMT(c, k_), .jt = L_NEXT, .jf = L_NEXT})
#define JMP(c, k_, t, e) ((struct ins){.f = BPF_JUMP(c, k_, 0, 0), .jt = t, .jf = e})
#define LD_ARG(i) OP(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[i])) /* low word */
#define IF_EQ(k_, t, e) JMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)(k_), t, e)

int confine_converter(int in, int out, int result) {
    struct ins p[64];
    int label[L_COUNT];
    unsigned n = 0;
    p[n++] = OP(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    p[n++] = IF_EQ(ARCH, L_NEXT, L_KILL); /* another ABI's numbers mean other calls */
    p[n++] = OP(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
#if defined(__x86_64__)
    p[n++] = JMP(BPF_JMP | BPF_JGE | BPF_K, __X32_SYSCALL_BIT, L_KILL, L_NEXT);
#endif
    for (unsigned i = 0; i < N(ALLOWED); i++) p[n++] = IF_EQ(ALLOWED[i], L_ALLOW, L_NEXT);
    p[n++] = IF_EQ(SYS_read, L_READ, L_NEXT);
    p[n++] = IF_EQ(SYS_write, L_WRITE, L_NEXT);
    p[n++] = IF_EQ(SYS_splice, L_SPLICE, L_NEXT);
    p[n++] = IF_EQ(SYS_mmap, L_MMAP, L_DENY);
    label[L_READ] = (int)n; /* read(in) */
    p[n++] = LD_ARG(0);
    p[n++] = IF_EQ(in, L_ALLOW, L_DENY);
    label[L_WRITE] = (int)n; /* write(out) or write(result) */
    p[n++] = LD_ARG(0);
    p[n++] = IF_EQ(out, L_ALLOW, L_NEXT);
    p[n++] = IF_EQ(result, L_ALLOW, L_DENY);
    label[L_SPLICE] = (int)n; /* splice(in, _, out, ...) */
    p[n++] = LD_ARG(0);
    p[n++] = IF_EQ(in, L_NEXT, L_DENY);
    p[n++] = LD_ARG(2);
    p[n++] = IF_EQ(out, L_ALLOW, L_DENY);
    label[L_MMAP] = (int)n; /* its own memory, never code */
    p[n++] = LD_ARG(2);
    p[n++] = JMP(BPF_JMP | BPF_JSET | BPF_K, PROT_EXEC, L_DENY, L_ALLOW);
    label[L_ALLOW] = (int)n;
    p[n++] = OP(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    label[L_DENY] = (int)n;
    p[n++] = OP(BPF_RET | BPF_K, DENY);
    label[L_KILL] = (int)n;
    p[n++] = OP(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    struct sock_filter f[64];
    for (unsigned i = 0; i < n; i++) {
        f[i] = p[i].f;
        if (BPF_CLASS(f[i].code) != BPF_JMP) continue;
        f[i].jt = (unsigned char)(p[i].jt == L_NEXT ? 0 : label[p[i].jt] - (int)i - 1);
        f[i].jf = (unsigned char)(p[i].jf == L_NEXT ? 0 : label[p[i].jf] - (int)i - 1);
    }
    struct sock_fprog prog = {.len = (unsigned short)n, .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}
