"""Session 25: an image whose config holds text PostgreSQL cannot keep.

As the attacker runs it (a tenant's key, ``POST /v1/templates/import``): a ``docker save``
tarball whose config's ``Env``, ``User``, ``Cmd`` or ``WorkingDir`` carries JSON's ``\\ud800`` (a
lone surrogate: no UTF-8) or ``\\u0000`` (no PostgreSQL text). The read accepted it, the layers
went into the store and were counted to the team, and the version's write failed: a 500, with
the layers left behind in the team's store count. Now the read refuses it: a 400 naming the
field, before any layer is stored.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.harness.platform import Platform
from tests.integration.cp.api.test_template_import import docker_save, import_image
from tests.integration.cp.api.test_template_import import layers as layers  # the module's fixture
from warren import ids

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

CONFIGS: dict[str, dict[str, Any]] = {
    "env-surrogate": {"Env": ["A=\ud800"]},
    "user-surrogate": {"User": "\udfff"},
    "cmd-surrogate": {"Cmd": ["python3", "x\ud800"]},
    "workdir-nul": {"WorkingDir": "/app\x00"},
    "env-nul": {"Env": ["A=b\x00c"]},
}


@pytest.fixture
async def http(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=platform.url, headers=platform.headers, timeout=120) as client:
        yield client


@pytest.mark.parametrize("case", CONFIGS)
async def test_unstorable_config_text_is_a_400_and_stores_nothing(
    http: httpx.AsyncClient, platform: Platform, layers: list[bytes], case: str
) -> None:
    team = ids.parse_id(ids.Kind.TEAM, platform.team_id)
    count = "SELECT count(*) FROM team_store_layers WHERE team_id = :t"
    before = (await platform.sql(count, t=team))[0][0]
    r = await import_image(http, f"cfg-{uuid.uuid4().hex[:6]}", docker_save(layers, CONFIGS[case]))
    assert r.status_code == 400, r.text
    assert "image config" in r.json()["error"]["message"], r.text
    assert (await platform.sql(count, t=team))[0][0] == before  # no layer stored for it
