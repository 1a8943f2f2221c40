"""A template as layers (docs/templates.md): its chain (a host-local base plus store layers) and
its config (the defaults every sandbox of it gets), checked, and kept in the sandbox's record.

Everything here comes from the control plane, which got much of it from a tenant (a Warrenfile,
an imported image's config): every field is bounded before the agent uses it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from warren.agent.guest_client import GuestClient
from warren.agent.guest_wire import GuestError
from warren.errors import InvalidRequest, InvalidState

MINIMAL_BASE = "minimal"
SCRATCH_BASE = "scratch"
BASES = (MINIMAL_BASE, SCRATCH_BASE)
DIGEST = re.compile(r"^[0-9a-f]{64}$")
# Overlayfs stacks at most 500 lower layers; a chain is far shorter (one layer per build step).
MAX_LAYERS = 128
MAX_ENV = 1024
MAX_ENV_BYTES = 256 << 10  # keys and values together
MAX_CMD = 64 << 10
MAX_PATH = 4096
MAX_USER = 32  # a POSIX user name (the servicer bounds a call's own user the same)
MAX_READY_TIMEOUT_S = 3600
DEFAULT_READY_TIMEOUT_S = 60
READY_INTERVAL_S = 0.1
# One ready attempt's own limit (within the template's timeout) and what it may print.
READY_ATTEMPT_S = 10.0
READY_OUTPUT = 64 << 10
# How much of the last attempt's output the create's error carries.
READY_TAIL = 2048
START_TAG = "start"


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not DIGEST.match(digest):
        raise InvalidRequest(f"invalid layer digest {digest[:80]!r}: want 64 lowercase hex digits")
    return digest


def check_env(env: Mapping[str, str], what: str = "environment") -> dict[str, str]:
    if len(env) > MAX_ENV:
        raise InvalidRequest(f"{what}: at most {MAX_ENV} variables")
    total = 0
    for k, v in env.items():
        if not k or "=" in k or "\0" in k or "\0" in v:
            raise InvalidRequest(f"invalid environment variable name {k[:80]!r}")
        total += len(k) + len(v)
    if total > MAX_ENV_BYTES:
        raise InvalidRequest(f"{what}: at most {MAX_ENV_BYTES} bytes")
    return dict(env)


def _text(value: str, what: str, limit: int) -> str:
    if len(value) > limit or "\0" in value:
        raise InvalidRequest(f"{what}: at most {limit} characters, no NUL")
    return value


@dataclass(frozen=True)
class TemplateConfig:
    """``TemplateConfig`` of the proto: env, exec's default cwd and user, start and ready."""

    env: dict[str, str] = field(default_factory=dict)
    workdir: str = ""
    user: str = ""
    start_cmd: str = ""
    ready_cmd: str = ""
    ready_timeout_sec: int = 0

    @classmethod
    def checked(
        cls, *, env: Mapping[str, str], workdir: str, user: str, start_cmd: str, ready_cmd: str,
        ready_timeout_sec: int,
    ) -> TemplateConfig:  # fmt: skip
        if workdir and not workdir.startswith("/"):
            raise InvalidRequest(f"template workdir must be absolute, not {workdir[:80]!r}")
        if not 0 <= ready_timeout_sec <= MAX_READY_TIMEOUT_S:
            raise InvalidRequest(f"ready_timeout_sec must be 0-{MAX_READY_TIMEOUT_S}")
        return cls(
            env=check_env(env, "template env"),
            workdir=_text(workdir, "template workdir", MAX_PATH),
            user=_text(user, "template user", MAX_USER),
            start_cmd=_text(start_cmd, "start_cmd", MAX_CMD),
            ready_cmd=_text(ready_cmd, "ready_cmd", MAX_CMD),
            ready_timeout_sec=ready_timeout_sec,
        )

    @property
    def ready_timeout(self) -> float:
        return float(self.ready_timeout_sec or DEFAULT_READY_TIMEOUT_S)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, rec: Any) -> TemplateConfig:
        """The config a record kept (written by this agent: trusted, but tolerate old shapes)."""
        if not isinstance(rec, dict):
            return cls()
        known = {k: rec[k] for k in cls.__dataclass_fields__ if k in rec}
        return cls(**known)


@dataclass(frozen=True)
class Chain:
    """A host-local base and store layers, bottom first."""

    base: str
    layers: tuple[str, ...]

    @classmethod
    def checked(cls, base: str, layers: Sequence[str]) -> Chain:
        if base not in BASES:
            raise InvalidRequest(f"unknown chain base {base[:80]!r}: want one of {', '.join(BASES)}")
        if len(layers) > MAX_LAYERS:
            raise InvalidRequest(f"a chain has at most {MAX_LAYERS} layers")
        return cls(base, tuple(check_digest(d) for d in layers))

    def to_record(self) -> dict[str, Any]:
        return {"base": self.base, "layers": list(self.layers)}

    @classmethod
    def from_record(cls, rec: Any) -> Chain | None:
        if not isinstance(rec, dict):
            return None
        return cls(str(rec.get("base", "")), tuple(str(d) for d in rec.get("layers", ())))


async def start_template(guest: GuestClient, config: TemplateConfig) -> None:
    """A new sandbox's template at work: ``start_cmd`` in the background (tag ``start``), then
    ``ready_cmd`` every 100 ms until it exits 0. Both run as the template's user, in its
    workdir, with the sandbox's env (the template's is in it). Past the ready timeout the create
    fails (``FAILED_PRECONDITION``) with the last attempt's output (the last one that finished,
    if the deadline cut the final one short)."""
    user, cwd = config.user, config.workdir or None
    if config.start_cmd:
        session = await guest.exec_stream(
            "/bin/sh", ["-c", config.start_cmd], cwd=cwd, tag=START_TAG, background=True,
            stdin=False, user=user,
        )  # fmt: skip
        await session.close()  # background: it runs on
    if not config.ready_cmd:
        return
    deadline = time.monotonic() + config.ready_timeout
    last, finished = "(no attempt finished)", False
    while (remaining := deadline - time.monotonic()) > 0:
        attempt_s = max(0.1, min(remaining, READY_ATTEMPT_S))
        try:
            res = await guest.exec(
                "/bin/sh", ["-c", config.ready_cmd], cwd=cwd, user=user,
                timeout=attempt_s, max_output=READY_OUTPUT,
            )  # fmt: skip
            if res.exit_code == 0 and not res.timed_out:
                return
            if res.timed_out and attempt_s < READY_ATTEMPT_S and finished:
                # Cut short by the create's own deadline (a slow machine): the last attempt
                # that finished says why the template is not ready.
                continue
            out = (res.stdout + res.stderr)[-READY_TAIL:].decode(errors="replace").strip()
            last = (
                f"exit {res.exit_code}"
                + (" (timed out)" if res.timed_out else "")
                + (f": {out}" if out else "")
            )
            finished = finished or not res.timed_out
        except GuestError as e:
            if e.kind == "unavailable":
                raise  # the guest is gone: no point waiting on
            last = f"{e.kind}: {e.message}"[-READY_TAIL:]
        await asyncio.sleep(min(READY_INTERVAL_S, max(0.0, deadline - time.monotonic())))
    raise InvalidState(f"template not ready: {last}")
