"""Warren's own answer to stdin for a process that has exited (docs/api.md §3): 400
``invalid_request`` with the guest's words. The guest says it by a kind of its own, ``exited``,
which E2B's SendInput answers ``not_found`` by (tests/integration/e2b/); this API's answer stays
what it was."""

from __future__ import annotations

import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]


@pytest.fixture(scope="module")
def tenant(platform: Platform) -> Tenant:
    return signup(platform.url, "stdin")


def test_stdin_to_an_exited_process_is_a_400(tenant: Tenant) -> None:
    sb = tenant.create()
    r = tenant.w("POST", f"/v1/sandboxes/{sb}/processes", {"cmd": "true", "tag": "quick"})
    assert r.status_code == 201, r.text
    pid = r.json()["pid"]
    # Until the guest has reaped it (a zombie still answers kill -0).
    tenant.sh(sb, f"while kill -0 {pid} 2>/dev/null; do sleep 0.05; done")
    for target in (pid, "quick"):
        r = tenant.w("POST", f"/v1/sandboxes/{sb}/processes/{target}/stdin", {"data": "late\n"})
        assert r.status_code == 400, r.text
        assert r.json()["error"] == {
            "code": "invalid_request",
            "message": f"process {pid} has exited: it takes no input",
        }, r.text
