"""E2B's SDKs against a live platform (docs/e2b.md): the environment that points them at the
platform's E2B-compatible listener, and a small template with E2B's conventions (``/bin/bash``,
an account ``user`` with its home, the default user) built without the network.

Usage in a test module (module-scoped, one platform per module; tests/integration/e2b/conftest.py
gives its modules the ``e2b_env`` fixture)::

    @pytest.fixture(scope="module")
    def e2b_env(platform: Platform) -> Iterator[E2BEnv]:
        with e2b_environment(platform) as env:
            yield env

    def test_x(e2b_env: E2BEnv) -> None:
        sbx = e2b.Sandbox.create(template=E2B_TEST_TEMPLATE)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from tests.harness.environ import environ
from tests.harness.platform import Platform

# FROM minimal (Debian minbase: bash, useradd) with E2B's account `user` (uid 1000) as the
# default user, at its home: what E2B's `base` template offers that the SDK's tests rely on.
# No package is installed, so the build needs no network and takes a few seconds.
E2B_TEST_TEMPLATE = "e2b-test"
E2B_TEST_SPEC = """\
FROM minimal
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash user
USER user
WORKDIR /home/user
"""


@dataclass(frozen=True)
class E2BEnv:
    platform: Platform
    url: str  # the E2B listener, for E2B_API_URL and E2B_SANDBOX_URL
    api_key: str
    template: str

    def opts(self) -> dict[str, str]:
        """The SDK's keyword arguments for the same settings as the environment."""
        return {"api_key": self.api_key}


def build_test_template(platform: Platform, name: str = E2B_TEST_TEMPLATE) -> str:
    """Build :data:`E2B_TEST_SPEC` as ``name`` through Warren's own API (and wait for it)."""
    from warren.sdk import Template

    Template.from_warrenfile(E2B_TEST_SPEC).build(name, timeout=300, **platform.sdk())
    return name


@contextlib.contextmanager
def e2b_environment(platform: Platform, *, template: str | None = None) -> Iterator[E2BEnv]:
    """``E2B_API_URL``, ``E2B_SANDBOX_URL`` and ``E2B_API_KEY`` set for the SDK (restored
    afterwards), with the test template built unless ``template`` names another."""
    name = template or build_test_template(platform)
    url = platform.cp.e2b_url
    values = {"E2B_API_URL": url, "E2B_SANDBOX_URL": url, "E2B_API_KEY": platform.api_key}
    with environ(values, unset=["E2B_DOMAIN"]):
        yield E2BEnv(platform, url, platform.api_key, name)


def warren_sh(platform: Platform, sandbox_id: str, script: str) -> str:
    """A shell command in the sandbox through Warren's own API (what E2B's SDK does is the
    test's subject, so the test's own look inside goes around it); it must exit 0."""
    body = {"cmd": "/bin/sh", "args": ["-c", script], "timeout_sec": 60}
    url = f"{platform.url}/v1/sandboxes/{sandbox_id}/exec"
    r = httpx.post(url, json=body, headers=platform.headers, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["exit_code"] == 0, r.json()
    return str(r.json()["stdout"])
