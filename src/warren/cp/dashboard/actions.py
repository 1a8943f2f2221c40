"""The dashboard's state-changing endpoints: small JSON handlers behind the pages' dialogs and
buttons, each a thin call into ``warren.cp.services`` (no rule is re-implemented here).

Every POST depends on :func:`web.action_context`, which refuses the request unless it passes
both CSRF checks (Origin/Referer is the CP, and the session's synchronizer token is in
``X-CSRF-Token``) and the session's user is still valid in the database. Errors come back in the
API's envelope ``{"error": {"code", "message"}}`` through the app's one error mapper; the pages
show ``error.message`` or "Something went wrong".
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from warren import ids
from warren.cp.dashboard import session as sessions
from warren.cp.dashboard.web import Action, action_context, reader_context
from warren.cp.services import api_keys as keys_svc
from warren.cp.services import auth as auth_svc
from warren.cp.services import hosts as hosts_svc
from warren.cp.services import limits as limits_svc
from warren.cp.services import preview as preview_svc
from warren.cp.services import sandbox_power, team_deletion
from warren.cp.services import sandboxes as sandboxes_svc
from warren.cp.services import snapshots as snapshots_svc
from warren.cp.services import team_invitations as invitations_svc
from warren.cp.services import teams as teams_svc
from warren.cp.services import users as users_svc
from warren.cp.services.context import require_team

router = APIRouter(prefix="/dashboard/actions", include_in_schema=False)

Act = Annotated[Action, Depends(action_context)]
Reader = Annotated[Action, Depends(reader_context)]

NO_TEAMS_LEFT = "No teams remaining. Use the sidebar to create a new team."


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


# The dashboard's own bodies, for actions the REST API has no body for (or a different one).
# The others are the resource's request models, shared with the API (``services/teams.py``,
# ``services/hosts.py``).


class TeamIdBody(_Body):
    team_id: str = ""


class NameBody(_Body):
    name: str = Field(default="", max_length=1024)


class LaunchBody(_Body):
    template: str = "minimal"
    vcpus: int = Field(default=1, ge=1, le=8)
    memory_mb: int = Field(default=512, ge=128, le=8192, multiple_of=128)
    timeout_sec: int = Field(default=0, ge=0)
    runtime: Literal["", "runc", "crun", "gvisor"] = ""  # "": the platform's default


class ForceBody(_Body):
    force: bool = False


class TeamQuotasBody(_Body):
    team_id: str = ""
    # An empty field (null) leaves that quota as it is. JSON integers only (the dialog sends
    # Number()s): a lax int would read true as 1, as the REST route's strict body refuses.
    sandboxes: StrictInt | None = None
    vcpus: StrictInt | None = None
    memory_mb: StrictInt | None = None
    snapshots: StrictInt | None = None
    snapshot_mb: StrictInt | None = None
    store_mb: StrictInt | None = None


def _use_token(act: Action, response: Response, token: str) -> None:
    """Keep the browser session (and its CSRF token) but act with a new JWT from now on."""
    sessions.write(response, act.request, act.settings.jwt_secret, sessions.with_token(act.session, token))


async def _switch(act: Action, response: Response, team_id: str) -> auth_svc.AuthResult:
    result = await auth_svc.switch_team(act.engine, act.settings.jwt_secret, act.ctx, team_id)
    _use_token(act, response, result.token)
    return result


# ------------------------------------------------------------------------------------------ teams


@router.post("/switch-team")
async def switch_team(act: Act, body: teams_svc.SwitchTeamRequest, response: Response) -> dict[str, Any]:
    result = await _switch(act, response, body.team_id or "")
    return {"team_id": result.team_id}


@router.post("/teams")
async def create_team(act: Act, body: teams_svc.TeamNameRequest, response: Response) -> dict[str, Any]:
    """Create a team, then switch to it (docs/spec.md §8.2)."""
    team = await teams_svc.create_team(act.engine, act.settings, act.ctx, body.name)
    await _switch(act, response, team.id)
    return {"team_id": team.id, "name": team.name}


@router.post("/team/rename")
async def rename_team(act: Act, body: teams_svc.TeamNameRequest) -> dict[str, Any]:
    await teams_svc.rename_team(act.engine, act.ctx, require_team(act.ctx), body.name)
    return {}


@router.post("/team/members")
async def add_member(act: Act, body: teams_svc.AddMemberRequest) -> dict[str, Any]:
    """Invite by email: the user joins once they accept (the team page lists it meanwhile)."""
    team_id = require_team(act.ctx)
    sent = await invitations_svc.invite(act.engine, act.ctx, team_id, body.email or "", body.role)
    return sent.model_dump(mode="json")


@router.post("/team/invitations/{invitation_id}/revoke")
async def revoke_invitation(act: Act, invitation_id: str) -> dict[str, Any]:
    inv = invitations_svc.parse_invitation_id(invitation_id)
    await invitations_svc.revoke(act.engine, act.ctx, require_team(act.ctx), inv)
    return {}


@router.post("/invitations/{invitation_id}/accept")
async def accept_invitation(act: Act, invitation_id: str, response: Response) -> dict[str, Any]:
    """Join, then act in the team joined (as creating one does). From the teamless landing page
    the browser goes on to the team's sandboxes; the team page just reloads."""
    inv = invitations_svc.parse_invitation_id(invitation_id)
    joined = await auth_svc.accept_invitation(act.engine, act.settings.jwt_secret, act.ctx, inv)
    _use_token(act, response, joined.token)
    answer: dict[str, Any] = {"team_id": joined.id, "name": joined.name}
    if act.ctx.team_id is None:
        answer["redirect"] = "/dashboard/sandboxes"
    return answer


@router.post("/invitations/{invitation_id}/decline")
async def decline_invitation(act: Act, invitation_id: str) -> dict[str, Any]:
    await invitations_svc.decline(act.engine, act.ctx, invitations_svc.parse_invitation_id(invitation_id))
    return {}


@router.post("/team/members/{user_id}/role")
async def set_role(act: Act, user_id: str, body: teams_svc.RoleRequest) -> dict[str, Any]:
    target = teams_svc.parse_user_id(user_id)
    await teams_svc.set_member_role(act.engine, act.ctx, require_team(act.ctx), target, body.role or "")
    return {}


class RemoveMemberBody(_Body):
    revoke_keys: bool = False  # the removal dialog's "Also revoke the N API keys they created"


@router.post("/team/members/{user_id}/remove")
async def remove_member(act: Act, user_id: str, body: RemoveMemberBody | None = None) -> dict[str, Any]:
    target = teams_svc.parse_user_id(user_id)
    revoke = body.revoke_keys if body else False
    done = await teams_svc.remove_member(
        act.engine, act.ctx, require_team(act.ctx), target, revoke_keys=revoke
    )
    return done.model_dump(mode="json")


async def _after_departure(act: Act, response: Response, what: str) -> dict[str, Any]:
    """SEED: after delete/leave, switch to the next team — or, with none left, say so. Never
    sign the user out."""
    remaining = await teams_svc.list_teams(act.engine, act.ctx)
    if remaining:
        nxt = remaining[0]
        await _switch(act, response, nxt.id)
        return {"next_team": nxt.name, "message": f"{what}. Switched to {nxt.name}."}
    return {"next_team": None, "message": NO_TEAMS_LEFT}


@router.post("/team/delete")
async def delete_team(act: Act, response: Response) -> dict[str, Any]:
    team_id, state = require_team(act.ctx), act.state
    await team_deletion.delete_team(act.engine, state.pool, act.ctx, team_id, runner=state.builds)
    return await _after_departure(act, response, "Team deleted")


@router.post("/team/leave")
async def leave_team(act: Act, response: Response) -> dict[str, Any]:
    await teams_svc.leave_team(act.engine, act.ctx, require_team(act.ctx))
    return await _after_departure(act, response, "You left the team")


@router.get("/users/search")
async def search_users(act: Reader, email: str = "") -> list[dict[str, Any]]:
    """The add-member typeahead (3+ chars, debounced in the page): for a team's page, so a
    session with no team gets 403 ``no_team``, as the API's search does."""
    require_team(act.ctx)
    found = await users_svc.search_by_email_prefix(act.engine, act.ctx, email)
    return [m.model_dump(mode="json") for m in found]


# -------------------------------------------------------------------------------------- sandboxes


@router.post("/sandboxes")
async def launch(act: Act, body: LaunchBody) -> dict[str, Any]:
    params = sandboxes_svc.CreateParams(
        template=body.template or "minimal",
        vcpus=body.vcpus,
        memory_mb=body.memory_mb,
        timeout_sec=body.timeout_sec,
        runtime=body.runtime or None,
    )
    created = await sandboxes_svc.create(
        act.engine, act.state.pool, act.state.scheduler, act.ctx, params,
        settings=act.settings, store=act.state.store,
    )  # fmt: skip
    return created.view().model_dump(mode="json")


@router.post("/sandboxes/{sandbox_id}/pause")
async def pause(act: Act, sandbox_id: str) -> dict[str, Any]:
    sb = await sandbox_power.pause_sandbox(act.engine, act.state.pool, act.ctx, sandbox_id)
    return sb.model_dump(mode="json")


@router.post("/sandboxes/{sandbox_id}/resume")
async def resume(act: Act, sandbox_id: str) -> dict[str, Any]:
    sb = await sandbox_power.resume_sandbox(act.engine, act.state.pool, act.ctx, sandbox_id)
    return sb.model_dump(mode="json")


@router.post("/sandboxes/{sandbox_id}/destroy")
async def destroy(act: Act, sandbox_id: str) -> dict[str, Any]:
    await sandboxes_svc.destroy_sandbox(act.engine, act.state.pool, act.ctx, sandbox_id)
    return {}


@router.post("/sandboxes/{sandbox_id}/snapshot")
async def snapshot(act: Act, sandbox_id: str, body: NameBody) -> dict[str, Any]:
    raw = json.dumps({"sandbox_id": sandbox_id, "name": body.name.strip()}).encode()
    settings = act.settings
    tpl = await snapshots_svc.create_snapshot(
        act.engine, act.state.pool, act.ctx, raw, settings=settings, store=act.state.store
    )
    return tpl.model_dump(mode="json")


class OpenPortBody(_Body):
    port: StrictInt = Field(ge=1, le=65535)


@router.post("/sandboxes/{sandbox_id}/open-port")
async def open_port(act: Act, sandbox_id: str, body: OpenPortBody) -> dict[str, Any]:
    """A signed preview link of the port (docs/networking.md §3); the page opens it."""
    url, _ = await preview_svc.signed_url(
        act.engine, act.ctx, act.settings, sandbox_id, body.port, expires=3600, path="/"
    )
    return {"redirect": url, "url": url}


@router.post("/templates/{name}/delete")
async def delete_template(act: Act, name: str) -> dict[str, Any]:
    await snapshots_svc.delete_snapshot(act.engine, act.state.pool, act.ctx, name)
    return {}


# ------------------------------------------------------------------------------------------- keys


@router.post("/keys")
async def create_key(act: Act, body: NameBody) -> dict[str, Any]:
    require_team(act.ctx)  # 403 no_team for a session with no team, as the API answers
    key = await keys_svc.create_key(act.engine, act.ctx, body.name)
    return key.model_dump(mode="json")


@router.post("/keys/{key_id}/revoke")
async def revoke_key(act: Act, key_id: str) -> dict[str, Any]:
    require_team(act.ctx)
    await keys_svc.delete_key(act.engine, act.ctx, keys_svc.parse_key_id(key_id))
    return {}


# ------------------------------------------------------------------------------------------ hosts


@router.post("/hosts")
async def create_host(act: Act, body: hosts_svc.CreateHostRequest) -> dict[str, Any]:
    created = await hosts_svc.create_host(
        act.engine,
        act.ctx,
        type=body.type,
        team_id=body.team_id or None,
        provider=body.provider.strip(),
        availability_zone=body.availability_zone.strip(),
    )
    return {"host_id": created.host.id, "registration_token": created.registration_token}


@router.get("/hosts/{host_id}/delete-preview")
async def host_delete_preview(act: Reader, host_id: str) -> dict[str, Any]:
    preview = await hosts_svc.delete_preview(act.engine, act.ctx, host_id)
    return {"host_id": preview.host.id, "sandbox_ids": preview.sandbox_ids}


@router.post("/hosts/{host_id}/delete")
async def delete_host(act: Act, host_id: str, body: ForceBody) -> dict[str, Any]:
    await hosts_svc.delete_host(act.engine, act.state.pool, act.ctx, host_id, force=body.force)
    return {}


# ------------------------------------------------------------------------------------------ admin


@router.post("/admin/byoc")
async def enable_byoc(act: Act, body: TeamIdBody) -> dict[str, Any]:
    team_uuid = teams_svc.parse_team_id(body.team_id.strip())
    await teams_svc.set_byoc(act.engine, act.ctx, team_uuid, True)
    return {"team_id": ids.team_id(team_uuid)}


@router.post("/admin/quotas")
async def set_team_quotas(act: Act, body: TeamQuotasBody) -> dict[str, Any]:
    team_uuid = teams_svc.parse_team_id(body.team_id.strip())
    changes = {q: v for q in limits_svc.QUOTAS if (v := getattr(body, q)) is not None}
    settings = act.settings
    report = await limits_svc.set_team_quotas(act.engine, settings, act.ctx, team_uuid, changes)
    return report.model_dump(mode="json")
