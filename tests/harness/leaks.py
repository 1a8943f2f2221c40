"""What a destroyed sandbox could leave behind on the host (mounts, its network slot, cgroups,
processes, files), and zombie checks: the agent tests assert these are all gone."""

from __future__ import annotations

import glob
import ipaddress
import os
import subprocess
import time
from pathlib import Path

from tests.harness.agent import AgentProcess


def slot_of(host_ip: str) -> int:
    return (int(ipaddress.IPv4Address(host_ip)) - int(ipaddress.IPv4Address("10.11.0.0"))) // 4


def slot_held_by_another(slot: int, data_dir: Path) -> bool:
    """Whether an agent other than the one at ``data_dir`` (another test worker's) holds network
    slot ``slot`` now: rules for the slot are then that agent's sandbox's, not a leftover. (A
    slot claim is written before its rules are installed and removed after they are.)"""
    try:
        owner = Path(f"/run/warren/netslots/{slot}").read_text().split("\n", 1)[0]
    except FileNotFoundError:
        return False
    return owner != str(data_dir)


def leaks(agent: AgentProcess, sb_id: str, host_ip: str) -> list[str]:
    """Everything a destroyed sandbox could leave behind on the host."""
    found: list[str] = []
    slot = slot_of(host_ip)
    with open("/proc/self/mountinfo") as f:
        found += [f"mount {line.split()[4]}" for line in f if sb_id in line]
    try:
        holder = Path(f"/run/warren/netslots/{slot}").read_text().split("\n")[1]
    except (OSError, IndexError):
        holder = None
    # A freed slot may already serve another sandbox or the agent's pool of ready slots.
    if holder is None or holder == sb_id:
        if holder is not None:
            found.append(f"slot claim {slot}")
        if os.path.exists(f"/run/netns/warren-s{slot}"):
            found.append(f"netns warren-s{slot}")
        if os.path.exists(f"/sys/class/net/wv{slot}"):
            found.append(f"veth wv{slot}")
        for table in ("filter", "nat", "security"):  # security: the slot's egress counter
            dump = subprocess.run(["iptables", "-w", "-t", table, "-S"], capture_output=True, text=True)
            found += [f"iptables {line}" for line in dump.stdout.splitlines() if f"wv{slot} " in line + " "]
    found += [f"cgroup {d}" for d in glob.glob(f"/sys/fs/cgroup/*/warren/{sb_id}")]
    for cg in glob.glob("/proc/[0-9]*/cgroup"):
        try:
            with open(cg) as f:
                if sb_id in f.read():
                    found.append(f"process {cg.split('/')[2]}")
        except OSError:
            pass
    # Either OCI runtime's state (an agent's default is crun where it works, session 13).
    for p in (agent.data_dir / d / sb_id for d in ("sandboxes", "runc", "crun")):
        if p.exists():
            found.append(f"path {p}")
    return found


def wait_no_leaks(agent: AgentProcess, sb_id: str, host_ip: str, timeout: float = 30.0) -> list[str]:
    # Process exit and cgroup removal finish asynchronously in the kernel: allow a moment (a
    # long one on a loaded machine; a clean host returns at once).
    deadline = time.monotonic() + timeout
    while True:
        found = leaks(agent, sb_id, host_ip)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def zombies_of(pid: int) -> list[int]:
    out = []
    for st in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(st) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == pid:
            out.append(int(st.split("/")[2]))
    return out


def runsc_leftovers(data_dir: Path, sb_id: str) -> list[str]:
    """What the gVisor runtime could leave of a sandbox: its processes (gofer, sandbox) and its
    state files under the agent's ``data_dir``."""
    found = []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            args = Path(cmdline).read_bytes().split(b"\0")
        except OSError:
            continue
        if args and b"runsc" in args[0] and sb_id.encode() in b" ".join(args):
            found.append(f"process {cmdline.split('/')[2]}: {b' '.join(args[:2]).decode()}")
    return found + [f"path {p}" for p in glob.glob(str(data_dir / "runsc" / f"*{sb_id}*"))]
