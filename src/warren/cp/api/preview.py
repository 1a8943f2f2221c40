"""Preview URL settings of a sandbox (docs/networking.md §3): public ports and auto-resume, the
traffic token's rotation, and signed URLs. The rules live in ``services/preview.py``; the proxy
itself is ``cp/proxy/``."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from warren.cp.api.deps import AUTH_ERRORS, Db, SettingsDep, TeamContext
from warren.cp.http_errors import error_responses
from warren.cp.services import preview as svc
from warren.cp.services.strict import StrictBody

router = APIRouter(prefix="/v1/sandboxes", tags=["preview"])
_ERR = (*AUTH_ERRORS, 404, 409)


class PreviewUpdate(StrictBody):
    public_ports: list[int] | None = Field(
        default=None, max_length=svc.MAX_PUBLIC_PORTS, description="ports reachable without the traffic token"
    )
    auto_resume: bool | None = Field(default=None, description="proxied traffic resumes a paused sandbox")


class TrafficToken(BaseModel):
    traffic_token: str


class SignedUrlRequest(StrictBody):
    port: int = Field(ge=1, le=65535)
    expires: int = Field(default=3600, ge=1, le=2**31 - 1, description="seconds from now")
    path: str = Field(default="/", max_length=svc.MAX_PATH)


class SignedUrl(BaseModel):
    url: str
    expires_at: int  # unix seconds


@router.patch("/{sandbox_id}", response_model=svc.PreviewView, responses=error_responses(400, *_ERR))
async def update_preview(
    sandbox_id: str, body: PreviewUpdate, ctx: TeamContext, db: Db, settings: SettingsDep
) -> svc.PreviewView:
    """Make ports public (or private again) and set auto-resume."""
    return await svc.update(
        db, ctx, sandbox_id, settings, public_ports=body.public_ports, auto_resume=body.auto_resume
    )


@router.get("/{sandbox_id}/preview", response_model=svc.PreviewView, responses=error_responses(400, *_ERR))
async def get_preview(sandbox_id: str, ctx: TeamContext, db: Db, settings: SettingsDep) -> svc.PreviewView:
    return await svc.get_settings(db, ctx, sandbox_id, settings)


@router.post(
    "/{sandbox_id}/traffic-token", response_model=TrafficToken, responses=error_responses(400, *_ERR)
)
async def rotate_traffic_token(sandbox_id: str, ctx: TeamContext, db: Db) -> TrafficToken:
    """A new traffic token; the old one and every signed URL made with it stop working."""
    return TrafficToken(traffic_token=await svc.rotate_token(db, ctx, sandbox_id))


@router.post(
    "/{sandbox_id}/preview/signed-url", response_model=SignedUrl, responses=error_responses(400, *_ERR)
)
async def signed_url(
    sandbox_id: str, body: SignedUrlRequest, ctx: TeamContext, db: Db, settings: SettingsDep
) -> SignedUrl:
    """A path URL of a port that works without credentials until it expires."""
    url, exp = await svc.signed_url(
        db, ctx, settings, sandbox_id, body.port, expires=body.expires, path=body.path
    )
    return SignedUrl(url=url, expires_at=exp)
