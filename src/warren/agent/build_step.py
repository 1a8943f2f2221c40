"""``RunBuildStep``: one RUN step of a template build, in a transient sandbox (docs/templates.md).

The sandbox (id ``step-…``) is made on the request's chain like any other, through the same
admission, with internet access and the request's sizes and egress ranges. It is not
registered: ``ListSandboxes`` never shows it, ``DestroySandbox`` does not know it, the TTL
reaper and ``PauseAll`` leave it alone, and an agent restart removes it (the call that made it
is gone). The command runs as ``/bin/sh -c cmd`` with the chain config's user, workdir and env;
its output streams as it comes, in chunks of at most 64 KiB. On exit 0 the container is
stopped (nothing may write on while the layer is read), the writable layer becomes a layer tar,
streamed back in 1 MiB chunks and installed here, and its meta ends the stream. Whatever
happens (failure, timeout, the caller going away), the sandbox and the temporary tar go.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from warren import ids
from warren.agent.chain import MAX_CMD, Chain, TemplateConfig
from warren.agent.create import check_request
from warren.agent.record import STEP_ID_PREFIX, HostSandbox
from warren.agent.sandbox_fs import SandboxFs
from warren.agent.step_sandboxes import out_of_service
from warren.errors import InvalidRequest, WarrenError
from warren.layers import LayerMeta

if TYPE_CHECKING:
    from warren.agent.manager import SandboxManager

log = logging.getLogger("warren.agent.build")

OUTPUT_CHUNK = 64 << 10
MAX_STEP_TIMEOUT_S = 24 * 3600
DEFAULT_STEP_TIMEOUT_S = 1800
GUARD_S = 5.0


class StepTimeout(WarrenError):
    """The step ran past its time limit (gRPC ``DEADLINE_EXCEEDED``)."""

    code = "timeout"


@dataclass(frozen=True)
class BuildStep:
    build_id: str
    chain: Chain
    config: TemplateConfig
    cmd: str
    timeout_sec: int
    max_layer_bytes: int
    vcpus: int
    memory_mb: int
    disk_size_mb: int
    egress_allow: list[str]
    team: str = ""  # whose turn its layer's install takes (layer_slots)
    owner_account: str = ""  # the account that owns that team: given, the turns are its

    @property
    def tenant(self) -> str:
        return self.owner_account or self.team


@dataclass(frozen=True)
class StepEvent:
    """One event of the step's stream: exactly one field is set."""

    output: bytes | None = None
    exit_code: int | None = None
    layer_chunk: bytes | None = None
    layer: LayerMeta | None = None


def check_step(step: BuildStep) -> BuildStep:
    if not step.cmd or len(step.cmd) > MAX_CMD or "\0" in step.cmd:
        raise InvalidRequest(f"cmd is required (at most {MAX_CMD} characters)")
    if not 0 <= step.timeout_sec <= MAX_STEP_TIMEOUT_S:
        raise InvalidRequest(f"timeout_sec must be 0-{MAX_STEP_TIMEOUT_S}")
    if step.max_layer_bytes < 0:
        raise InvalidRequest("max_layer_bytes must be >= 0")
    return step


async def run_build_step(m: SandboxManager, step: BuildStep) -> AsyncIterator[StepEvent]:
    """The step's events; see the module docstring. Errors: ``FAILED_PRECONDITION`` "missing
    layers: …", ``DEADLINE_EXCEEDED`` (:class:`StepTimeout`), ``RESOURCE_EXHAUSTED`` (the layer
    is over its limit), ``INVALID_ARGUMENT``."""
    check_step(step)
    sb_id = STEP_ID_PREFIX + ids.base36(ids.new_uuid())
    req = check_request(
        sandbox_id="", team_id="", template_id="", template="", vcpus=step.vcpus,
        memory_mb=step.memory_mb, disk_size_mb=step.disk_size_mb, timeout_sec=0, internet=True,
        env=None, egress_allow=step.egress_allow, chain=step.chain,
        # The template's start and ready commands are for its sandboxes, not for its build.
        config=dataclasses.replace(step.config, start_cmd="", ready_cmd=""),
        owner_team=step.team, owner_account=step.owner_account,  # its create's turn (admission.py)
    )  # fmt: skip
    req = dataclasses.replace(req, sandbox_id=sb_id)
    timeout = step.timeout_sec or DEFAULT_STEP_TIMEOUT_S
    started = time.monotonic()
    deadline = started + timeout
    log.info("event=build_step_start build_id=%s sandbox_id=%s", step.build_id[:64], sb_id)
    sb: HostSandbox | None = None
    with m.layers.hold(step.chain):
        try:
            # No `asyncio.timeout` around a `yield`: its cancel would land in the caller's code.
            try:
                async with asyncio.timeout(timeout):
                    sb = await m.build_transient(req)
            except TimeoutError:
                raise StepTimeout(f"the build step ran past its {timeout} s limit") from None
            exit_code = None
            async for ev in _run(m, sb, step, deadline):
                exit_code = ev.exit_code
                yield ev
            if exit_code != 0:
                return
            async for ev in _export(m, sb, step):
                yield ev
        except Exception:
            if sb is not None and sb.id not in m.steps:  # Terminate ended it (step_sandboxes.py)
                raise out_of_service() from None
            raise
        finally:
            if sb is not None:
                await m.steps.end(sb)
            log.info(
                "event=build_step_done build_id=%s sandbox_id=%s seconds=%.1f",
                step.build_id[:64], sb_id, time.monotonic() - started,
            )  # fmt: skip


async def _run(
    m: SandboxManager, sb: HostSandbox, step: BuildStep, deadline: float
) -> AsyncIterator[StepEvent]:
    """The command's output, then its exit code (the last event). The guest kills the command
    at the deadline; the agent's own guard (a little later) covers a guest that does not."""
    guest = m.guest_of(sb)
    cfg = step.config
    session = await guest.exec_stream(
        "/bin/sh", ["-c", step.cmd], cwd=cfg.workdir or None, stdin=False, user=cfg.user,
        timeout=max(0.1, deadline - time.monotonic()),
    )  # fmt: skip
    try:
        while True:
            limit = step.timeout_sec or DEFAULT_STEP_TIMEOUT_S
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic()) + GUARD_S):
                    ev = await anext(session, None)
            except TimeoutError:
                raise StepTimeout(f"the build step ran past its {limit} s limit") from None
            if ev is None:
                raise WarrenError(f"build step {sb.id}: the command's stream ended without an exit")
            if ev.kind == "exit" and ev.timed_out:
                raise StepTimeout(f"the build step ran past its {limit} s limit")
            if ev.kind in ("stdout", "stderr"):
                for i in range(0, len(ev.data), OUTPUT_CHUNK):
                    yield StepEvent(output=ev.data[i : i + OUTPUT_CHUNK])
            elif ev.kind == "exit":
                yield StepEvent(exit_code=ev.exit_code)
                return
            elif ev.kind == "error":
                raise WarrenError(f"build step {sb.id}: the guest connection broke: {ev.error}")
    finally:
        await session.close()


async def _export(m: SandboxManager, sb: HostSandbox, step: BuildStep) -> AsyncIterator[StepEvent]:
    """The writable layer: the container stopped first (a daemon the step started must not
    write on while the layer is read), then the tar streamed while it is installed here."""
    await m.runtime.destroy(sb.id)
    upper = SandboxFs(m.sandboxes_dir / sb.id).upper
    tar, meta = await m.layers.export(upper, step.max_layer_bytes, sb.uid_base, tenant=step.tenant or sb.id)
    try:
        # Closed at once when the CP stops reading (a cancelled build): the layer it would not
        # record is removed (layer_cache.stream_and_install).
        async with contextlib.aclosing(m.layers.stream_and_install(tar, meta, team=step.tenant)) as chunks:
            async for chunk in chunks:
                yield StepEvent(layer_chunk=chunk)
    finally:
        tar.unlink(missing_ok=True)
    yield StepEvent(layer=meta)
