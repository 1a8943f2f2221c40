"""Snapshots of a sandbox's filesystem: ``ExportSnapshot`` (a store layer, docs/templates.md §2)
and the legacy host-local copy (``CreateSnapshot`` / ``DeleteSnapshot``, until the control
plane uses only the store).

Either way the sandbox must be paused: a running one is paused first and stays paused
(docs/spec.md §6.2; the control plane pauses it before calling anyway), and the files are read
under the sandbox's lock, so a resume or a destroy waits for them.

``ExportSnapshot``: the snapshot's template is the sandbox's own chain plus this layer, so only
the writable layer travels. The tar is written (under the lock) to a temporary file, then
streamed in 1 MiB chunks while it is installed here, so that a sandbox from the snapshot on
this host needs no fetch; its meta ends the stream. Past the host's layer limit
(``WARREN_AGENT_MAX_LAYER_MB``) the call ends ``RESOURCE_EXHAUSTED``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from warren import clock
from warren.agent.chain import TemplateConfig
from warren.agent.record import HostSandbox
from warren.agent.sandbox_fs import SandboxFs
from warren.agent.templates import TemplateRef
from warren.errors import InternalError, InvalidRequest, InvalidState, NotFound, WarrenError
from warren.layers import LayerMeta

if TYPE_CHECKING:
    from warren.agent.manager import SandboxManager

log = logging.getLogger("warren.agent.snapshots")


@contextlib.asynccontextmanager
async def _paused(m: SandboxManager, sb_id: str) -> AsyncIterator[HostSandbox]:
    """The sandbox, paused (a running one is paused first), under its lock."""
    sb = m.sandbox(sb_id)
    if sb.status == "running":
        with contextlib.suppress(InvalidState):
            await m.pause(sb_id, reason="snapshot")
    async with sb.lock:
        try:
            current: HostSandbox | None = m.sandbox(sb_id)
        except NotFound:
            current = None
        if current is not sb or sb.status != "paused":
            raise InvalidState(f"sandbox {sb_id} is not paused")
        yield sb


async def export_snapshot(m: SandboxManager, sb_id: str) -> AsyncIterator[bytes | LayerMeta]:
    """The layer's chunks, then its meta (the last item)."""
    async with _paused(m, sb_id) as sb:
        if sb.chain is None and not TemplateRef.parse(sb.team_id, sb.template_id).is_minimal:
            # Its lower layers are a host-local snapshot's, in no store: the layer alone is
            # not the sandbox's filesystem.
            raise InvalidState(
                f"sandbox {sb_id} runs on a host-local snapshot: only CreateSnapshot copies it"
            )
        team = sb.tenant  # its export and install take its owner's turns, not its template's team's
        upper = SandboxFs(m.sandboxes_dir / sb_id).upper
        tar, meta = await m.layers.export(upper, 0, sb.uid_base, tenant=team)
    try:
        async with contextlib.aclosing(m.layers.stream_and_install(tar, meta, team=team)) as chunks:
            async for chunk in chunks:
                yield chunk
    finally:
        tar.unlink(missing_ok=True)
    log.info("event=snapshot_exported sandbox_id=%s digest=%s bytes=%d", sb_id, meta.digest, meta.size)
    yield meta


async def create_legacy(m: SandboxManager, sb_id: str, team_id: str, template_id: str) -> tuple[int, str]:
    """A host-local snapshot (templates.TemplateStore); its size in bytes and its kind:
    ``memory`` for a gVisor sandbox paused to disk (its checkpoint image is kept with the
    layers, and a sandbox made from it is restored from it: gvisor_ops.py), else ``filesystem``."""
    ref = TemplateRef.parse(team_id, template_id)
    if ref.is_minimal:
        raise InvalidRequest("template_id is required (the all-zero id is the built-in minimal)")
    async with _paused(m, sb_id) as sb:
        config = {
            "vcpus": sb.vcpus,
            "memory_mb": sb.memory_mb,
            "disk_size_mb": sb.disk_size_mb,
            "parent_template_id": sb.template_id,
            "source_sandbox_id": sb.id,
            "created_at": int(clock.time_s()),
        }
        rt = m.runtimes.gvisor(sb_id)
        image = rt.image_dir(sb_id) if rt is not None and sb.paused_state == "disk" else None
        if image is not None:
            config["guest_secret"] = sb.guest_secret  # what the forks' guests wake up with
        config["template_config"] = snapshot_defaults(sb.template_config, memory=image is not None)
        try:
            size = await m.templates.create_snapshot(
                ref,
                upper=SandboxFs(m.sandboxes_dir / sb_id).upper,
                snapshot_layers=[Path(p) for p in sb.snapshot_layers],
                config=config,
                image=image,
                uid_base=sb.uid_base,
            )
        except WarrenError:
            raise
        except Exception as e:
            raise InternalError(f"snapshot {sb_id}: {e}") from e
    kind = "filesystem" if image is None else "memory"
    log.info(
        "event=snapshot_created sandbox_id=%s template_id=%s bytes=%d kind=%s",
        sb_id, ref.template_id, size, kind,
    )  # fmt: skip
    return size, kind


async def delete_legacy(m: SandboxManager, team_id: str, template_id: str) -> None:
    ref = TemplateRef.parse(team_id, template_id)
    try:
        existed = await m.templates.delete_snapshot(ref)
    except WarrenError:
        raise
    except Exception as e:
        raise InternalError(f"delete snapshot {ref.template_id}: {e}") from e
    log.info("event=snapshot_deleted template_id=%s existed=%s", ref.template_id, existed)


def snapshot_defaults(template_config: dict[str, Any], *, memory: bool) -> dict[str, Any]:
    """What a sandbox from this snapshot takes of its source's template (a host-local snapshot
    has no chain to carry it): exec's default user and directory, and the env. A memory
    snapshot's start command is running already in its image: not started again."""
    kept = TemplateConfig.from_record(template_config)
    if memory:
        kept = dataclasses.replace(kept, start_cmd="", ready_cmd="", ready_timeout_sec=0)
    return kept.to_record()
