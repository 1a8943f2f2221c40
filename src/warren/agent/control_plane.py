"""The agent's side of the control-plane link (docs/spec.md §3): register, credentials, refresh, heartbeat.

* ``--register TOKEN --address HOST:PORT --cp URL`` registers (always, ignoring saved
  credentials) and stores ``host-credentials.json`` (0600) under the data dir: host JWT, refresh
  token and the mTLS server certificate, key and CA certificate. Later starts reuse the file.
* :class:`TlsMaterial` serves the RPC port with **mutual** TLS: clients must present a
  certificate from the CP's CA with the clientAuth usage (the CP's; host certificates are
  serverAuth-only). Refreshed certificates are hot-swapped for new connections.
* :class:`HeartbeatLoop`: a beat every 30 s, the first at once. 204 → healthy; transport error →
  after 3 in a row PauseAll (once) and keep trying; 401/403 → refresh; a refresh the CP
  *rejects* (401, 404, no refresh token) → PauseAll and stop beating for good (the operator must
  re-register); a refresh that fails in transit, with a 5xx or a 429 counts as one more failed beat and
  is retried, because the old token is still valid (issue-then-revoke). 404 on a beat → the host
  was deleted: delete the credentials and shut the agent down.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import platform
import shutil
import threading
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx

from warren.agent.runtime.select import installed_runtimes

log = logging.getLogger("warren.agent.cp")

CREDENTIALS_FILE = "host-credentials.json"
# The agent's own value is WARREN_HEARTBEAT_INTERVAL_S (AgentSettings.heartbeat_interval_s).
HEARTBEAT_INTERVAL_S = 30.0
REGISTER_TIMEOUT_S = 30.0
REFRESH_TIMEOUT_S = 15.0
HEARTBEAT_TIMEOUT_S = 10.0
MAX_FAILURES = 3

_GO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i686": "386",
            "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}  # fmt: skip


class ControlPlaneError(RuntimeError):
    pass


# ------------------------------------------------------------------------------- credentials


@dataclass
class HostCredentials:
    host_id: str
    jwt: str
    refresh_token: str = ""
    cert_pem: str = ""
    key_pem: str = ""
    ca_cert_pem: str = ""

    @property
    def has_tls(self) -> bool:
        return bool(self.cert_pem and self.key_pem and self.ca_cert_pem)


def _jwt_host_id(token: str) -> str:
    """The ``host_id`` claim read WITHOUT verifying (docs/spec.md §3.1 step 6: the agent cannot)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["host_id"])
    except (IndexError, KeyError, ValueError) as e:
        raise ControlPlaneError("host JWT has no host_id") from e


def credentials_path(data_dir: Path) -> Path:
    return Path(data_dir) / CREDENTIALS_FILE


def load_credentials(data_dir: Path) -> HostCredentials | None:
    path = credentials_path(data_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    if not text.lstrip().startswith("{"):
        # Legacy format: the file holds a raw JWT and there is no refresh token.
        jwt = text.strip()
        return HostCredentials(host_id=_jwt_host_id(jwt), jwt=jwt) if jwt else None
    data = json.loads(text)
    if not data.get("jwt"):
        return None
    fields = {k: str(data.get(k) or "") for k in HostCredentials.__dataclass_fields__}
    if not fields["host_id"]:
        fields["host_id"] = _jwt_host_id(fields["jwt"])
    return HostCredentials(**fields)


def save_credentials(data_dir: Path, creds: HostCredentials) -> None:
    """Atomically (write + rename) with mode 0600 from the first byte."""
    path = credentials_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(creds), f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def delete_credentials(data_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        credentials_path(data_dir).unlink()


def _creds_from_response(body: dict[str, Any]) -> HostCredentials:
    token = body.get("token")
    if not token:
        raise ControlPlaneError("control plane answered without a host token")
    return HostCredentials(
        host_id=_jwt_host_id(token),
        jwt=token,
        refresh_token=body.get("refresh_token") or "",
        cert_pem=body.get("cert_pem") or "",
        key_pem=body.get("key_pem") or "",
        ca_cert_pem=body.get("ca_cert_pem") or "",
    )


# ----------------------------------------------------------------------------------- specs


def host_specs() -> dict[str, Any]:
    """arch (Go names, e.g. amd64), logical CPUs, RAM in MiB, size of ``/`` in GiB."""
    machine = platform.machine().lower()
    memory_mb = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_mb = int(line.split()[1]) // 1024
                break
    return {
        "arch": _GO_ARCH.get(machine, machine),
        "cpu_cores": os.cpu_count() or 0,
        "memory_mb": memory_mb,
        "disk_gb": shutil.disk_usage("/").total // (1 << 30),
    }


def _error_text(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error", {})
        return f"{resp.status_code} {err.get('code', '')}: {err.get('message', '')}"
    except ValueError:
        return f"{resp.status_code} {resp.text[:200]}"


async def register(
    cp_url: str, token: str, address: str, data_dir: Path, default_runtime: str | None = None
) -> HostCredentials:
    """POST /v1/hosts/register and persist the credentials. Anything but 201 is fatal.
    ``default_runtime``: what a create naming no runtime runs on here (heartbeats say it too)."""
    body = {"token": token, "address": address, **host_specs(), "runtimes": installed_runtimes()}
    if default_runtime:
        body["default_runtime"] = default_runtime
    async with httpx.AsyncClient(base_url=cp_url, timeout=REGISTER_TIMEOUT_S) as client:
        try:
            resp = await client.post("/v1/hosts/register", json=body)
        except httpx.HTTPError as e:
            raise ControlPlaneError(f"registration failed: cannot reach {cp_url}: {e}") from e
    if resp.status_code != 201:
        raise ControlPlaneError(f"registration failed: {_error_text(resp)}")
    creds = _creds_from_response(resp.json())
    save_credentials(data_dir, creds)
    log.info("registered with the control plane host=%s", creds.host_id)
    return creds


async def obtain_credentials(
    *,
    cp_url: str,
    data_dir: Path,
    register_token: str | None,
    address: str | None,
    default_runtime: str | None = None,
) -> HostCredentials:
    """docs/spec.md §3.1 step 2: with a token always (re-)register; otherwise the saved file."""
    if register_token:
        if not address:
            raise ControlPlaneError("--address is required with --register")
        return await register(cp_url, register_token, address, data_dir, default_runtime)
    creds = load_credentials(data_dir)
    if creds is None:
        raise ControlPlaneError("no saved host credentials and no registration token provided")
    return creds


# ------------------------------------------------------------------------------------ mTLS


class TlsMaterial:
    """The agent's server TLS config; :meth:`update` hot-swaps it for new connections."""

    def __init__(self, creds: HostCredentials) -> None:
        if not creds.has_tls:
            raise ControlPlaneError("saved host credentials carry no TLS material; re-register the host")
        self._lock = threading.Lock()
        self._config = self._build(creds)
        self._pending: grpc.ServerCertificateConfiguration | None = None

    @staticmethod
    def _build(creds: HostCredentials) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(creds.key_pem.encode(), creds.cert_pem.encode())], root_certificates=creds.ca_cert_pem.encode()
        )

    def update(self, creds: HostCredentials) -> None:
        if creds.has_tls:
            with self._lock:
                self._pending = self._build(creds)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC (on its own threads) before each handshake; None = keep the current one.
        with self._lock:
            pending, self._pending = self._pending, None
            return pending

    def server_credentials(self) -> grpc.ServerCredentials:
        """Client certificates are required and must chain to the CP's CA."""
        # grpc-stubs say the fetcher returns a config; gRPC also takes None ("no change").
        fetch: Any = self._fetch
        return grpc.dynamic_ssl_server_credentials(self._config, fetch, require_client_authentication=True)


# ------------------------------------------------------------------------------- heartbeat


@dataclass
class AgentHooks:
    """What the link asks of the agent: pause every sandbox (reporting them as auto-paused),
    shut the whole agent down (destroy all sandboxes, stop the server), and what the agent
    reports of itself with each heartbeat (the CP's ``HostReport``: a JSON object; None sends
    no body)."""

    pause_all: Callable[[], Awaitable[Any]]
    shutdown: Callable[[], Awaitable[Any]]
    report: Callable[[], dict[str, Any]] | None = None


class HeartbeatLoop:
    def __init__(
        self,
        cp_url: str,
        data_dir: Path,
        creds: HostCredentials,
        hooks: AgentHooks,
        *,
        tls: TlsMaterial | None = None,
        interval_s: float = HEARTBEAT_INTERVAL_S,
    ) -> None:
        self.cp_url = cp_url
        self.data_dir = Path(data_dir)
        self.creds = creds
        self.hooks = hooks
        self.tls = tls
        self.interval_s = interval_s
        self.failures = 0
        self.paused = False
        self.stopped_reason = ""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(), name="cp-heartbeat")
        return self._task

    async def stop(self) -> None:
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _pause_all(self, why: str) -> None:
        if self.paused:
            return
        self.paused = True
        log.warning("pausing every sandbox: %s", why)
        try:
            # docs/spec.md §3.4: PauseAll has a 2-minute budget.
            await asyncio.wait_for(self.hooks.pause_all(), timeout=120)
        except Exception:
            log.exception("PauseAll failed")

    async def refresh(self, client: httpx.AsyncClient) -> bool | None:
        """True: refreshed. False: the CP refused (fatal). None: transient failure, retry later."""
        if not self.creds.refresh_token:
            log.error("no refresh token on disk: the host must re-register")
            return False
        try:
            resp = await client.post(
                "/v1/hosts/auth/refresh", json={"refresh_token": self.creds.refresh_token},
                timeout=REFRESH_TIMEOUT_S,
            )  # fmt: skip
        except httpx.HTTPError as e:
            log.warning("refresh failed in transit: %s", e)
            return None
        if resp.status_code == 200:
            self.creds = _creds_from_response(resp.json())
            save_credentials(self.data_dir, self.creds)
            if self.tls is not None:
                self.tls.update(self.creds)
            log.info("host credentials refreshed host=%s", self.creds.host_id)
            return True
        if resp.status_code >= 500 or resp.status_code == 429:  # 429: too soon, the token holds
            log.warning("refresh failed on the control plane: %s", _error_text(resp))
            return None
        log.error("refresh refused: %s", _error_text(resp))
        return False

    def _report(self) -> dict[str, Any] | None:
        if self.hooks.report is None:
            return None
        try:
            return self.hooks.report()
        except Exception:  # a broken report must not stop the heartbeat that keeps the host up
            log.exception("building the heartbeat report failed; sending none")
            return None

    async def beat_once(self, client: httpx.AsyncClient) -> bool:
        """One heartbeat and its consequences. False: the loop must end."""
        try:
            resp = await client.post(
                f"/v1/hosts/{self.creds.host_id}/heartbeat", headers={"X-Host-Token": self.creds.jwt},
                json=self._report(), timeout=HEARTBEAT_TIMEOUT_S,
            )  # fmt: skip
        except httpx.HTTPError as e:
            return await self._failed(f"heartbeat failed: {e!r}")
        code = resp.status_code
        if code == 204:
            if self.failures or self.paused:
                log.info("connection to the control plane restored")
            self.failures = 0
            self.paused = False
            return True
        if code in (401, 403):
            ok = await self.refresh(client)
            if ok is None:
                return await self._failed("refresh could not complete")
            if not ok:
                await self._pause_all("credentials refused and refresh failed")
                self.stopped_reason = "refresh_failed"
                log.error("heartbeat stopped: re-register this host with a new token")
                return False
            return True
        if code == 404:
            log.warning("the control plane deleted this host: removing credentials and shutting down")
            delete_credentials(self.data_dir)
            self.stopped_reason = "host_deleted"
            await self.hooks.shutdown()
            return False
        log.warning("unexpected heartbeat answer: %s", _error_text(resp))
        return True

    async def _failed(self, why: str) -> bool:
        self.failures += 1
        log.warning("%s (%d in a row)", why, self.failures)
        if self.failures >= MAX_FAILURES:
            await self._pause_all(f"{self.failures} consecutive heartbeat failures")
        return True

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.cp_url) as client:
            while True:
                if not await self.beat_once(client):
                    return
                await asyncio.sleep(self.interval_s)


class ControlPlaneLink:
    """Everything the agent's main needs: credentials (registering if told to), the mTLS server
    credentials for the RPC port, and the heartbeat loop.

    Usage in the agent's startup::

        link = await ControlPlaneLink.connect(cp_url=..., data_dir=..., register_token=..., address=...)
        server.add_secure_port(listen, link.server_credentials())
        ...start the server...
        link.start(AgentHooks(pause_all=manager.pause_all, shutdown=request_shutdown))
        ...
        await link.stop()
    """

    def __init__(self, cp_url: str, data_dir: Path, creds: HostCredentials) -> None:
        self.cp_url = cp_url
        self.data_dir = Path(data_dir)
        self.creds = creds
        self.tls = TlsMaterial(creds)
        self.heartbeat: HeartbeatLoop | None = None

    @classmethod
    async def connect(
        cls,
        *,
        cp_url: str,
        data_dir: Path,
        register_token: str | None = None,
        address: str | None = None,
        default_runtime: str | None = None,
    ) -> ControlPlaneLink:
        creds = await obtain_credentials(
            cp_url=cp_url, data_dir=data_dir, register_token=register_token, address=address,
            default_runtime=default_runtime,
        )  # fmt: skip
        return cls(cp_url, data_dir, creds)

    @property
    def host_id(self) -> str:
        return self.creds.host_id

    def server_credentials(self) -> grpc.ServerCredentials:
        return self.tls.server_credentials()

    def start(self, hooks: AgentHooks, *, interval_s: float = HEARTBEAT_INTERVAL_S) -> asyncio.Task[None]:
        self.heartbeat = HeartbeatLoop(self.cp_url, self.data_dir, self.creds, hooks, tls=self.tls,
                                       interval_s=interval_s)  # fmt: skip
        return self.heartbeat.start()

    async def stop(self) -> None:
        if self.heartbeat is not None:
            await self.heartbeat.stop()
