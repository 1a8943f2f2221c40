"""AgentSettings: everything the host agent reads from its environment, read once at start.

``warren agent`` (``warren.agent.entry``) builds one :class:`AgentSettings` with
:func:`load_settings` and passes it down; no agent module reads ``os.environ`` itself. A value
that does not parse stops the agent at start with a message naming the variable. The variables,
their defaults and what they bound are listed in ``docs/agent.md``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from warren.agent.guest_client import MAX_EXEC_OUTPUT
from warren.agent.runtime.bundle import DEFAULT_MAX_OPEN_FILES
from warren.agent.templates import DEFAULT_MIRROR

PREFIX = "WARREN_AGENT_"


class AgentSettings(BaseSettings):
    """``WARREN_AGENT_*`` plus the few shared ``WARREN_*`` names the agent reads."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", env_ignore_empty=True)

    # Creates admitted at once; later ones wait in arrival order. None: two per usable CPU
    # (see :meth:`create_limit`); 0: no limit.
    create_concurrency: int | None = Field(default=None, ge=0)
    # Sampling period of the metrics ring buffers, seconds.
    metrics_interval: float = Field(default=5.0, gt=0)
    # Network slots kept ready for the next creates.
    net_pool: int = Field(default=4, ge=0)
    # Seconds between retries of the destroys that left something of a sandbox alive, whose slot
    # is kept until nothing of it is left (teardown.py, the slot quarantine).
    quarantine_sweep_s: float = Field(default=10.0, ge=1, le=600)
    max_open_files: int = Field(default=DEFAULT_MAX_OPEN_FILES, ge=64)
    max_exec_output: int = Field(default=MAX_EXEC_OUTPUT, gt=0)
    # Processes (and threads) per sandbox: the pids cgroup's limit.
    max_processes: int = Field(default=1024, ge=16)
    # Comma-separated IPv4 addresses or CIDRs closed to every sandbox (egress.parse_deny).
    egress_deny: str = ""
    # Where sandboxes' name-rule resolvers forward queries (egress_rules.py, dns_proxy.py):
    # comma-separated `ip` or `ip:port`; empty: the host's own /etc/resolv.conf nameservers.
    dns_upstream: str = ""
    # The largest layer a host installs, receives or exports (tar bytes, and its extracted files).
    max_layer_mb: int = Field(default=8192, gt=0)
    # Install layers as loop-mounted squashfs images where the host can (layer_image.py);
    # off: every layer is extracted (docs/templates.md §2).
    layer_images: bool = True
    # Layer installs (conversions, extractions) at once on this host; None: one per CPU. A team
    # gets at most half of them while another waits (layer_slots.py).
    layer_installs_at_once: int | None = Field(default=None, ge=1)
    # Installs that may wait for a slot (a team at most half); past it the CP retries.
    layer_install_queue: int = Field(default=64, ge=1)
    # TCP port of the dial data listener (docs/networking.md §3), on the gRPC address's host:
    # 0 an ephemeral one (the CP learns it from each ticket), -1 none (DialPort over gRPC only).
    dial_data_port: int = Field(default=0, ge=-1, le=65535)
    # TLS on the data port even on a loopback address (off: there the ticket alone admits).
    dial_data_tls_on_loopback: bool = False
    # How long a dial ticket (and the socket it holds, counted against the sandbox) waits to be redeemed.
    dial_ticket_ttl_s: float = Field(default=10.0, gt=0, le=60)

    # File transfers' flow windows (rpc/flow_window.py): the largest one transfer grows to, in
    # bytes (262144: the fixed window of old), and what grown windows hold past their first
    # 256 KiB on this agent, MiB in all and per team.
    transfer_window_max: int = Field(default=8 << 20, ge=256 << 10, le=1 << 30)
    transfer_window_budget_mb: int = Field(default=64, ge=0)
    transfer_window_team_mb: int = Field(default=16, ge=0)

    # Warm pools kept from the start (docs/agent.md, "Warm pools"): "minimal=4"; the control
    # plane can set others (SetWarmPool) at run time.
    warm_pool: str = ""
    # Members wait frozen (no CPU) and are thawed at the claim; false keeps them running.
    warm_pool_freeze: bool = True

    # Set the kernel's cgroup "favordynmods" at start (runtime/cmds_cgroup.py): every command
    # moves into its sandbox's cmds cgroup, which without it waits an RCU grace period (~5-12 ms
    # a command). Host-wide until reboot; false leaves the kernel as it is.
    cgroup_favor_dynmods: bool = True

    # gVisor's platform (runtime/gvisor.py): "ptrace", "kvm", or "auto" (kvm when /dev/kvm runs
    # a sandbox, else ptrace); "off": no gVisor runtime even where runsc is installed.
    gvisor_platform: Literal["auto", "ptrace", "kvm", "off"] = "auto"

    # Shared names, without the agent prefix.
    minimal_dir: Path | None = Field(default=None, validation_alias="WARREN_MINIMAL_DIR")
    debian_mirror: str = Field(default=DEFAULT_MIRROR, validation_alias="WARREN_DEBIAN_MIRROR")
    # Seconds between heartbeats to the control plane (control_plane.HEARTBEAT_INTERVAL_S).
    heartbeat_interval_s: float = Field(default=30.0, gt=0, validation_alias="WARREN_HEARTBEAT_INTERVAL_S")
    log_level: str = Field(default="INFO", validation_alias="WARREN_LOG_LEVEL")
    log_format: Literal["text", "json"] = Field(default="text", validation_alias="WARREN_LOG_FORMAT")
    # Where GET /metrics is served (agent/telemetry.py): host:port, or 0 for off.
    metrics_listen: str = "127.0.0.1:9464"

    @field_validator("warm_pool")
    @classmethod
    def _warm_pool_parses(cls, value: str) -> str:
        from warren.agent.warm_pool import parse_spec

        parse_spec(value)  # ValueError: the message names the pool
        return value

    @field_validator("metrics_listen")
    @classmethod
    def _listen_parses(cls, value: str) -> str:
        from warren.agent.telemetry import parse_listen

        parse_listen(value)  # ValueError: the message names the value
        return value

    def create_limit(self) -> int:
        """How many creates run at once (0 = no limit). A create is mostly CPU (runc, the
        namespaces, the guest's start), so past a couple per core more of them at once only
        share the CPU: with no limit a burst of 30 on one core finished nearly all together at
        1.5-2.3 s, with 2 at a time the median was ready after 1.0-1.2 s and the first within
        0.1 s (bench/schedule.py, docs/agent.md). The default counts the CPUs this process may
        run on; a CPU quota on the agent's own cgroup is not looked at."""
        if self.create_concurrency is None:
            return 2 * len(os.sched_getaffinity(0))
        return self.create_concurrency


def _env_name(loc: str) -> str:
    # A field read under an alias is reported by that alias (the variable's full name).
    field = AgentSettings.model_fields.get(loc)
    if field is None:
        return loc
    return field.validation_alias if isinstance(field.validation_alias, str) else PREFIX + loc.upper()


def _checked(flag: str, value: str, parse: Callable[[str], object]) -> str:
    # model_copy does not run the field validators: a command-line value is checked here, by the
    # parser the validator uses, and stops the agent naming the flag.
    try:
        parse(value)
    except ValueError as e:
        raise SystemExit(f"invalid {flag}: {e}") from None
    return value


def load_settings(
    *, log_format: str | None = None, metrics_listen: str | None = None, warm_pool: str | None = None
) -> AgentSettings:
    """The agent's settings from the environment, with the command line's ``--log-format``,
    ``--metrics-listen`` and ``--warm-pool`` (when given) over them; an invalid value stops the
    agent, naming it."""
    from warren.agent.telemetry import parse_listen

    update: dict[str, str] = {}
    if log_format is not None:
        if log_format not in ("text", "json"):
            raise SystemExit(f"invalid --log-format {log_format!r}: text or json")
        update["log_format"] = log_format
    if metrics_listen is not None:
        update["metrics_listen"] = _checked("--metrics-listen", metrics_listen, parse_listen)
    if warm_pool is not None:
        from warren.agent.warm_pool import parse_spec

        update["warm_pool"] = _checked("--warm-pool", warm_pool, parse_spec)
    try:
        return AgentSettings().model_copy(update=update)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            name = _env_name(str(err["loc"][0])) if err["loc"] else "settings"
            problems.append(f"{name}={os.environ.get(name, '')!r}: {err['msg']}")
        raise SystemExit("invalid agent setting: " + "; ".join(problems)) from None
