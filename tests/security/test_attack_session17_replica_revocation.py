"""Session 17: a revocation made through one CP replica ends the streams open on another.

Session 16 ended a stream whose credentials stop holding (``services/stream_revocation.py``),
but only the same-process trigger was tested: the replica that makes the change re-checks at
once (``kick``). Production runs several replicas behind a load balancer, and the attacker
chooses none of them: Mallory's terminal is on whichever replica her WebSocket landed on. Here
she opens an exec WebSocket and an E2B ``process.Process/Start`` stream on replica B; the
owner removes her through replica A (which has no stream of hers to end). B must end both
on its own periodic re-check (every ``RECHECK_S``, 5 s) with 401 ``access_revoked`` /
Connect's ``unauthenticated``. The same for an API key revoked through A while its exec stream
runs on B. The owner's own stream on B goes on.

Two real CP processes on the module's PostgreSQL (B shares A's CA through
``WARREN_CA_CERT``/``WARREN_CA_KEY``, as docs/hosts.md tells an operator to), one real agent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.harness.cp import CPProcess
from tests.harness.platform import Platform, second_replica
from tests.harness.tenant import signup
from tests.security.test_attack_session15_envd_tokens import add_member, bearer, envd_token
from tests.security.test_attack_session16_tenant import (
    ENDS_WITHIN_S,
    EnvdStream,
    exec_ws,
    still_ticking,
    ws_outcome,
)

# A second replica on the module's own database: not for the shared platform.
pytestmark = [pytest.mark.root]


# B's periodic re-check (WARREN_STREAM_RECHECK_S, 5 s by default) is what these tests wait for:
# short here, the same re-check.
RECHECK_ENV = {"WARREN_STREAM_RECHECK_S": "1"}


@pytest.fixture(scope="module")
async def replica_b(platform: Platform, platform_dir: Path) -> AsyncIterator[CPProcess]:
    """A second ``warren cp`` on A's database and CA (the agent trusts B's client certificate)."""
    async with second_replica(platform, platform_dir / "cp-b", RECHECK_ENV) as b:
        yield b


def test_a_member_removed_through_a_loses_her_streams_on_b(platform: Platform, replica_b: CPProcess) -> None:
    a = platform.url
    owner = signup(a, "owner-s17r")
    sid = owner.create(memory_mb=128)
    mallory = add_member(platform, owner, "mallory-s17r")
    token = envd_token(replica_b.e2b_url, mallory.team_key, sid)
    with (
        exec_ws(replica_b.url, sid, {"X-API-Key": owner.api_key}) as mine,
        exec_ws(replica_b.url, sid, bearer(mallory.team_token)) as hers,
    ):
        envd = EnvdStream(replica_b.e2b_url, sid, token)
        try:
            assert still_ticking(hers) and envd.ticks()
            r = httpx.delete(
                f"{a}/v1/teams/{owner.team_id}/members/{mallory.user_id}",
                headers=bearer(owner.token),
                timeout=60,
            )
            assert r.status_code == 204, r.text
            assert ws_outcome(hers, ENDS_WITHIN_S) == "access_revoked", replica_b.log_tail()
            assert envd.outcome(ENDS_WITHIN_S) == "unauthenticated", replica_b.log_tail()
        finally:
            envd.close()
        assert still_ticking(mine)  # the owner's key still holds: B ends only hers


def test_a_key_revoked_through_a_ends_its_stream_on_b(platform: Platform, replica_b: CPProcess) -> None:
    a = platform.url
    owner = signup(a, "owner-key-s17r")
    sid = owner.create(memory_mb=128)
    r = httpx.post(f"{a}/v1/api-keys", json={"name": "ci"}, headers=bearer(owner.token), timeout=60)
    assert r.status_code == 201, r.text
    ci = r.json()
    with exec_ws(replica_b.url, sid, {"X-API-Key": ci["key"]}) as ws:
        assert still_ticking(ws)
        r = httpx.delete(f"{a}/v1/api-keys/{ci['id']}", headers=bearer(owner.token), timeout=60)
        assert r.status_code == 204, r.text
        assert ws_outcome(ws, ENDS_WITHIN_S) == "access_revoked", replica_b.log_tail()
