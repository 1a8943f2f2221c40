"""Template versions (docs/templates.md §1): names, tags, the listing, one template's versions,
FROM resolution for builds, writing a new version, and delete.

A ``templates`` row is one version of a named template. ``name`` means its newest version,
``name:tag`` the version carrying that tag; every version carries ``v<version>``, and a tag a
new version claims moves to it. Platform templates (team = the zero UUID) are visible to every
team and their names are reserved. Another team's template is a 404 like an unknown one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warren import ids
from warren.cp.db.engine import autocommit, transaction
from warren.cp.db.locks import key_of
from warren.cp.db.tables import teams, templates
from warren.cp.services import Timestamp, audit
from warren.cp.services.context import AuthContext, require_team
from warren.cp.services.template_spec import DEFAULT_READY_TIMEOUT_S, TEMPLATE_NAME_RE, SpecConfig
from warren.errors import Conflict, Forbidden, InvalidRequest, NotFound, TooManyRequests

PLATFORM = ids.PLATFORM_TEAM_ID
# Names and tags: template_spec.TEMPLATE_NAME_RE (as snapshots have them); `v<N>` is the
# version's own tag and cannot be claimed.
VERSION_TAG_RE = re.compile(r"^v([1-9][0-9]{0,8})$")
MAX_TAGS = 16
# Serialises a team's version writes (next version number, tag moves) and build admissions
# across replicas: pg_advisory_xact_lock(TEMPLATE_NS, key_of(team)).
TEMPLATE_NS = 0x575454  # "WTT"
# Versions a team may hold (builds and imports; snapshots have their own quota). A build that
# runs no step needs no host and takes ~0.1 s, so without a bound one key wrote versions, and
# every GET of the team's templates read them all, without end.
MAX_VERSIONS_PER_TEAM = 1000
MAX_VERSIONS_PER_TEMPLATE = 100


def check_name(name: str) -> str:
    if not isinstance(name, str) or not TEMPLATE_NAME_RE.match(name):
        raise InvalidRequest(
            "invalid template name: 1-64 characters, letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_tags(tags: Sequence[str]) -> list[str]:
    out: list[str] = []
    if len(tags) > MAX_TAGS:
        raise InvalidRequest(f"at most {MAX_TAGS} tags")
    for tag in tags:
        if not isinstance(tag, str) or not TEMPLATE_NAME_RE.match(tag):
            raise InvalidRequest(f"invalid tag {str(tag)[:80]!r}: letters, digits, '.', '_' or '-'")
        if VERSION_TAG_RE.match(tag):
            raise InvalidRequest(f"tag {tag!r} is reserved: every version is tagged v<version>")
        if tag not in out:
            out.append(tag)
    return out


# ------------------------------------------------------------------------------------ models


class TemplateConfig(BaseModel):
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str = ""
    user: str = ""
    start_cmd: str = ""
    ready_cmd: str = ""
    ready_timeout_sec: int = DEFAULT_READY_TIMEOUT_S


class TemplateVersion(BaseModel):
    name: str
    version: int
    tags: list[str] = Field(description="v<version> and the tags this version carries")
    type: Literal["base", "snapshot"]
    source: str = Field(description="base | build | import | snapshot")
    base: str = Field(description="the host-local base under the layers: minimal | scratch")
    layers: list[str] = Field(description="sha256 digests, bottom first")
    size_bytes: int
    config: TemplateConfig
    build_id: str | None = None
    platform: bool
    created_at: Timestamp


class TemplateSummary(BaseModel):
    """A template as the listing shows it: its newest version, with every tag it has."""

    name: str
    platform: bool
    type: Literal["base", "snapshot"]
    source: str
    version: int = Field(description="the newest version")
    versions: int = Field(description="how many versions exist")
    tags: dict[str, int] = Field(description="every tag (v<N> included) → the version carrying it")
    size_bytes: int = Field(description="the newest version's size")
    created_at: Timestamp = Field(description="when the newest version was made")


class TemplateDetail(BaseModel):
    name: str
    platform: bool
    versions: list[TemplateVersion] = Field(description="newest first")


def build_id_of(value: uuid.UUID | None) -> str | None:
    return ids.format_id(ids.Kind.BUILD, value) if value is not None else None


def config_of(row: Mapping[Any, Any]) -> SpecConfig:
    """A row's ``config`` (defaults filled in) as the spec's: both classes have the same fields,
    so neither direction lists them (:func:`config_json` is the other)."""
    return SpecConfig(**TemplateConfig.model_validate(row["config"] or {}).model_dump())


def _source(row: Mapping[Any, Any]) -> str:
    if row["source"]:
        return str(row["source"])
    return "snapshot" if row["type"] == "snapshot" else "base"


def _tags(row: Mapping[Any, Any]) -> list[str]:
    own = f"v{row['version']}"
    return [own, *[t for t in row["tags"] if t != own]]


def version_model(row: Mapping[Any, Any]) -> TemplateVersion:
    return TemplateVersion(
        name=row["name"],
        version=row["version"],
        tags=_tags(row),
        type=row["type"],
        source=_source(row),
        base=row["base"],
        layers=list(row["layers"]),
        size_bytes=row["size_bytes"],
        config=TemplateConfig.model_validate(row["config"] or {}),
        build_id=build_id_of(row["build_id"]),
        platform=row["team_id"] == PLATFORM,
        created_at=row["created_at"],
    )


# ------------------------------------------------------------------------------------- reads


def _visible(team_id: uuid.UUID) -> sa.ColumnElement[bool]:
    return templates.c.team_id.in_([team_id, PLATFORM])


async def list_templates(engine: AsyncEngine, ctx: AuthContext) -> list[TemplateSummary]:
    """The team's templates and the platform's, newest version each, by name."""
    team_id = require_team(ctx)
    async with autocommit(engine) as conn:
        # The summary's columns only: a version's config (env, commands) can be ~0.5 MiB.
        c = templates.c
        summary = (c.team_id, c.name, c.version, c.type, c.source, c.tags, c.size_bytes, c.created_at)
        rows = (
            await conn.execute(
                sa.select(*summary)
                .where(_visible(team_id))
                .order_by(templates.c.team_id, templates.c.name, templates.c.version.desc())
            )
        ).mappings()
        grouped: dict[tuple[uuid.UUID, str], list[RowMapping]] = {}
        for row in rows:
            grouped.setdefault((row["team_id"], row["name"]), []).append(row)
    out = []
    for (_team, name), versions in grouped.items():
        newest = versions[0]
        tags = {t: v["version"] for v in reversed(versions) for t in _tags(v)}
        out.append(
            TemplateSummary(
                name=name,
                platform=newest["team_id"] == PLATFORM,
                type=newest["type"],
                source=_source(newest),
                version=newest["version"],
                versions=len(versions),
                tags=tags,
                size_bytes=newest["size_bytes"],
                created_at=newest["created_at"],
            )
        )
    out.sort(key=lambda s: (not s.platform, s.name))
    return out


async def _versions(conn: AsyncConnection, team_id: uuid.UUID, name: str) -> list[RowMapping]:
    return list(
        (
            await conn.execute(
                sa.select(templates)
                .where(_visible(team_id), templates.c.name == name)
                .order_by(templates.c.version.desc())
            )
        ).mappings()
    )


async def get_template(engine: AsyncEngine, ctx: AuthContext, name: str) -> TemplateDetail:
    team_id = require_team(ctx)
    async with autocommit(engine) as conn:
        rows = await _versions(conn, team_id, check_name(name))
    if not rows:
        raise NotFound(f'template "{name}" not found')
    return TemplateDetail(
        name=name, platform=rows[0]["team_id"] == PLATFORM, versions=[version_model(r) for r in rows]
    )


async def resolve(conn: AsyncConnection, team_id: uuid.UUID, name: str, tag: str | None) -> RowMapping:
    """The version ``name[:tag]`` names for ``team_id`` (its own or a platform one); 404."""
    q = sa.select(templates).where(_visible(team_id), templates.c.name == name)
    if tag is not None:
        m = VERSION_TAG_RE.match(tag)
        q = q.where(templates.c.version == int(m.group(1)) if m else templates.c.tags.any(tag))
    row = (await conn.execute(q.order_by(templates.c.version.desc()).limit(1))).mappings().first()
    if row is None:
        shown = name if tag is None else f"{name}:{tag}"
        raise NotFound(f'template "{shown}" not found')
    return row


# ------------------------------------------------------------------------------------ writes


async def lock_team(conn: AsyncConnection, team_id: uuid.UUID) -> None:
    """Serialise the team's template writes until the transaction ends."""
    await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(TEMPLATE_NS, key_of(team_id))))


async def lock_live_team(conn: AsyncConnection, team_id: uuid.UUID) -> bool:
    """Whether the team is live (not deleted), its row held (``FOR SHARE``) until the caller's
    transaction ends. A team delete locks that row (``FOR UPDATE``) to cancel the team's builds
    and delete its templates: a write checked here commits before the delete (which then
    removes it) or sees the team deleted. The platform's team has no row: always live."""
    if team_id == PLATFORM:
        return True
    deleted = (
        await conn.execute(
            sa.select(teams.c.deleted_at).where(teams.c.id == team_id).with_for_update(read=True)
        )
    ).first()
    return deleted is not None and deleted.deleted_at is None


async def check_name_free(conn: AsyncConnection, team_id: uuid.UUID, name: str) -> None:
    """A build or an import may add versions to the team's own build/import templates only:
    a platform template's name and a snapshot's are refused (409)."""
    rows = (
        await conn.execute(
            sa.select(templates.c.team_id, templates.c.type)
            .where(_visible(team_id), templates.c.name == name)
            .limit(1)
        )
    ).first()
    if rows is None:
        return
    if rows.team_id == PLATFORM and team_id != PLATFORM:
        raise Conflict(f'template name "{name}" is reserved by a platform template', code="name_reserved")
    if rows.type == "snapshot":
        raise Conflict(f'"{name}" is a snapshot; choose another template name', code="name_taken")


async def check_room_for_version(conn: AsyncConnection, team_id: uuid.UUID, name: str) -> None:
    """429 ``quota_exceeded`` when the team (or this template) holds its most versions; the
    caller holds ``lock_team``, so two writers at the bound cannot both pass."""
    if team_id == PLATFORM:
        return  # the operator's own templates
    own = (templates.c.team_id == team_id) & (templates.c.type == "base")
    held, named = (
        await conn.execute(
            sa.select(sa.func.count(), sa.func.count().filter(templates.c.name == name)).where(own)
        )
    ).one()
    if held >= MAX_VERSIONS_PER_TEAM or named >= MAX_VERSIONS_PER_TEMPLATE:
        raise TooManyRequests(
            f'the team holds {held} template versions, {named} of "{name}" (at most '
            f"{MAX_VERSIONS_PER_TEAM}, {MAX_VERSIONS_PER_TEMPLATE} of one template); "
            "delete old versions first",
            code="quota_exceeded",
        )


async def insert_version(
    conn: AsyncConnection,
    *,
    team_id: uuid.UUID,
    name: str,
    base: str,
    layers: list[str],
    config: SpecConfig,
    tags: list[str],
    source: str,
    size_bytes: int,
    build_id: uuid.UUID | None = None,
    vcpus: int = 1,
    memory_mb: int = 512,
) -> RowMapping:
    """Write the next version of ``name`` in the caller's transaction (the team's lock taken
    here): tags it claims are taken off older versions. A deleted team's: 404 (a build or an
    import that ends after its team's delete writes nothing)."""
    await lock_team(conn, team_id)
    if not await lock_live_team(conn, team_id):
        raise NotFound("team not found")
    await check_name_free(conn, team_id, name)
    await check_room_for_version(conn, team_id, name)
    latest = (
        await conn.execute(
            sa.select(sa.func.max(templates.c.version)).where(
                templates.c.team_id == team_id, templates.c.name == name
            )
        )
    ).scalar()
    version = (latest or 0) + 1
    for tag in tags:
        await conn.execute(
            templates.update()
            .where(templates.c.team_id == team_id, templates.c.name == name, templates.c.tags.any(tag))
            .values(tags=sa.func.array_remove(templates.c.tags, tag))
        )
    row = (
        (
            await conn.execute(
                templates.insert()
                .values(
                    id=ids.new_uuid(),
                    team_id=team_id,
                    name=name,
                    type="base",
                    version=version,
                    base=base,
                    layers=layers,
                    config=config_json(config),
                    tags=[f"v{version}", *tags],
                    source=source,
                    build_id=build_id,
                    size_bytes=size_bytes,
                    vcpus=vcpus,
                    memory_mb=memory_mb,
                )
                .returning(templates)
            )
        )
        .mappings()
        .one()
    )
    return row


def config_json(config: SpecConfig) -> dict[str, Any]:
    return TemplateConfig(**config.as_json()).model_dump()  # type: ignore[arg-type]


async def delete_template(engine: AsyncEngine, ctx: AuthContext, name: str, version: int | None) -> None:
    """Delete every version of the team's template ``name``, or one. Platform templates: 403;
    snapshots: 409, they go through DELETE /v1/snapshots/{name} (services/snapshots.py), whose
    rules this would skip: the delete is audited there, and a snapshot taken before the
    template store has files on its host that go with it. A store snapshot's layers, like a
    build's, go to the GC once nothing names them."""
    team_id = require_team(ctx)
    check_name(name)
    async with transaction(engine) as conn:
        await lock_team(conn, team_id)
        rows = await _versions(conn, team_id, name)
        if version is not None:
            rows = [r for r in rows if r["version"] == version]
        if not rows:
            shown = name if version is None else f"{name}:v{version}"
            raise NotFound(f'template "{shown}" not found')
        if rows[0]["team_id"] == PLATFORM:
            raise Forbidden(f'"{name}" is a platform template')
        if any(r["type"] == "snapshot" for r in rows):
            raise Conflict(
                f'"{name}" is a snapshot: delete it with DELETE /v1/snapshots/{name} (a snapshot '
                "delete is audited, and removes the files of a snapshot taken before the template "
                "store from its host)"
            )
        await conn.execute(templates.delete().where(templates.c.id.in_([r["id"] for r in rows])))
        await audit.record(
            conn, ctx, team_id=team_id, action="delete", resource_type="template", resource_id=name,
            metadata={"versions": sorted(r["version"] for r in rows)},
        )  # fmt: skip
