"""Preflight: can this machine be a sandbox host? Every check ``warren doctor`` runs, as data.

:func:`run` returns one :class:`Check` per question (``ok``, ``warn`` or ``fail``, what was
found, and for anything short of ok what to do). Nothing here changes the host: kernel
features are tried inside throwaway namespaces (``unshare``), the data dir is probed in a
temporary directory removed afterwards, ports are bound and released. The rules the agent
enforces itself at start-up are not restated: parents searchable by sandbox root is
``sandbox_fs.check_traversable``, a free listen address and an unlocked data dir are
``startup_checks`` (the agent runs those before it registers).

What the agent needs and why: docs/agent.md, "What a host needs".
"""

from __future__ import annotations

import contextlib
import email.utils
import ipaddress
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from warren.agent import layer_image, ns_maker, sandbox_fs, startup_checks

Status = Literal["ok", "warn", "fail"]

# Programs the agent runs (entry._check_host refuses to start without them).
REQUIRED_PROGRAMS = ("ip", "iptables", "debootstrap", "unshare", "setpriv", "prlimit", "cp")
# cgroup v1 controllers the agent and runc use: limits, accounting, pids, pause.
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer")
V2_CONTROLLERS = ("memory", "cpu", "pids")
# Sandbox networks (network.py): must not overlap the host's own.
SANDBOX_NET = ipaddress.ip_network("10.11.0.0/16")
# Free space below which the data dir is refused / warned about (templates, layers, snapshots).
MIN_FREE_GIB = 2.0
WARN_FREE_GIB = 10.0
# Clock skew against the control plane (its Date header has a resolution of one second).
SKEW_WARN_S = 5.0
SKEW_FAIL_S = 60.0
# A check's command may wait for the host-wide xtables lock (iptables -w) while a running agent
# rebuilds its rules, or be slow on a busy host: a minute, not seconds, before it counts as failed.
COMMAND_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Target:
    """What the agent will be run with."""

    data_dir: Path = Path("/var/lib/warren/agent")
    listen: str = "127.0.0.1:50051"
    metrics_listen: str = "127.0.0.1:9464"
    runtime: str = "auto"  # the agent's default: crun where installed, else runc
    cp_url: str | None = None
    min_free_gib: float = MIN_FREE_GIB
    warn_free_gib: float = WARN_FREE_GIB


def run(target: Target) -> list[Check]:
    """Every check, in a fixed order."""
    checks: list[Check] = []
    steps: list[Callable[[], Check | list[Check]]] = [
        _root,
        _namespaces,
        _filesystems,
        _veth,
        _iptables,
        _cgroups,
        lambda: _runtimes(target.runtime),
        _programs,
        _layer_images,
        lambda: _data_dir(target),
        lambda: _ports(target),
        lambda: _clock(target.cp_url),
        _ipv6,
        _sandbox_network,
    ]
    for step in steps:
        got = step()
        checks.extend(got if isinstance(got, list) else [got])
    return checks


def failed(checks: Iterable[Check]) -> list[Check]:
    return [c for c in checks if c.status == "fail"]


def as_json(checks: Iterable[Check]) -> str:
    return json.dumps([asdict(c) for c in checks], indent=2)


# ---------------------------------------------------------------------------- helpers


def _sh(*argv: str) -> tuple[int, str]:
    """Exit code and combined output (127 when the program is missing)."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except FileNotFoundError:
        return 127, f"{argv[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]}: timed out after {COMMAND_TIMEOUT_S:.0f} s"
    return p.returncode, (p.stdout + p.stderr).strip()


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


# ---------------------------------------------------------------------------- kernel


def _root() -> Check:
    if os.geteuid() == 0:
        return Check("root", "ok", "running as root")
    return Check(
        "root",
        "fail",
        "not root: the checks below cannot all run, and the agent refuses to start",
        "run as root: sudo warren doctor …",
    )


def _namespaces() -> Check:
    code, out = _sh(
        "unshare",
        "--user",
        "--map-root-user",
        "--pid",
        "--mount",
        "--ipc",
        "--net",
        "--uts",
        "--cgroup",
        "--fork",
        "true",
    )
    if code == 0:
        return _slot_namespaces()
    userns = _read("/proc/sys/user/max_user_namespaces").strip()
    fix = "enable namespaces in the kernel"
    if userns == "0":
        fix = "sysctl -w user.max_user_namespaces=15000 (and persist it in /etc/sysctl.d/)"
    return Check("namespaces", "fail", f"unshare failed: {_first_line(out)}", fix)


def _maker_probe(uid: int) -> str:
    """The namespace maker's answer to ``probe <uid>`` ("ok" or "err <why>"): the agent's own way
    of making a slot's namespaces (ns_maker.py, a forked child that takes ``uid`` and unshares)."""
    argv = [sys.executable, "-I", "-S", str(Path(ns_maker.__file__))]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as p:
        assert p.stdin is not None and p.stdout is not None
        try:
            p.stdin.write(f"probe {uid}\n")
            p.stdin.flush()  # and kept open: the maker ends at end of file, answered or not
            answered = select.select([p.stdout], [], [], COMMAND_TIMEOUT_S)[0]
            line = p.stdout.readline().strip() if answered else ""
        finally:
            p.stdin.close()
            try:
                p.wait(COMMAND_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                p.kill()
    return line or f"err no answer from the namespace maker in {COMMAND_TIMEOUT_S:.0f} s"


def _slot_namespaces() -> Check:
    """Each network slot's user namespace is made by an unprivileged host uid (slot_userns.py)."""
    answer = _maker_probe(1_999_999_999)
    code, out = (0, "") if answer == "ok" else (1, answer.removeprefix("err "))
    if code == 0:
        return Check("namespaces", "ok", "user, pid, mount, ipc, net, uts and cgroup namespaces work")
    return Check(
        "namespaces", "warn",
        f"an unprivileged uid cannot make a user namespace with a netns ({_first_line(out)}): sandboxes "
        "will share the kernel's per-user counts with host root (docs/security.md §3)",
        "sysctl -w kernel.unprivileged_userns_clone=1 (Debian) or "
        "kernel.apparmor_restrict_unprivileged_userns=0 (Ubuntu 24.04)",
    )  # fmt: skip


def _filesystems() -> list[Check]:
    known = {line.split()[-1] for line in _read("/proc/filesystems").splitlines() if line.strip()}
    checks = []
    for fs, why in (("overlay", "sandbox root filesystems"), ("tmpfs", "sandbox disks")):
        if fs in known:
            checks.append(Check(fs, "ok", f"{fs} is available ({why})"))
        elif fs == "overlay" and _sh("modprobe", "-n", "overlay")[0] == 0:
            checks.append(Check(fs, "ok", "overlay module present (loaded on first mount)"))
        else:
            checks.append(Check(fs, "fail", f"{fs} is not in /proc/filesystems", f"modprobe {fs}"))
    return checks


def _veth() -> Check:
    code, out = _sh("unshare", "--net", "ip", "link", "add", "wdoc0", "type", "veth", "peer", "name", "wdoc1")
    if code == 0:
        return Check("veth", "ok", "veth pairs can be made (tried in a throwaway network namespace)")
    return Check("veth", "fail", f"cannot make a veth pair: {_first_line(out)}", "modprobe veth")


def _iptables() -> list[Check]:
    checks = []
    # The matches and targets the agent's rules use, in a throwaway netns (the host's tables
    # are not touched).
    script = {
        "iptables": "iptables -w -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT && "
        "iptables -w -t nat -A POSTROUTING -j MASQUERADE && iptables -w -N WARREN-DOCTOR",
        "ip6tables": "ip6tables -w -A INPUT -j DROP && ip6tables -w -N WARREN-DOCTOR",
    }
    for prog, rules in script.items():
        if shutil.which(prog) is None:
            checks.append(Check(prog, "fail", f"{prog} is not installed", "apt-get install -y iptables"))
            continue
        code, out = _sh("unshare", "--net", "sh", "-c", rules)
        version = _first_line(_sh(prog, "--version")[1])
        if code == 0:
            checks.append(Check(prog, "ok", f"{version}: conntrack, nat and new chains work"))
        else:
            checks.append(
                Check(
                    prog,
                    "fail",
                    f"{version}: {_first_line(out)}",
                    "load the netfilter modules (nf_conntrack, iptable_nat / nf_tables)",
                )
            )
    return checks


def _cgroups() -> Check:
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        have = set(_read(str(root / "cgroup.controllers")).split())
        missing = [c for c in V2_CONTROLLERS if c not in have]
        if missing:
            return Check(
                "cgroups",
                "fail",
                f"cgroup v2 without controllers: {', '.join(missing)}",
                "enable them in the kernel command line / cgroup.subtree_control",
            )
        return Check("cgroups", "ok", f"cgroup v2 with {', '.join(V2_CONTROLLERS)} (freeze built in)")
    missing = [c for c in V1_CONTROLLERS if not (root / c).is_dir()]
    if missing:
        return Check(
            "cgroups",
            "fail",
            f"cgroup v1 without {', '.join(missing)} mounted",
            "mount the missing controllers (or boot with cgroup v2: systemd.unified_cgroup_hierarchy=1)",
        )
    hybrid = " (hybrid: cgroup2 also at /sys/fs/cgroup/unified)" if (root / "unified").is_dir() else ""
    return Check("cgroups", "ok", f"cgroup v1 with {', '.join(V1_CONTROLLERS)}{hybrid}")


def _runtime_version(name: str) -> str | None:
    if shutil.which(name) is None:
        return None
    return _first_line(_sh(name, "--version")[1]) or "unknown version"


def _runtimes(runtime: str) -> list[Check]:
    checks = []
    if runtime == "auto":  # the agent's default (runtime/select.py: choose_default)
        runtime = "crun" if shutil.which("crun") else "runc"
    for name in ("runc", "crun"):
        version = _runtime_version(name)
        chosen = name == runtime
        if version is None:
            status: Status = "fail" if chosen else "ok"
            what = "not installed" + (" (the agent's --runtime)" if chosen else " (optional: --runtime crun)")
            checks.append(Check(name, status, what, f"apt-get install -y {name}" if chosen else ""))
            continue
        old = (
            name == "runc" and (m := re.search(r"(\d+)\.(\d+)", version)) and (int(m[1]), int(m[2])) < (1, 1)
        )
        if old:
            checks.append(
                Check(
                    name,
                    "fail" if chosen else "warn",
                    f"{version}: runc 1.1 or later is needed",
                    "install runc >= 1.1 (or use crun)",
                )
            )
        else:
            checks.append(Check(name, "ok", version + (" (the agent's --runtime)" if chosen else "")))
    if runtime not in ("runc", "crun"):
        fix = "--runtime runc, crun or auto"
        checks.append(Check("runtime", "fail", f"unknown runtime {runtime!r}", fix))
    gvisor = _runtime_version("runsc")
    checks.append(Check("runsc", "ok", gvisor or "gVisor not installed (optional, not used yet)"))
    return checks


def _programs() -> Check:
    missing = [p for p in REQUIRED_PROGRAMS if shutil.which(p) is None]
    if missing:
        return Check(
            "programs",
            "fail",
            f"missing: {', '.join(missing)}",
            "apt-get install -y iproute2 iptables debootstrap util-linux coreutils",
        )
    return Check("programs", "ok", ", ".join(REQUIRED_PROGRAMS))


def _layer_images() -> Check:
    """Layers install as squashfs images where the host can, by extraction elsewhere (slower
    for many small files, never wrong): a warning, not a failure."""
    got = layer_image.support()
    if got.ok:
        return Check("layer images", "ok", got.detail)
    return Check(
        "layer images",
        "warn",
        f"layers are extracted instead: {got.detail}",
        "apt-get install -y squashfs-tools-ng (and the squashfs and loop modules)",
    )


# ---------------------------------------------------------------------------- data dir


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _data_dir(target: Target) -> list[Check]:
    d = target.data_dir.absolute()
    base = _existing(d)
    checks = [_data_dir_owner(d, base)]
    vfs = os.statvfs(base)
    if vfs.f_flag & os.ST_RDONLY:
        checks.append(
            Check(
                "data_dir_writable",
                "fail",
                f"{base} is on a read-only filesystem",
                "choose --data-dir on a writable filesystem (or remount it read-write)",
            )
        )
        return checks
    free_gib = vfs.f_bavail * vfs.f_frsize / 2**30
    where = f"{free_gib:.1f} GiB free on {base}'s filesystem"
    if free_gib < target.min_free_gib:
        checks.append(
            Check(
                "disk_free",
                "fail",
                f"{where}, below {target.min_free_gib:g} GiB",
                "free space or choose --data-dir on a larger filesystem",
            )
        )
    elif free_gib < target.warn_free_gib:
        checks.append(
            Check(
                "disk_free",
                "warn",
                f"{where}, below {target.warn_free_gib:g} GiB",
                "templates, layers and snapshots live here: give it more room",
            )
        )
    else:
        checks.append(Check("disk_free", "ok", where))
    try:
        sandbox_fs.check_traversable(d.parent if d.exists() else base)
        checks.append(Check("data_dir_parents", "ok", "every parent is searchable by sandbox root (o+x)"))
    except SystemExit as e:
        checks.append(Check("data_dir_parents", "fail", str(e.code), "chmod o+x on the directory named"))
    checks.append(_overlay_upper(base))
    if d.exists() and (busy := startup_checks.lock_problem(d)):
        checks.append(Check("data_dir_lock", "warn", busy, "stop that agent before it is replaced"))
    return checks


def _data_dir_owner(d: Path, base: Path) -> Check:
    if not d.exists():
        if os.access(base, os.W_OK):
            return Check("data_dir", "ok", f"{d} does not exist yet; the agent makes it (under {base})")
        return Check(
            "data_dir",
            "fail",
            f"{d} does not exist and {base} is not writable",
            f"mkdir -p {d} as root, or choose another --data-dir",
        )
    st = d.stat()
    if not d.is_dir():
        return Check("data_dir", "fail", f"{d} is not a directory", "choose another --data-dir")
    if st.st_uid != 0:
        return Check("data_dir", "fail", f"{d} is owned by uid {st.st_uid}, not root", f"chown root: {d}")
    if st.st_mode & 0o022:
        return Check(
            "data_dir",
            "fail",
            f"{d} is writable by group or others (mode {oct(st.st_mode & 0o777)})",
            f"chmod 0711 {d}",
        )
    return Check("data_dir", "ok", f"{d} exists, owned by root, mode {oct(st.st_mode & 0o777)}")


def _overlay_upper(base: Path) -> Check:
    """Mount an overlay whose lower, upper and work dirs are on the data dir's filesystem,
    in a throwaway mount namespace (nothing appears on the host)."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".warren-doctor-", dir=base))
    except OSError as e:
        return Check(
            "overlay_upper",
            "fail",
            f"cannot make a directory in {base}: {e.strerror}",
            "choose --data-dir on a writable filesystem",
        )
    try:
        for sub in ("lower", "upper", "work", "merged"):
            (tmp / sub).mkdir()
        opts = f"lowerdir={tmp / 'lower'},upperdir={tmp / 'upper'},workdir={tmp / 'work'}"
        code, out = _sh(
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            opts,
            str(tmp / "merged"),
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if code == 0:
        return Check("overlay_upper", "ok", f"overlayfs mounts with its layers on {base}'s filesystem")
    return Check(
        "overlay_upper",
        "fail",
        f"overlay over {base}: {_first_line(out)}",
        "put --data-dir on ext4 or xfs (not NFS, overlay or a FUSE filesystem)",
    )


# ---------------------------------------------------------------------------- ports, clock, network


def _ports(target: Target) -> list[Check]:
    checks = []
    for name, listen in (("listen", target.listen), ("metrics_listen", target.metrics_listen)):
        if listen in ("", "0"):
            checks.append(Check(name, "ok", "off"))
            continue
        problem = startup_checks.listen_problem(listen)
        if problem:
            checks.append(
                Check(
                    name,
                    "fail",
                    problem + " (in use: another agent or program?)",
                    f"free the port or choose another --{name.replace('_', '-')}",
                )
            )
        else:
            checks.append(Check(name, "ok", f"{listen} is free"))
    return checks


def _clock(cp_url: str | None) -> Check:
    """Synchronised by NTP: ok. Otherwise (not synchronised yet, or no tool to ask) the skew
    against the CP decides when ``--cp`` is given: certificates and tokens carry validity
    times, so a clock minutes off breaks mTLS; unsynchronised alone is a warning."""
    state = ""
    code, out = _sh("timedatectl", "show", "-p", "NTPSynchronized", "--value")
    if code == 0 and out in ("yes", "no"):
        if out == "yes":
            return Check("clock", "ok", "NTP-synchronised (timedatectl)")
        state = "not NTP-synchronised (timedatectl)"
    else:
        code, out = _sh("chronyc", "-n", "tracking")
        if code == 0 and "Not synchronised" not in out:
            return Check("clock", "ok", "synchronised (chronyc tracking)")
        state = "chrony is not synchronised" if code == 0 else "no timedatectl or chronyc answer"
    fix = "run NTP: timedatectl set-ntp true, or chrony"
    if cp_url:
        skew = _skew(cp_url)
        return Check(skew.name, skew.status, f"{state}; {skew.detail}", skew.fix or fix)
    return Check("clock", "warn", f"{state}, and no --cp to compare with", fix + ", or pass --cp URL")


def _skew(cp_url: str) -> Check:
    import httpx

    try:
        before = time.time()
        resp = httpx.get(cp_url.rstrip("/") + "/healthz", timeout=COMMAND_TIMEOUT_S)
        after = time.time()
    except httpx.HTTPError as e:
        return Check("control_plane", "fail", f"cannot reach {cp_url}: {e}", "check --cp and the network")
    date = resp.headers.get("date")
    if not date:
        return Check("clock", "warn", f"{cp_url} sent no Date header", "run NTP on this host")
    skew = (before + after) / 2 - email.utils.parsedate_to_datetime(date).timestamp()
    what = f"{skew:+.1f} s against {cp_url}'s Date header (1 s resolution)"
    if abs(skew) >= SKEW_FAIL_S:
        return Check("clock", "fail", what, "synchronise this host's clock (NTP)")
    if abs(skew) >= SKEW_WARN_S:
        return Check("clock", "warn", what, "synchronise this host's clock (NTP)")
    return Check("clock", "ok", what)


def _ipv6() -> Check:
    if not Path("/proc/sys/net/ipv6").is_dir():
        return Check("ipv6", "ok", "IPv6 is off in this kernel: sandboxes get none")
    code, _ = _sh("unshare", "--net", "ip6tables", "-w", "-S")
    if code != 0:
        return Check(
            "ipv6",
            "fail",
            "IPv6 is on but ip6tables does not work: the agent cannot drop sandboxes' IPv6 traffic",
            "apt-get install -y iptables, or boot with ipv6.disable=1",
        )
    return Check(
        "ipv6",
        "ok",
        "IPv6 on; the agent turns it off on every sandbox veth and drops "
        "forwarded IPv6 (ip6tables WARREN-FWD, WARREN-IN)",
    )


def _sandbox_network() -> Check:
    code, out = _sh("ip", "-4", "-o", "route", "show")
    if code != 0:
        return Check("sandbox_network", "warn", f"cannot list routes: {_first_line(out)}", "")
    clash = []
    for line in out.splitlines():
        dest = line.split()[0]
        with contextlib.suppress(ValueError):
            net = ipaddress.ip_network(dest, strict=False) if dest != "default" else None
            # The agent's own slots (wv<n>) are 10.11.0.x/30s: those are ours, not a clash.
            if net is not None and net.overlaps(SANDBOX_NET) and " dev wv" not in f" {line}":
                clash.append(dest)
    if clash:
        return Check(
            "sandbox_network",
            "fail",
            f"routes overlap {SANDBOX_NET}: {', '.join(clash)}",
            f"sandbox networks use {SANDBOX_NET}: move the host's networks off it",
        )
    forward = _read("/proc/sys/net/ipv4/ip_forward").strip()
    note = "" if forward == "1" else "; net.ipv4.ip_forward is 0 (the agent sets it to 1)"
    return Check("sandbox_network", "ok", f"{SANDBOX_NET} is unused{note}")
