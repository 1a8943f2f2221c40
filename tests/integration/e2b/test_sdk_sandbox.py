"""E2B's SDK (``e2b``, unchanged, sync and async) against a live platform's control API
(docs/e2b.md §2): create, get_info, list with metadata filters and pagination, kill, set_timeout,
pause and connect, the lifetime sweeper (kill and autoPause), metrics, authentication, another
team's sandboxes, and a 501 for what Warren lacks."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from e2b import AsyncSandbox, Sandbox, SandboxQuery, SandboxState
from e2b.exceptions import AuthenticationException, SandboxNotFoundException

from tests.harness.e2b import E2BEnv, warren_sh
from tests.harness.tenant import signup

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

DEADLINE_S = 60.0


def poll(what: str, check: Callable[[], bool]) -> None:
    """Wait until ``check()`` holds (the lifetime sweeper runs about once a second)."""
    end = time.monotonic() + DEADLINE_S
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


def _gone(sandbox_id: str) -> bool:
    try:
        Sandbox.get_info(sandbox_id)
    except SandboxNotFoundException:
        return True
    return False


def _state(sandbox_id: str) -> SandboxState:
    return Sandbox.get_info(sandbox_id).state


def _end_reason(env: E2BEnv, sandbox_id: str) -> Any:
    """Why it ended, as Warren's own API says (E2B's has no such field)."""
    r = httpx.get(f"{env.platform.url}/v1/sandboxes/{sandbox_id}", headers=env.platform.headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json().get("end_reason")


def _raw(env: E2BEnv, method: str, path: str, **kw: Any) -> httpx.Response:
    headers = {"X-API-KEY": env.api_key, **kw.pop("headers", {})}
    return httpx.request(method, env.url + path, headers=headers, timeout=60, **kw)


def test_create_get_info_kill(e2b_env: E2BEnv) -> None:
    sbx = Sandbox.create(template=e2b_env.template, metadata={"who": "sync"}, envs={"A": "1"})
    info = sbx.get_info()
    assert info.sandbox_id == sbx.sandbox_id and sbx.sandbox_id.startswith("sb-")
    assert info.template_id == e2b_env.template
    assert info.state == SandboxState.RUNNING
    assert info.metadata == {"who": "sync"}
    assert info.cpu_count >= 1 and info.memory_mb > 0
    assert info.started_at < info.end_at
    assert sbx.is_running()
    assert sbx.kill() is True
    assert sbx.kill() is False
    assert not sbx.is_running()
    assert _end_reason(e2b_env, sbx.sandbox_id) == "deleted"
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sbx.sandbox_id)


def test_env_network_and_private_traffic(e2b_env: E2BEnv) -> None:
    sbx = Sandbox.create(
        template=e2b_env.template,
        envs={"GREETING": "hello e2b"},
        network={"allow_out": ["1.1.1.1"], "deny_out": ["0.0.0.0/0"], "allow_public_traffic": False},
    )
    try:
        assert warren_sh(e2b_env.platform, sbx.sandbox_id, 'printf %s "$GREETING"') == "hello e2b"
        assert sbx.traffic_access_token  # allowPublicTraffic false: the token is returned
        net = sbx.get_info().network
        assert net is not None
        assert net.get("allow_out") == ["1.1.1.1/32"] and net.get("deny_out") == ["0.0.0.0/0"]
        assert net.get("allow_public_traffic") is False
        sbx.update_network({"deny_out": ["10.9.0.0/16"]})
        net = sbx.get_info().network
        assert net is not None and net.get("allow_out") == [] and net.get("deny_out") == ["10.9.0.0/16"]
    finally:
        sbx.kill()
    public = Sandbox.create(template=e2b_env.template)
    try:
        assert public.traffic_access_token is None
    finally:
        public.kill()


def test_list_filters_by_metadata_and_paginates(e2b_env: E2BEnv) -> None:
    tag = uuid.uuid4().hex
    made = [Sandbox.create(template=e2b_env.template, metadata={"batch": tag, "i": str(i)}) for i in range(5)]
    other = Sandbox.create(template=e2b_env.template, metadata={"batch": "other " + tag})
    try:
        paginator = Sandbox.list(query=SandboxQuery(metadata={"batch": tag}), limit=2)
        pages = []
        while paginator.has_next:
            pages.append([s.sandbox_id for s in paginator.next_items()])
        assert [len(p) for p in pages] == [2, 2, 1]
        assert {i for p in pages for i in p} == {s.sandbox_id for s in made}
        both = Sandbox.list(query=SandboxQuery(metadata={"batch": tag, "i": "3"})).next_items()
        assert [s.sandbox_id for s in both] == [made[3].sandbox_id]
        assert made[0].pause() is True
        paused = Sandbox.list(query=SandboxQuery(metadata={"batch": tag}, state=[SandboxState.PAUSED]))
        assert [s.sandbox_id for s in paused.next_items()] == [made[0].sandbox_id]
        # The cursor is opaque: one the server did not make is a 400.
        assert _raw(e2b_env, "GET", "/v2/sandboxes", params={"nextToken": "bogus!"}).status_code == 400
    finally:
        for s in [*made, other]:
            s.kill()


def test_set_timeout_ends_the_sandbox(e2b_env: E2BEnv) -> None:
    sbx = Sandbox.create(template=e2b_env.template, timeout=300)
    sbx.set_timeout(2)
    poll("the sandbox to be killed at its new end", lambda: not sbx.is_running())
    assert _gone(sbx.sandbox_id)


def test_lifetime_kills_or_pauses(e2b_env: E2BEnv) -> None:
    killed = Sandbox.create(template=e2b_env.template, timeout=2)
    paused = Sandbox.create(template=e2b_env.template, timeout=2, lifecycle={"on_timeout": "pause"})
    poll("the lifetime kill", lambda: _gone(killed.sandbox_id))
    assert _end_reason(e2b_env, killed.sandbox_id) == "lifetime_ended"
    poll("the lifetime pause", lambda: _state(paused.sandbox_id) == SandboxState.PAUSED)
    assert _end_reason(e2b_env, paused.sandbox_id) is None  # paused, not ended
    assert not paused.is_running()
    resumed = Sandbox.connect(paused.sandbox_id, timeout=300)
    assert resumed.is_running()
    assert resumed.kill() is True


def test_pause_and_connect(e2b_env: E2BEnv) -> None:
    sbx = Sandbox.create(template=e2b_env.template, timeout=300)
    try:
        assert sbx.pause() is True
        assert sbx.pause() is False  # already paused: 409
        assert not sbx.is_running()
        r = _raw(e2b_env, "POST", f"/v2/sandboxes/{sbx.sandbox_id}/connect", json={"timeout": 600})
        assert r.status_code == 201, r.text  # resumed
        assert r.json()["sandboxID"] == sbx.sandbox_id and r.json()["envdAccessToken"]
        assert sbx.is_running()
        end = Sandbox.get_info(sbx.sandbox_id).end_at
        r = _raw(e2b_env, "POST", f"/v2/sandboxes/{sbx.sandbox_id}/connect", json={"timeout": 60})
        assert r.status_code == 200, r.text  # was running
        assert Sandbox.get_info(sbx.sandbox_id).end_at == end  # extended only, never shortened
        again = sbx.connect(timeout=900)
        assert again.is_running()
        assert Sandbox.get_info(sbx.sandbox_id).end_at > end
    finally:
        sbx.kill()


def test_metrics(e2b_env: E2BEnv) -> None:
    sbx = Sandbox.create(template=e2b_env.template)
    try:
        got: list[Any] = []

        def sampled() -> bool:
            got[:] = Sandbox.get_metrics(sbx.sandbox_id)
            return bool(got)

        poll("a metrics sample", sampled)
        m = got[-1]
        assert m.cpu_count >= 1 and m.mem_total > 0 and m.disk_total > 0 and m.mem_used >= 0
        with pytest.raises(SandboxNotFoundException):
            Sandbox.get_metrics("sb-" + "0" * 25)
    finally:
        sbx.kill()


def test_auth_other_team_and_unsupported(e2b_env: E2BEnv) -> None:
    r = httpx.get(e2b_env.url + "/v2/sandboxes", timeout=30)
    assert r.status_code == 401 and r.json()["code"] == 401
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key="wrn_" + "x" * 40).next_items()
    sbx = Sandbox.create(template=e2b_env.template)
    try:
        stranger = signup(e2b_env.platform.url, "e2b-stranger")
        with pytest.raises(SandboxNotFoundException):
            Sandbox.get_info(sbx.sandbox_id, api_key=stranger.api_key)
        assert Sandbox.kill(sbx.sandbox_id, api_key=stranger.api_key) is False
        assert Sandbox.list(api_key=stranger.api_key).next_items() == []
        r = _raw(e2b_env, "POST", f"/sandboxes/{sbx.sandbox_id}/refreshes")
        assert r.status_code == 501 and r.json()["code"] == 501, r.text
        r = _raw(
            e2b_env, "POST", "/v2/sandboxes", json={"templateID": e2b_env.template, "volumeMounts": [{}]}
        )
        assert r.status_code == 501 and "volume mounts" in r.json()["message"]
        r = _raw(e2b_env, "POST", "/v2/sandboxes", json={"templateID": e2b_env.template, "timeout": 10**7})
        assert r.status_code == 400 and r.json()["code"] == 400
        assert sbx.is_running()
    finally:
        sbx.kill()


def test_v1_create_and_list(e2b_env: E2BEnv) -> None:
    tag = uuid.uuid4().hex
    body = {"templateID": e2b_env.template, "secure": True, "metadata": {"v1": tag}}
    r = _raw(e2b_env, "POST", "/sandboxes", json=body)
    assert r.status_code == 201, r.text
    sid = r.json()["sandboxID"]
    try:
        info = Sandbox.get_info(sid)
        assert (info.end_at - info.started_at).total_seconds() <= 15  # v1's default timeout
        Sandbox.set_timeout(sid, 300)  # so a loaded machine does not end it before it is listed
        listed = _raw(e2b_env, "GET", "/sandboxes", params={"metadata": f"v1={tag}"}).json()
        assert [s["sandboxID"] for s in listed] == [sid]
    finally:
        Sandbox.kill(sid)


async def test_async_sdk(e2b_env: E2BEnv) -> None:
    tag = uuid.uuid4().hex
    made = [await AsyncSandbox.create(template=e2b_env.template, metadata={"async": tag}) for _ in range(3)]
    try:
        info = await made[0].get_info()
        assert info.metadata == {"async": tag} and info.state == SandboxState.RUNNING
        paginator = AsyncSandbox.list(query=SandboxQuery(metadata={"async": tag}), limit=2)
        seen: list[str] = []
        while paginator.has_next:
            seen += [s.sandbox_id for s in await paginator.next_items()]
        assert sorted(seen) == sorted(s.sandbox_id for s in made)
        assert await made[1].pause() is True
        assert await made[1].pause() is False
        again = await AsyncSandbox.connect(made[1].sandbox_id)
        assert await again.is_running()
        await made[2].set_timeout(2)
        end = time.monotonic() + DEADLINE_S
        while await made[2].is_running():
            assert time.monotonic() < end, "timed out waiting for the set_timeout kill"
            await _asleep(0.2)
        assert await made[0].kill() is True
        assert await made[0].kill() is False
    finally:
        for s in made:
            await s.kill()


async def _asleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def test_control_refuses_bad_input(e2b_env: E2BEnv) -> None:
    """Hostile bodies and queries: E2B's error shape with a 4xx, never a 500."""
    t = e2b_env.template
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("POST", "/v2/sandboxes", {"content": b"[1, 2]"}, 400),
        ("POST", "/v2/sandboxes", {"content": b"{not json"}, 400),
        ("POST", "/v2/sandboxes", {"json": {"templateID": 5}}, 400),
        ("POST", "/v2/sandboxes", {"json": {"templateID": t, "timeout": True}}, 400),
        ("POST", "/v2/sandboxes", {"json": {"templateID": t, "timeout": 0}}, 400),
        ("POST", "/v2/sandboxes", {"json": {"templateID": t, "metadata": {"k": 1}}}, 400),
        (
            "POST",
            "/v2/sandboxes",
            {"json": {"templateID": t, "metadata": {str(i): "" for i in range(65)}}},
            400,
        ),
        (
            "POST",
            "/v2/sandboxes",
            {"content": b'{"templateID": "%s", "metadata": {"k": "\\udfff"}}' % t.encode()},
            400,
        ),
        ("POST", "/v2/sandboxes", {"json": {"templateID": t, "envVars": {"A=B": "x"}}}, 400),
        ("POST", "/v2/sandboxes", {"json": {"templateID": t, "timeout": 2**70}}, 400),
        ("POST", "/v2/sandboxes", {"json": {"templateID": "no-such-template"}}, 404),
        ("POST", "/v2/sandboxes", {"content": b'{"x": "' + b"a" * (2 << 20) + b'"}'}, 413),
        ("GET", "/v2/sandboxes", {"params": {"limit": "0"}}, 400),
        ("GET", "/v2/sandboxes", {"params": {"state": "stopped"}}, 400),
        ("GET", "/v2/sandboxes", {"params": {"startedAfter": "yesterday"}}, 400),
        ("GET", "/v2/sandboxes", {"params": {"metadata": "k=" + "v" * 2000}}, 400),
        ("GET", "/sandboxes/not-an-id", {}, 400),
        ("GET", "/sandboxes/sb-" + "0" * 25 + "/metrics", {"params": {"start": "-1"}}, 400),
        ("POST", "/sandboxes/sb-" + "0" * 25 + "/timeout", {"json": {}}, 400),
        ("DELETE", "/templates/..%2F..%2Fetc", {}, 404),
        ("GET", "/snapshots", {"params": {"sandboxID": "x"}}, 400),
    ]
    for method, path, kw, status in cases:
        r = _raw(e2b_env, method, path, **kw)
        assert r.status_code == status, (method, path, r.status_code, r.text)
        assert r.json()["code"] == status and isinstance(r.json()["message"], str)
