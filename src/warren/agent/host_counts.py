"""Per-user kernel counts that every sandbox would otherwise share with the host's root.

Every sandbox's user namespace is created by root (the OCI runtime, started by this agent).
The kernel counts some objects per user, and counts them again at each parent namespace
under the uid that *created* the child namespace. So whatever any sandbox's processes hold,
as any of their uids, is also counted against host root in the initial namespace, next to
host root's own. Those counts are bounded by host-wide values:

* inotify instances and watches: ``fs.inotify.max_user_instances`` (128 by default) and
  ``max_user_watches``. One sandbox's ``nobody`` holding 128 inotify instances left host root
  (systemd, journald, the agent) and every other sandbox with none.
* POSIX message-queue bytes, processes and queued signals: the creator's ``RLIMIT_MSGQUEUE``
  (819200 bytes), ``RLIMIT_NPROC`` and ``RLIMIT_SIGPENDING``, copied into each user namespace
  when it is made. Nine 80 KiB queues in one sandbox left every other sandbox unable to open
  one; ``nobody`` queueing real-time signals to itself left every other sandbox and host root
  unable to make a POSIX timer (``EAGAIN``).

A count is not a resource: the memory behind these objects (inotify groups and marks, queued
messages, task structs) is charged to the memory cgroup of the sandbox that made them, and
its processes to its pids cgroup, which are the platform's per-sandbox limits. So the agent
lifts the shared counts out of reach at start: it raises the inotify values (never lowers
them) and its own three rlimits to unlimited, which every namespace it creates afterwards
inherits. Sandboxes made before (re-adopted ones) keep the values of their time.

Raising a hard rlimit needs ``CAP_SYS_RESOURCE``; where root lacks it (root in a container,
as on the reference machine) and the agent was not started with unlimited ``LimitMSGQUEUE``,
``LimitNPROC`` and ``LimitSIGPENDING`` (systemd), the rlimits stay and the agent says so at
start; queued signals then stay shared (docs/security.md, "Knowingly left open"). Then runc
sandboxes get an ``RLIMIT_MSGQUEUE`` of 0 (``mq_open`` fails with ``EMFILE``): a per-uid
limit cannot bound a tenant that has 65536 uids, so no sandbox may take from the shared count
at all. gVisor keeps its queues inside its own kernel and is not limited. Processes stay
bounded per sandbox by the pids cgroup, and in sum by the agent's ``RLIMIT_NPROC``.

What stays shared either way: a host-root process that is not the agent's child is checked
against its own ``RLIMIT_MSGQUEUE`` and ``RLIMIT_SIGPENDING`` with the sandboxes' queue bytes
and queued signals counted in (docs/security.md, "Knowingly left open"). The fix for all of
this is a user namespace per sandbox made by a host uid of its own (docs/security.md).
"""

from __future__ import annotations

import logging
import resource
from pathlib import Path

log = logging.getLogger("warren.agent")

# The largest value these sysctls take (an int); the kernel then never refuses on the count.
UNLIMITED_COUNT = 2**31 - 1
INOTIFY_SYSCTLS = (
    Path("/proc/sys/fs/inotify/max_user_instances"),
    Path("/proc/sys/fs/inotify/max_user_watches"),
)
RLIMITS = {
    "RLIMIT_MSGQUEUE": resource.RLIMIT_MSGQUEUE,
    "RLIMIT_NPROC": resource.RLIMIT_NPROC,
    "RLIMIT_SIGPENDING": resource.RLIMIT_SIGPENDING,
}
# What a kept rlimit means, in the agent's start-up log.
_KEPT = {
    "RLIMIT_MSGQUEUE": "runc_sandboxes_get_no_posix_message_queues(LimitMSGQUEUE=infinity_lifts_it)",
    "RLIMIT_NPROC": "all_sandboxes_processes_together_stay_under_it(LimitNPROC=infinity_lifts_it)",
    "RLIMIT_SIGPENDING": "queued_signals_stay_shared_with_host_root(LimitSIGPENDING=infinity_lifts_it)",
}


def lift_shared_counts(sysctls: tuple[Path, ...] = INOTIFY_SYSCTLS) -> None:
    """Raise the shared counts before the agent starts any sandbox; each change is logged.
    Needs root (the agent's own precondition); a value that cannot be written is logged and
    left, since the sandboxes still run, only with the shared bound."""
    for path in sysctls:
        _raise_sysctl(path, UNLIMITED_COUNT)
    for name, which in RLIMITS.items():
        _unlimit(name, which)


def sandbox_msgqueue_bytes(runtime: str) -> int | None:
    """The RLIMIT_MSGQUEUE a new sandbox of ``runtime`` gets: None (the agent's own, unlimited)
    once the shared count is lifted or under gVisor; else 0, so none takes from the count."""
    if runtime == "gvisor" or resource.getrlimit(resource.RLIMIT_MSGQUEUE)[1] == resource.RLIM_INFINITY:
        return None
    return 0


def _raise_sysctl(path: Path, value: int) -> None:
    try:
        before = int(path.read_text().strip())
        if before >= value:
            return
        path.write_text(f"{value}\n")
    except (OSError, ValueError) as e:
        log.warning("event=host_count_kept sysctl=%s error=%r", path, e)
        return
    log.info("event=host_count_raised sysctl=%s before=%d after=%d", path, before, value)


def _unlimit(name: str, which: int) -> None:
    soft, hard = resource.getrlimit(which)
    if soft == hard == resource.RLIM_INFINITY:
        return
    try:
        resource.setrlimit(which, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (OSError, ValueError) as e:  # no CAP_SYS_RESOURCE: Python says ValueError
        log.warning(
            "event=host_count_kept rlimit=%s value=%s error=%r consequence=%s", name, hard, e,
            _KEPT[name],
        )  # fmt: skip
        return
    log.info("event=host_count_raised rlimit=%s before=%s after=unlimited", name, soft)
