"""The `base` platform template built in the background by the control plane (what `warren up`
turns on with WARREN_BUILD_BASE_TEMPLATE), through the real build service, on a live platform.

The package's Warrenfile installs packages with apt, which needs a Debian mirror: the tests
point WARREN_BASE_TEMPLATE_SPEC at a spec that makes the same user without apt, so they test
the mechanism (a platform template, its user and workdir as every sandbox's defaults, skipped
when current) and not the mirror. The package's own spec is checked by the parser."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.cp import InProcessCP
from tests.harness.platform import Platform, running_platform
from warren import Sandbox
from warren.cp.services import platform_templates
from warren.cp.services.template_spec import parse

pytestmark = [pytest.mark.root, pytest.mark.timeout(600)]

SPEC = """\
FROM minimal
RUN echo 'user:x:1000:1000::/home/user:/bin/bash' >> /etc/passwd \\
    && echo 'user:x:1000:' >> /etc/group \\
    && mkdir -p /home/user && chown 1000:1000 /home/user
USER user
WORKDIR /home/user
"""


@pytest.fixture(scope="module")
async def spec_path(platform_dir: Path) -> Path:
    path = platform_dir / "base.Warrenfile"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
async def base_platform(db_url: str, platform_dir: Path, spec_path: Path) -> AsyncIterator[Platform]:
    # The CP process takes its settings from the environment it starts with.
    env = {"WARREN_BUILD_BASE_TEMPLATE": "1", "WARREN_BASE_TEMPLATE_SPEC": str(spec_path)}
    async with running_platform(db_url, platform_dir, env) as p:
        yield p


async def _wait_for_base(p: Platform, timeout: float = 300) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=p.url, headers=p.headers, timeout=60) as http:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = await http.get("/v1/templates/base")
            if r.status_code == 200:
                return r.json()
            assert r.status_code == 404, r.text
            await asyncio.sleep(0.5)
    raise AssertionError(f"base was not built:\n{p.cp.log_tail()}")


async def test_base_is_built_once_a_host_is_online_and_runs_as_its_user(base_platform: Platform) -> None:
    detail = await _wait_for_base(base_platform)
    (version,) = detail["versions"]
    assert detail["platform"] is True and version["source"] == "build"
    assert (version["config"]["user"], version["config"]["workdir"]) == ("user", "/home/user")

    def use() -> None:
        with Sandbox.create("base", **base_platform.sdk()) as sbx:
            assert sbx.commands.run("whoami; pwd").stdout == "user\n/home/user\n"
            sbx.files.write("hello.txt", "hi")  # the template's user, under its home
            out = sbx.commands.run("stat -c '%U %n' /home/user/hello.txt", user="root").stdout
            assert out == "user /home/user/hello.txt\n"
            assert sbx.commands.run("id -u", user="root").stdout == "0\n"

    await asyncio.to_thread(use)


async def test_a_current_base_is_not_built_again(
    base_platform: Platform, db_url: str, spec_path: Path
) -> None:
    await _wait_for_base(base_platform)
    home = spec_path.parent / "second-cp"
    cp = await InProcessCP(db_url, home).start()
    try:
        state = cp.app.state
        task = platform_templates.base_template(state.engine, state.builds, str(spec_path))
        task.start()
        assert task.task is not None
        assert await asyncio.wait_for(task.task, 60) == "current"
    finally:
        await cp.stop()
    rows = await base_platform.sql("SELECT count(*) FROM template_builds WHERE name = 'base'")
    assert rows[0][0] == 1


def test_the_packaged_base_spec_parses_to_its_user_and_workdir() -> None:
    spec = parse(platform_templates.BASE_SPEC.read_text(), {})
    assert (spec.config.user, spec.config.workdir) == ("user", "/home/user")
    text = platform_templates.BASE_SPEC.read_text()
    for pkg in ("bash", "python3", "python3-pip", "python-is-python3", "sudo", "curl", "git",
                "ca-certificates", "build-essential"):  # fmt: skip
        assert f" {pkg} " in text or f" {pkg}\n" in text, pkg
    assert "--uid 1000" in text and "/etc/sudoers.d/user" in text and "chmod 0440" in text
