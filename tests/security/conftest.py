"""The attack suite: every probe is run the way a hostile tenant would run it.

Most probes need a live platform (a real control plane process, a real agent, a real
PostgreSQL): ``platform`` (tests/harness/fixtures.py) starts one per test module, as for the SDK
tests. A :class:`~tests.harness.tenant.Tenant` wraps one team's API key with the two moves an
attacker has: an API call (``w``) and a shell script run inside one of their sandboxes (``x``),
the same two moves the findings' reproductions use.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup


@pytest.fixture(scope="module")
def alice(platform: Platform) -> Tenant:
    return signup(platform.url, "alice")


@pytest.fixture(scope="module")
def bob(platform: Platform) -> Tenant:
    return signup(platform.url, "bob")


@pytest.fixture(scope="module")
def sandbox(alice: Tenant) -> Iterator[str]:
    """Alice's ``minimal`` sandbox of 256 MiB for the module (a module that needs another size
    or more than one defines its own ``sandbox``)."""
    sid = alice.create(memory_mb=256)
    yield sid
    alice.w("DELETE", f"/v1/sandboxes/{sid}")
