"""Preview URLs of a sandbox's ports (docs/networking.md §3): the host-name form and signed path
URLs. The methods are wired into ``Sandbox`` / ``AsyncSandbox`` in ``_sandbox.py``."""

from __future__ import annotations

from typing import Any

from warren.sdk._exceptions import WarrenError
from warren.sdk._transport import Http, Op


def get_host(self: Any, port: int) -> Op[str]:
    """The host name of ``port`` for host-name routing, ``{port}-{sandbox_id}.{preview_domain}``
    (the control plane's ``WARREN_PREVIEW_DOMAIN``). Requests to it need the sandbox's traffic
    token (header ``X-Warren-Traffic-Token``, see :attr:`traffic_token`) unless the port is
    public.

    Example::

        host = sbx.get_host(8000)   # "8000-sb-….preview.example.com"
    """
    domain = getattr(self, "_preview_domain", None)
    if domain is None:
        res = yield Http("GET", f"/v1/sandboxes/{self.id}/preview")
        domain = res.json().get("preview_domain")
        if not domain:
            raise WarrenError(
                "this control plane has no preview domain (WARREN_PREVIEW_DOMAIN); use get_url()",
                code="no_preview_domain",
            )
        self._preview_domain = domain
    return f"{int(port)}-{self.id}.{domain}"


def get_url(self: Any, port: int, *, expires: int = 3600, path: str = "/") -> Op[str]:
    """A signed URL of ``port`` (path routing through the control plane) that a browser or
    ``curl`` opens as it is, without credentials, until ``expires`` seconds from now. Rotating
    the traffic token voids it.

    Example::

        url = sbx.get_url(8000, expires=600, path="/index.html")
    """
    res = yield Http(
        "POST", f"/v1/sandboxes/{self.id}/preview/signed-url",
        json={"port": int(port), "expires": int(expires), "path": path},
    )  # fmt: skip
    url: str = res.json()["url"]
    return url


def set_preview(
    self: Any, *, public_ports: list[int] | None = None, auto_resume: bool | None = None
) -> Op[dict[str, Any]]:
    """Make ports public (no token needed) or private again, and whether proxied traffic
    resumes the sandbox when it is paused.

    Example::

        sbx.set_preview(public_ports=[8000], auto_resume=True)
    """
    body: dict[str, Any] = {}
    if public_ports is not None:
        body["public_ports"] = [int(p) for p in public_ports]
    if auto_resume is not None:
        body["auto_resume"] = bool(auto_resume)
    res = yield Http("PATCH", f"/v1/sandboxes/{self.id}", json=body)
    out: dict[str, Any] = res.json()
    return out


def rotate_traffic_token(self: Any) -> Op[str]:
    """A new traffic token (the old one and every signed URL stop working).

    Example::

        token = sbx.rotate_traffic_token()
    """
    res = yield Http("POST", f"/v1/sandboxes/{self.id}/traffic-token")
    token: str = res.json()["traffic_token"]
    self._traffic_token = token
    return token
