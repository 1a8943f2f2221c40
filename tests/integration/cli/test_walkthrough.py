"""docs/operations.md, "Three machines", run as written: a control plane with PostgreSQL and two
sandbox hosts, each a network and mount namespace of its own (tests/harness/netns.py) at the
doc's addresses, ending with a sandbox on each host answering an exec.

The commands are the doc's ``<!-- walkthrough: … -->`` blocks, extracted here, so the doc and the
test cannot drift. Only the lines in ``SUBSTITUTE`` are replaced (each must appear verbatim in
the doc, and the doc's closing paragraph says why): no apt-get, the checkout's virtualenv for
``pip install warren``, a throwaway PostgreSQL for ``sudo -u postgres psql``, the unit's
ExecStart for ``systemctl`` (no systemd here), each host's token.
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.machine import minimal_cache_env, scratch_dir
from tests.harness.netns import Machine, link
from warren.cp.db.embedded import bin_dir

# Serial: it starts a CP, a PostgreSQL and two agents (heavy for a shared 2-core machine).
# 40 s in all at load 6; at load 16 (others' suites running) 73 s and a 17 s teardown: 120 s
# left too little room for a slower machine.
pytestmark = [pytest.mark.root, pytest.mark.serial, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[3]
DOC = REPO / "docs" / "operations.md"
VENV_WARREN = Path(sys.executable).parent / "warren"
PG_BIN = bin_dir()
ADDRESSES = {"cp": "10.0.0.10/24", "host1": "10.0.0.11/24", "host2": "10.0.0.12/24"}
START_CP = "__start_cp_from_its_unit__"
PSQL = f"{PG_BIN}/psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1"
# Force-deleting a host destroys its sandboxes and terminates its agent (docs/hosts.md).
DELETE_HOSTS = (
    "for h in $(/opt/warren/bin/warren host list --json | jq -r '.[].id'); do "
    '/opt/warren/bin/warren host delete "$h" --force; done'
)

# Doc line (prefix) → what the test runs instead.
SUBSTITUTE: dict[str, str] = {
    "apt-get install -y ": ": packages are installed on this machine",
    "python3 -m venv /opt/warren && /opt/warren/bin/pip install warren": (
        f"mkdir -p /opt/warren/bin && ln -sfn {VENV_WARREN} /opt/warren/bin/warren"
    ),
    "sudo -u postgres psql": PSQL,
    "systemctl daemon-reload && systemctl enable --now warren-cp": START_CP,
    "TOKEN=": "TOKEN={token}",
}


@dataclass
class Block:
    machines: list[str]
    background: bool
    script: str


def doc_blocks() -> list[Block]:
    text = DOC.read_text()
    section = text[text.index("## Three machines") :]
    section = section[: section.index("\n## ", 1)]
    found = re.findall(r"<!-- walkthrough: ([^>]*?) -->\n```sh\n(.*?)```", section, re.S)
    blocks = []
    for header, script in found:
        words = header.split()
        blocks.append(Block([w for w in words if w != "background"], "background" in words, script))
    return blocks


def substituted(script: str, **values: str) -> str:
    out = []
    for line in script.splitlines():
        for doc_prefix, instead in SUBSTITUTE.items():
            if line.startswith(doc_prefix):
                rest = line[len(doc_prefix) :] if doc_prefix.endswith("psql") else ""
                line = instead.format(**values) + rest
                break
        out.append(line)
    return "\n".join(out) + "\n"


def test_every_substitution_is_in_the_doc() -> None:
    lines = [line for b in doc_blocks() for line in b.script.splitlines()]
    for doc_prefix in SUBSTITUTE:
        assert any(line.startswith(doc_prefix) for line in lines), doc_prefix


def unit_command(machine: Machine, unit: str) -> tuple[list[str], dict[str, str]]:
    """What systemd would run for ``unit`` as the machine installed it: ExecStart and its
    environment (EnvironmentFile, Environment)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(machine.etc / "systemd" / "system" / unit)
    service = parser["Service"]
    env: dict[str, str] = {}
    env_file = service["EnvironmentFile"].lstrip("-")
    for line in (machine.etc / env_file.removeprefix("/etc/")).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    key, _, value = service["Environment"].partition("=")
    env[key] = value
    return shlex.split(service["ExecStart"]), env


def start_postgres(cp: Machine) -> None:
    """A throwaway PostgreSQL on the CP machine's 127.0.0.1:5432 (superuser ``postgres``)."""
    pg = cp.dir / "pg"
    pg.mkdir(mode=0o700)
    shutil.chown(pg, "warren", "warren")
    initdb = f"{PG_BIN}/initdb -D {pg}/data -U postgres --auth=trust -E UTF8 --no-sync"
    cp.run(f"runuser -u warren -- {initdb} >/dev/null")
    cp.spawn(
        ["runuser", "-u", "warren", "--", f"{PG_BIN}/postgres", "-D", f"{pg}/data", "-p", "5432",
         "-c", "listen_addresses=127.0.0.1", "-k", str(pg), "-c", "fsync=off"],
        cp.dir / "postgres.log",
    )  # fmt: skip
    ready = f"{PG_BIN}/pg_isready -q -h 127.0.0.1 -p 5432"
    cp.run(f"for i in $(seq 600); do {ready} && exit 0; sleep 0.1; done; exit 1", timeout=120)


def sql(cp: Machine, statement: str) -> str:
    return cp.run(f"{PSQL} -d warren -Atc {shlex.quote(statement)}").strip()


def wait_sql(cp: Machine, statement: str, want: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (got := sql(cp, statement)) != want:
        assert time.monotonic() < deadline, f"{statement!r}: {got!r}, want {want!r}"
        time.sleep(0.2)


@pytest.fixture
def machines() -> Iterator[dict[str, Machine]]:
    root = scratch_dir("walkthrough")
    started: dict[str, Machine] = {}
    try:
        for name in ADDRESSES:
            started[name] = Machine(name, root).start()
        cp = started["cp"]
        link(cp, ADDRESSES["cp"], {started[n]: ADDRESSES[n] for n in ("host1", "host2")})
        yield started
    finally:
        cp_machine = started.get("cp")
        if cp_machine is not None and cp_machine.children:
            try:  # a failed test's hosts: their sandboxes must not outlive it
                cp_machine.run(DELETE_HOSTS, timeout=300)
            except (AssertionError, subprocess.TimeoutExpired) as e:
                print(f"teardown: {e}")
        for name in ("host1", "host2", "cp"):
            if name in started:
                started[name].stop()
        shutil.rmtree(root, ignore_errors=True)


def test_three_machines(machines: dict[str, Machine]) -> None:
    for program in ("runc", "iptables", "ip", "debootstrap", "jq", "openssl", "curl"):
        assert shutil.which(program), f"the walkthrough's packages: {program} missing"
    cp = machines["cp"]
    blocks = doc_blocks()
    assert [b.machines for b in blocks] == [["cp"], ["cp"], ["host1", "host2"], ["host1", "host2"], ["cp"]]
    install_cp, tokens_block, host_block, agent_block, check_block = blocks

    # 1. The control plane: PostgreSQL, the config, the unit (run by hand), healthz.
    start_postgres(cp)
    before, _, after = substituted(install_cp.script).partition(START_CP + "\n")
    cp.run(before, cwd=REPO)
    argv, env = unit_command(cp, "warren-cp.service")
    assert argv[0] == "/opt/warren/bin/warren" and argv[1:3] == ["cp", "--config"]
    cp.spawn(argv, cp.dir / "cp.log", env=env)
    cp.run(after, timeout=90)

    # 2. An admin and a token per host.
    printed = cp.run(substituted(tokens_block.script))
    tokens = dict(re.findall(r"^(host\d): ([0-9a-f]{64})$", printed, re.M))
    assert set(tokens) == {"host1", "host2"}, printed

    # 3. Each host, both at once: doctor, install (no systemd here: it says so), the agent by hand.
    def join(name: str) -> None:
        host = machines[name]
        out = host.run(substituted(host_block.script, token=tokens[name]))
        assert "0 failed" in out and "wrote /etc/warren/agent.toml (0600)" in out, out
        assert "Not started: systemd is not the init system here" in out, out
        assert "/opt/warren/bin/warren agent --config /etc/warren/agent.toml" in out, out
        assert (host.etc / "warren" / "agent.toml").stat().st_mode & 0o777 == 0o600
        (agent_line,) = substituted(agent_block.script).strip().splitlines()
        host.spawn(shlex.split(agent_line), host.dir / "agent.log", env=minimal_cache_env())

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(join, ("host1", "host2")))
    wait_sql(cp, "SELECT count(*) FROM hosts WHERE status = 'online'", "2")

    # 4. A sandbox on each host, each answering an exec.
    out = cp.run(substituted(check_block.script), timeout=120)
    assert out.count("hello from ") == 2, out
    assert sql(cp, "SELECT count(DISTINCT host_id) FROM sandboxes WHERE status = 'running'") == "2"

    # Cleanup is part of the test: both agents destroy their sandboxes and exit.
    cp.run(DELETE_HOSTS)
    for name in ("host1", "host2"):
        assert machines[name].children[0].wait(60) == 0, (machines[name].dir / "agent.log").read_text()[
            -3000:
        ]
    assert sql(cp, "SELECT count(*) FROM sandboxes WHERE status = 'running'") == "0"
