"""The OCI bundle (config.json) of one sandbox: namespaces, limits, and the hardening.

Security layers, outermost first (docs/security.md explains each):

* a user namespace: container uid 0..65535 is host uid ``uid_base``.. (a range per slot,
  templates.uid_base; MAPPED_BASE for gVisor) — root inside is nobody outside;
* pid, mount, ipc, uts, cgroup and network namespaces (the netns is prepared by network.py);
* a Docker-like minimal capability set without CAP_SYS_ADMIN / NET_ADMIN / SYS_MODULE …;
* no_new_privs and a seccomp deny-list (mount, module loading, kexec, namespace creation, socket
  options whose kernel memory no cgroup is charged for (TCP MD5 keys, IPv6 multicast groups),
  bpf, perf, keyring, ptrace of other processes' memory …);
* masked and read-only /proc and /sys paths;
* cgroup limits on CPU, memory (no swap) and pids; RLIMIT_NOFILE;
* every mount nosuid and nodev; what a sandbox can write is a capped tmpfs (sandbox_fs.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warren.agent.runtime.kernel_limits import ipc_namespace_sysctls
from warren.agent.templates import MAPPED_BASE, MAPPED_SIZE

GUEST_MOUNT = "/.warren/guest"
RUN_MOUNT = "/run/warren"
GUEST_SOCKET = f"{RUN_MOUNT}/guest.sock"
CGROUP_PARENT = "warren"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Each open file costs the host ~0.4 KB of its file table; with the inherited 20000 one sandbox
# could hold a large share of it. The guest's children inherit the limit.
DEFAULT_MAX_OPEN_FILES = 4096
# RLIMIT_NOFILE the OCI runtime is started under, when the bundle's rlimits cannot carry it.
NOFILE_ANNOTATION = "dev.warren.nofile"
# The guest's argument naming the cmds cgroup's descriptors (runtime/cmds_cgroup.py): runc and
# crun pass them as fds 3 (memory) and 4 (pids); the guest moves each command there.
CMDS_FDS_ARG = "--cmds-cgroup-fds"
CMDS_FDS = "3,4"
# The guest's own oom_score_adj, written by the runtime as host root. 0, not lower: a privileged
# write also sets oom_score_adj_min, the floor every process of the sandbox may lower itself to,
# and a negative floor would let tenant processes hide from the host's OOM killer. Explicit, so
# the agent's own value never leaks in. The guest starts its children at 1000
# (guest_agent/process.py), so inside the sandbox's memory cgroup they are always chosen first.
GUEST_OOM_SCORE_ADJ = 0
IDENTITY_FILES = ("hostname", "hosts", "resolv.conf")  # bound over /etc/<name>
# The sandbox's network namespace, on the host's kernel (runc/crun: gVisor's TCP is its Sentry's,
# in its own memory). A TIME_WAIT socket is made in softirq, charged to no memory cgroup; each
# namespace starts with half the host's established table (131 072 here, 256 B each): one sandbox
# held 32 MiB of the host's kernel while it kept closing connections (12 000 a second; session 18).
# net.core.optmem_max bounds what each socket may hold of sock_kmalloc's uncharged memory
# (options, IPv4 memberships, control messages): 20 KiB, the default before Linux 6.9, not 128.
# An IPv4 membership is uncharged memory too (the socket's list entry, and the device's group
# and IGMP timer): at the default 20 a socket, UDP sockets held ~57 MiB outside a 64 MiB sandbox
# (session 21); one a socket, what mDNS or a discovery protocol joins, leaves ~0.2 KiB a socket.
NET_NAMESPACE_SYSCTLS = {
    "net.ipv4.tcp_max_tw_buckets": "4096",
    "net.core.optmem_max": "20480",
    "net.ipv4.igmp_max_memberships": "1",
}
# Terminals a sandbox may hold at once (its own devpts instance; the guest's API allows 32). The
# host's count (kernel.pty.max, 4096 less 1024 kept for the host's own instance) is shared by
# every instance: one sandbox as nobody opened /dev/ptmx 3071 times and no other sandbox could
# open a terminal (ENOSPC), the platform's terminal API included (session 14; kernel_limits.py
# raises the host's count too).
DEVPTS_MAX = "max=256"
# /dev holds device nodes and symlinks the runtime makes; charged to the sandbox's memory.
DEV_TMPFS_OPTS = ["nosuid", "strictatime", "mode=755", "size=256k", "nr_inodes=1024"]

# Docker's default set minus NET_RAW (no raw sockets: no packet spoofing inside the sandbox
# network) and MKNOD/AUDIT_WRITE, which a sandbox has no use for.
CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
]

MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/sysrq-trigger",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/sys/kernel",
]
# /proc/pressure: the host-wide PSI files are 0666, and each write makes a poll trigger on the
# host's own group, a kernel allocation charged to no cgroup and walked by the host's PSI work
# every 2 s: one sandbox (pids.max times RLIMIT_NOFILE descriptors) could make millions (session 14).
# Read-only keeps reading them.
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/pressure"]

# Syscalls no sandbox process may make. Most already need a capability we drop; denying them
# here as well means a kernel bug in a capability check is not enough to reach them.
DENIED_SYSCALLS = [
    # filesystems and mounts
    "mount", "umount", "umount2", "pivot_root",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    "open_tree_attr",  # Linux 6.15: ignored by a libseccomp that does not know it (2.5.4 does not)
    "open_by_handle_at", "name_to_handle_at", "quotactl", "quotactl_fd",
    # kernel, modules, boot
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "syslog", "acct", "lookup_dcookie", "uselib",
    "iopl", "ioperm", "vm86", "vm86old", "nfsservctl", "_sysctl", "sysfs",
    # clocks
    "settimeofday", "stime", "clock_settime", "clock_settime64", "clock_adjtime",
    "clock_adjtime64", "adjtimex",
    # namespaces: even a nested user namespace must not give mount/net admin powers
    "unshare", "setns",
    # tracing, bpf, perf, keyrings, userfaultfd, cross-process memory and descriptors
    # (pidfd_getfd takes a copy of another process's descriptor, as ptrace could)
    "bpf", "perf_event_open", "add_key", "request_key", "keyctl", "userfaultfd",
    "process_vm_readv", "process_vm_writev", "kcmp", "ptrace", "pidfd_getfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "fanotify_init", "get_kernel_syms", "query_module", "create_module",
]  # fmt: skip

# clone(2) with any CLONE_NEW* flag (namespace creation) is refused; plain fork/threads pass.
# NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
CLONE_NS_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
EPERM = 1
ENOSYS = 38
AF_VSOCK = 40
# setsockopt(level, optname) pairs refused: each adds a kernel allocation per call made with
# sock_kmalloc (GFP_KERNEL, charged to no memory cgroup), bounded only by the socket's
# optmem_max (128 KiB on Linux >= 6.9). A socket costs its sandbox ~3 KiB; session 18 measured,
# as nobody under a 64 MiB cgroup: 963 TCP MD5 keys a socket (180 KiB, 96 300 keys in 1.5 s on
# 100 sockets, 18 MiB of kmalloc-192 with 0.5 MiB charged), and 2 340 IPv6 multicast groups a
# socket on the sandbox's loopback (each also a per-device ifmcaddr6: ~320 B a join, none
# charged). RFC 2385/5925 keys (BGP peers) and IPv6 multicast (nowhere to go past a /30 veth
# without IPv6) have no use in a sandbox. IPv4 memberships stay: 1 a socket
# (net.ipv4.igmp_max_memberships, above).
IPPROTO_IP, IPPROTO_TCP, IPPROTO_IPV6 = 0, 6, 41
TCP_MD5SIG, TCP_MD5SIG_EXT, TCP_AO_ADD_KEY = 14, 32, 38
IPV6_ADD_MEMBERSHIP, MCAST_JOIN_GROUP, MCAST_JOIN_SOURCE_GROUP, MCAST_MSFILTER = 20, 42, 46, 48
DENIED_SOCKOPTS = (
    (IPPROTO_TCP, TCP_MD5SIG),
    (IPPROTO_TCP, TCP_MD5SIG_EXT),
    (IPPROTO_TCP, TCP_AO_ADD_KEY),
    (IPPROTO_IPV6, IPV6_ADD_MEMBERSHIP),
    (IPPROTO_IPV6, MCAST_JOIN_GROUP),
    (IPPROTO_IPV6, MCAST_JOIN_SOURCE_GROUP),
    (IPPROTO_IPV6, MCAST_MSFILTER),
)

# Huge-page memory (hugetlb) is charged to no memory cgroup (v1; v2 only with
# memory_hugetlb_accounting) and this host mounts no hugetlb controller: where an operator
# reserves pages (vm.nr_hugepages) any sandbox process took them all, as nobody (session 19: 8 of
# 8 from a 64 MiB sandbox), and surplus pages (vm.nr_overcommit_hugepages) are host memory no
# limit sees. (syscall, argument, flag) refused when the flag is set; transparent huge pages are
# ordinary memory and stay. i386's ipc(2) multiplexer hides shmget's flags (SHM_HUGETLB needs
# CAP_IPC_LOCK, which no sandbox has, there as here); its old mmap(2) takes its arguments in
# memory, so the rule reads a stray register there (glibc and musl call mmap2 on i386).
MAP_HUGETLB, MFD_HUGETLB, SHM_HUGETLB = 0x40000, 0x0004, 0o4000
HUGETLB_FLAGS = (("mmap", 3, MAP_HUGETLB), ("mmap2", 3, MAP_HUGETLB), ("memfd_create", 1, MFD_HUGETLB),
                 ("shmget", 2, SHM_HUGETLB))  # fmt: skip


def seccomp_profile() -> dict[str, Any]:
    names = list(DENIED_SYSCALLS)
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
            # One rule per namespace flag: the rules OR together, and libseccomp has no
            # "masked not-equal" to test them all at once.
            *(
                {
                    "names": ["clone"],
                    "action": "SCMP_ACT_ERRNO",
                    "errnoRet": EPERM,
                    "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
                }
                for flag in CLONE_NS_FLAGS
            ),
            # clone3 passes flags in a struct seccomp cannot read; ENOSYS makes libc fall back
            # to clone(2), which the rule above filters (Docker does the same).
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
            # memfd_secret takes each page it backs out of the kernel's direct map, splitting the
            # 1 GiB and 2 MiB pages that map the host's memory for good (no kernel merges them
            # back): 64 MiB of one sandbox's secret memory left 11 GiB of this host's direct map
            # in 4 KiB and 2 MiB pages, a TLB cost every process of the host pays until reboot
            # (session 14). ENOSYS, what a kernel without it answers: callers fall back.
            # io_setup (Linux native AIO): the host has one count of AIO events for everyone
            # (fs.aio-max-nr, 65536), and 16 contexts of 4096 events (~4 MiB) of one sandbox's
            # nobody took them all: every other sandbox's io_setup failed (EAGAIN) while they
            # lived. A higher count would not do: each context also holds kernel memory no cgroup
            # is charged for. ENOSYS: libaio users fall back (glibc's POSIX AIO uses threads).
            {"names": ["memfd_secret", "io_setup"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
            # AF_VSOCK is not namespaced: on a VM host its sockets reach the hypervisor's
            # services, past every network rule (internet=false included). Docker refuses it too.
            {
                "names": ["socket"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": EPERM,
                "args": [{"index": 0, "value": AF_VSOCK, "valueTwo": 0, "op": "SCMP_CMP_EQ"}],
            },
            # Kernel memory no cgroup is charged for (DENIED_SOCKOPTS): both arguments must match
            # (a rule's args AND together). Through i386 socketcall, whose arguments seccomp
            # cannot read, libseccomp refuses setsockopt whole, as it does socket creation.
            *(
                {
                    "names": ["setsockopt"],
                    "action": "SCMP_ACT_ERRNO",
                    "errnoRet": EPERM,
                    "args": [
                        {"index": 1, "value": level, "valueTwo": 0, "op": "SCMP_CMP_EQ"},
                        {"index": 2, "value": name, "valueTwo": 0, "op": "SCMP_CMP_EQ"},
                    ],
                }
                for level, name in DENIED_SOCKOPTS
            ),
            *(
                {
                    "names": [name],
                    "action": "SCMP_ACT_ERRNO",
                    "errnoRet": EPERM,
                    "args": [{"index": index, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
                }
                for name, index, flag in HUGETLB_FLAGS
            ),
        ],
    }


@dataclass(slots=True)
class BundleSpec:
    sandbox_id: str
    rootfs: Path
    guest_dir: Path  # host dir bind-mounted read-only at /.warren/guest
    run_dir: Path  # a tiny tmpfs bound at /run/warren (the guest's socket lives here)
    netns_path: str
    hostname: str
    vcpus: int
    memory_mb: int
    pids_limit: int = 1024
    env: dict[str, str] = field(default_factory=dict)
    guest_argv: list[str] = field(default_factory=list)
    identity_dir: Path | None = None  # agent-written hostname/hosts/resolv.conf, bound over /etc
    shm_dir: Path | None = None  # bound at /dev/shm (on the disk tmpfs); None: its own tmpfs
    max_open_files: int = DEFAULT_MAX_OPEN_FILES
    # The slot's own user namespace (agent/slot_userns.py) to join; None: the runtime makes one.
    userns_path: str | None = None
    uid_base: int = MAPPED_BASE  # host uid of root inside (the slot's namespace maps the same)
    # The guest moves each command into the cmds cgroup (runc/crun; not gVisor's, which has no
    # host cgroup inside and watches its memory itself).
    cmds_cgroup: bool = False
    # A tmpfs of this size at /tmp (gVisor: see create.gvisor_tmp_mb); None: no mount, /tmp is
    # the root's own directory, on the sandbox's capped disk (runc, crun).
    tmp_mb: int | None = None
    # CAP_IPC_OWNER for root inside (gVisor): the guest reads every SysV segment's attach count
    # to remove those nothing holds (guest_agent/shm_orphans.py: runsc ignores shm_rmid_forced).
    # Its IPC is the Sentry's, in the sandbox's own namespace; runc/crun keep it off (kernel_limits).
    ipc_owner: bool = False


def net_namespace_sysctls(spec: BundleSpec) -> dict[str, str]:
    """Limits of the sandbox's network namespace (OCI ``linux.sysctl``): runc/crun only, and only
    in a slot's own user namespace, the netns's owner (the runtime writes them as root inside; a
    plain slot's netns belongs to the host's namespace, where that write would fail the start)."""
    return dict(NET_NAMESPACE_SYSCTLS) if spec.cmds_cgroup and spec.userns_path is not None else {}


def cgroups_path(sandbox_id: str) -> str:
    # Absolute, so runc does not nest it under the agent's own cgroup.
    return f"/{CGROUP_PARENT}/{sandbox_id}"


def _sandbox_mounts(spec: BundleSpec) -> list[dict[str, Any]]:
    """Mounts of agent-owned host paths. The runtime resolves each destination inside the
    container's root, so a tenant's symlinked /etc (from a snapshot) leads nowhere else."""
    out: list[dict[str, Any]] = []
    if spec.shm_dir is not None:
        shm_opts = ["rbind", "rw", "nosuid", "noexec", "nodev"]
        out.append(
            {"destination": "/dev/shm", "type": "bind", "source": str(spec.shm_dir), "options": shm_opts}
        )
    else:
        shm_opts = ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
        out.append({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": shm_opts})
    if spec.tmp_mb is not None:
        # runsc mounts a tmpfs of its own, with no size, at an empty /tmp that no mount names:
        # its pages are the Sentry's, charged to the host cgroup, and no kill frees them.
        tmp_opts = ["nosuid", "nodev", "mode=1777", f"size={spec.tmp_mb}m"]
        out.append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": tmp_opts})
    if spec.identity_dir is not None:
        for name in IDENTITY_FILES:
            out.append({
                "destination": f"/etc/{name}",
                "type": "bind",
                "source": str(spec.identity_dir / name),
                "options": ["bind", "rw", "nosuid", "nodev", "noexec"],
            })  # fmt: skip
    return out


def oci_config(spec: BundleSpec) -> dict[str, Any]:
    env = {"PATH": DEFAULT_PATH, "HOME": "/root", "LANG": "C.UTF-8", **spec.env, "HOSTNAME": spec.hostname}
    mem = spec.memory_mb * 1024 * 1024
    period = 100_000
    caps = [*CAPABILITIES, "CAP_IPC_OWNER"] if spec.ipc_owner else list(CAPABILITIES)
    nofile = spec.max_open_files
    # runc 1.1 sets rlimits from outside (prlimit on the init process), which needs
    # CAP_SYS_RESOURCE over a user namespace root does not own: for a slot's own namespace the
    # runtime is started under the limit instead (runtime/oci.py, NOFILE_ANNOTATION).
    outside = spec.userns_path is not None
    rlimits = [] if outside else [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}]
    cmds = [CMDS_FDS_ARG, CMDS_FDS] if spec.cmds_cgroup else []
    user_ns: dict[str, str] = {"type": "user"}
    if spec.userns_path is not None:
        user_ns["path"] = spec.userns_path
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            # The guest keeps each command's RLIMIT_NPROC below pids.max (guest_agent/process.py).
            "args": [*spec.guest_argv, "--max-processes", str(spec.pids_limit), *cmds],
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": True,
            "rlimits": rlimits,
            "oomScoreAdj": GUEST_OOM_SCORE_ADJ,
        },
        "root": {"path": str(spec.rootfs), "readonly": False},
        "hostname": spec.hostname,
        "annotations": {NOFILE_ANNOTATION: str(nofile)} if outside else {},
        "mounts": [
            {
                "destination": "/proc",
                "type": "proc",
                "source": "proc",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": DEV_TMPFS_OPTS,
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", DEVPTS_MAX],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            # sysfs cannot be mounted from a user namespace into a netns the host owns, and a
            # bind of the host's /sys would show other sandboxes' veths: /sys is an empty,
            # read-only tmpfs instead.
            {
                "destination": "/sys",
                "type": "tmpfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro", "size=4k", "mode=555"],
            },
            {
                "destination": GUEST_MOUNT,
                "type": "bind",
                "source": str(spec.guest_dir),
                "options": ["rbind", "ro", "nosuid", "nodev"],
            },
            {
                "destination": RUN_MOUNT,
                "type": "bind",
                "source": str(spec.run_dir),
                "options": ["rbind", "rw", "nosuid", "nodev", "noexec"],
            },
            *_sandbox_mounts(spec),
        ],
        "linux": {
            "uidMappings": [{"containerID": 0, "hostID": spec.uid_base, "size": MAPPED_SIZE}],
            "gidMappings": [{"containerID": 0, "hostID": spec.uid_base, "size": MAPPED_SIZE}],
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                user_ns,
                {"type": "cgroup"},
                {"type": "network", "path": spec.netns_path},
            ],
            "cgroupsPath": cgroups_path(spec.sandbox_id),
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}],
                "memory": {"limit": mem, "swap": mem},
                "cpu": {"quota": spec.vcpus * period, "period": period},
                "pids": {"limit": spec.pids_limit},
            },
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": seccomp_profile(),
            # SysV IPC objects live on with no process, charged to the sandbox's memory where
            # the OOM killer cannot free them: shared memory goes with its last user, queues
            # and semaphores are bounded to a few MiB (kernel_limits.py).
            "sysctl": {**ipc_namespace_sysctls(), **net_namespace_sysctls(spec)},
        },
    }
