"""Image import (docs/templates.md §4): an OCI image layout tarball or a ``docker save``
tarball becomes a template version on the ``scratch`` base.

The image is hostile: ``warren.layers.oci_image.read_image`` bounds and checks it (JSON sizes,
layer count, expansion, digests) and scans every layer as the agent would extract it. Each
layer goes into the store under its digest (hashed again on the way in); the image's ``Env``,
``WorkingDir``, ``User`` and ``Entrypoint`` + ``Cmd`` become the template's defaults. An image
without ``/usr/bin/python3`` on top of its layers is refused: the guest agent that is PID 1 in
every sandbox is a Python program.

A team runs at most ``WARREN_IMPORT_MAX_PER_TEAM`` imports at once on a replica, the upload
included (:func:`admitted`, 429 ``too_many_imports``): each holds a spool file of up to
``WARREN_IMPORT_MAX_IMAGE_MB`` and its unpacked layers. The upload itself is streamed to a
file by the route (``template_context.receive``), never held in memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from warren.config import Settings
from warren.cp.db.engine import transaction
from warren.cp.services import audit, build_spool, team_store, tenant_threads
from warren.cp.services import layers as layer_svc
from warren.cp.services import templates as tpl
from warren.cp.services.context import AuthContext, require_team
from warren.cp.services.team_counts import TeamCounts
from warren.cp.services.template_context import file_chunks
from warren.cp.services.template_spec import DEFAULT_READY_TIMEOUT_S, SpecConfig
from warren.cp.store import LayerStore
from warren.errors import InvalidRequest, PayloadTooLarge, ServiceUnavailable
from warren.layers import image_child
from warren.layers.oci_image import Image

log = logging.getLogger("warren.templates")

MiB = 1024 * 1024

# Imports in progress in this process (one CP replica), by team.
_running = TeamCounts("image imports in progress", "too_many_imports")


@asynccontextmanager
async def admitted(ctx: AuthContext, settings: Settings) -> AsyncIterator[None]:
    """Hold one of the team's import slots for the block (upload, read and store); 429
    ``too_many_imports`` when they are all taken. Counted per replica, like the team's request
    rate: an in-process count needs no database connection held for a long upload."""
    with _running.holding(require_team(ctx), settings.import_max_per_team):
        yield


async def check_target(engine: AsyncEngine, ctx: AuthContext, name: str, tags: list[str]) -> list[str]:
    """Before the upload is read: the name is valid and free for an import; the tags valid."""
    team_id = require_team(ctx)
    tpl.check_name(name)
    checked = tpl.check_tags(tags)
    async with transaction(engine) as conn:
        await tpl.check_name_free(conn, team_id, name)
        await tpl.check_room_for_version(conn, team_id, name)  # checked again when it is written
    return checked


def _config(image: Image) -> SpecConfig:
    argv = [*image.entrypoint, *image.cmd]
    return SpecConfig(
        env=dict(image.env),
        workdir=image.workdir,
        user=image.user,
        start_cmd=shlex.join(argv) if argv else "",
        ready_cmd="",
        ready_timeout_sec=DEFAULT_READY_TIMEOUT_S,
    )


async def _read(team_id: object, image_path: Path, workdir: Path, max_bytes: int) -> Image:
    """The image, read by a child process of its own (layers/image_child.py) in the team's turn;
    a cancelled import kills it (the caller's finally removes the workdir), and so does this
    process's death (the child is given its pid)."""
    argv = [sys.executable, "-m", "warren.layers.image_child", str(image_path), str(workdir), str(max_bytes)]
    return await tenant_threads.child_answer(
        team_id, [*argv, str(os.getpid())], max_output=image_child.MAX_OUTPUT, answer="image",
        parse=lambda doc: image_child.image_from_json(doc, workdir), refusal=_refusal,
        log=log, event="image_read_failed", failure="the image could not be read",
    )  # fmt: skip


def _refusal(error: object) -> InvalidRequest:
    """The child's refusal (the image's fault) as the 400 it was; ``ValueError`` if not text."""
    if not isinstance(error, str):
        raise ValueError("refusal")
    return InvalidRequest(f"the image cannot be imported: {error[:4096]}")


async def import_image(
    engine: AsyncEngine,
    store: LayerStore,
    settings: Settings,
    ctx: AuthContext,
    name: str,
    tags: list[str],
    image_path: Path,
) -> tpl.TemplateVersion:
    """Read the image at ``image_path`` (the caller's file), store its layers and write the
    template version (source ``import``)."""
    team_id = require_team(ctx)
    tags = await check_target(engine, ctx, name, tags)
    try:
        async with asyncio.timeout(settings.import_timeout_s):
            return await _import(engine, store, settings, ctx, team_id, name, tags, image_path)
    except TimeoutError:
        raise ServiceUnavailable(
            f"the image's import took longer than {settings.import_timeout_s} s "
            "(WARREN_IMPORT_TIMEOUT_S): its turn, read or store was too slow; try again",
            code="import_timeout",
        ) from None


async def _import(
    engine: AsyncEngine,
    store: LayerStore,
    settings: Settings,
    ctx: AuthContext,
    team_id: uuid.UUID,
    name: str,
    tags: list[str],
    image_path: Path,
) -> tpl.TemplateVersion:
    workdir = Path(await asyncio.to_thread(_mkdtemp, build_spool.spool_dir(settings)))
    try:
        image = await _read(team_id, image_path, workdir, settings.import_max_image_mb * MiB)
        if not image.has_python3:
            raise InvalidRequest(
                "the image has no /usr/bin/python3: every sandbox runs Warren's guest agent, a "
                "Python 3 program, so an imported image must include python3",
                code="python3_missing",
            )
        layer_cap = settings.build_max_layer_mb * MiB
        total = sum(meta.size for _path, meta in image.layers)
        if total > settings.build_max_template_mb * MiB:
            raise PayloadTooLarge(
                f"the image's layers total {total // MiB} MiB, past the limit of "
                f"{settings.build_max_template_mb} MiB",
                code="template_too_large",
            )
        await team_store.check(engine, settings, team_id, more=total)  # the team's part of the store
        for path, meta in image.layers:
            stored = await store.put(file_chunks(path), expect=meta.digest, max_bytes=layer_cap)
            await layer_svc.record_layer(engine, stored, store=store)
            await team_store.note(engine, team_id, stored)
            await asyncio.to_thread(path.unlink, missing_ok=True)  # disk: one copy at a time
        async with transaction(engine) as conn:
            row = await tpl.insert_version(
                conn,
                team_id=team_id,
                name=name,
                base="scratch",
                layers=[meta.digest for _path, meta in image.layers],
                config=_config(image),
                tags=tags,
                source="import",
                size_bytes=total,
            )
            await audit.record(
                conn, ctx, team_id=team_id, action="import", resource_type="template", resource_id=name,
                metadata={"version": row["version"], "tags": tags, "size_bytes": total},
            )  # fmt: skip
        return tpl.version_model(row)
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, True)


def _mkdtemp(spool: Path) -> str:
    spool.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(dir=spool, prefix=build_spool.IMPORT_PREFIX)  # swept by that name
