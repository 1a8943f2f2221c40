"""E2B's ``e2b-code-interpreter`` SDK, unchanged, against a live platform (docs/e2b.md §4): the
``code-interpreter-v1`` template built from the repository through Warren's own SDK, its sandboxes
created through the E2B control API, ``run_code`` and contexts through the port plane to Warren's
interpreter server on port 49999."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from e2b_code_interpreter import AsyncSandbox, Sandbox
from e2b_code_interpreter.models import ExecutionError

from tests.harness.e2b import E2BEnv, e2b_environment
from tests.harness.interpreter import build_interpreter_template
from tests.harness.platform import Platform

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]


@pytest.fixture(scope="module")
def e2b_env(platform: Platform) -> Iterator[E2BEnv]:
    name = build_interpreter_template(platform)
    with e2b_environment(platform, template=name) as env:
        yield env


@pytest.fixture(scope="module")
def sbx(e2b_env: E2BEnv) -> Iterator[Sandbox]:
    # The SDK's default template: code-interpreter-v1.
    s = Sandbox.create(timeout=600, envs={"FROM_CREATE": "yes"})
    try:
        yield s
    finally:
        s.kill()


def _plain(traceback: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", traceback)


def test_run_code_value(sbx: Sandbox) -> None:
    execution = sbx.run_code("x = 1; x + 1")
    assert execution.text == "2"
    assert execution.error is None
    assert sbx.run_code("x * 10").text == "10"  # the same kernel


def test_stdout_and_stderr_callbacks(sbx: Sandbox) -> None:
    out: list[str] = []
    err: list[str] = []
    execution = sbx.run_code(
        "import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)",
        on_stdout=lambda m: out.append(m.line),
        on_stderr=lambda m: err.append(m.line),
    )
    assert out == ["to stdout\n"] and err == ["to stderr\n"]
    assert execution.logs.stdout == out and execution.logs.stderr == err


def test_error_with_traceback(sbx: Sandbox) -> None:
    seen: list[ExecutionError] = []
    execution = sbx.run_code("def boom():\n    raise ValueError('bad value')\nboom()", on_error=seen.append)
    assert execution.error is not None and seen == [execution.error]
    assert execution.error.name == "ValueError"
    assert execution.error.value == "bad value"
    assert "raise ValueError('bad value')" in _plain(execution.error.traceback)


def test_matplotlib_png(sbx: Sandbox) -> None:
    execution = sbx.run_code(
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')\nplt.show()"
    )
    pngs = [r.png for r in execution.results if r.png]
    assert len(pngs) == 1
    assert base64.b64decode(pngs[0]).startswith(b"\x89PNG\r\n\x1a\n")


def test_env_vars_and_user(sbx: Sandbox) -> None:
    code = "import os, getpass\n"
    code += "(os.environ['GREETING'], os.environ['FROM_CREATE'], getpass.getuser(), os.getcwd())"
    execution = sbx.run_code(code, envs={"GREETING": "hi"})
    assert execution.text == "('hi', 'yes', 'user', '/home/user')"
    assert sbx.run_code("import os; os.environ.get('GREETING')").text is None  # that execution's only


def test_contexts(sbx: Sandbox) -> None:
    ctx = sbx.create_code_context(cwd="/tmp")
    assert ctx.language == "python" and ctx.cwd == "/tmp"
    assert ctx.id in [c.id for c in sbx.list_code_contexts()]
    sbx.run_code("only_here = 5", context=ctx)
    assert sbx.run_code("import os; (only_here, os.getcwd())", context=ctx).text == "(5, '/tmp')"
    assert sbx.run_code("'only_here' in globals()").text == "False"
    sbx.restart_code_context(ctx)
    execution = sbx.run_code("only_here", context=ctx)
    assert execution.error is not None and execution.error.name == "NameError"
    sbx.remove_code_context(ctx)
    assert ctx.id not in [c.id for c in sbx.list_code_contexts()]


def test_a_timed_out_execution_is_interrupted(sbx: Sandbox) -> None:
    from e2b import TimeoutException

    with pytest.raises(TimeoutException):
        sbx.run_code("import time\nfor _ in range(3600):\n    time.sleep(1)", timeout=2)
    # The SDK dropped the connection, the proxy the upstream one, and the server interrupted the
    # kernel: the context runs the next cell (an hour-long loop would hold it otherwise).
    assert sbx.run_code("'free again'").text == "'free again'"


def test_private_sandbox_needs_the_traffic_token(e2b_env: E2BEnv) -> None:
    s = Sandbox.create(timeout=600, network={"allow_public_traffic": False})
    try:
        assert s.traffic_access_token
        assert s.run_code("21 * 2").text == "42"  # the SDK sends the token
        h = {"E2b-Sandbox-Id": s.sandbox_id, "E2b-Sandbox-Port": "49999"}
        r = httpx.post(e2b_env.url + "/execute", json={"code": "1"}, headers=h, timeout=30)
        assert r.status_code == 401 and r.json()["code"] == 401
    finally:
        s.kill()


def test_other_languages_are_refused_clearly(sbx: Sandbox) -> None:
    from e2b import SandboxException

    with pytest.raises(SandboxException, match="Python only"):
        sbx.run_code("console.log(1)", language="javascript")


@pytest.fixture(scope="module")
async def async_sbx(e2b_env: E2BEnv) -> AsyncIterator[AsyncSandbox]:
    s = await AsyncSandbox.create(timeout=600)
    try:
        yield s
    finally:
        await s.kill()


async def test_async_run_code(async_sbx: AsyncSandbox) -> None:
    out: list[str] = []

    async def on_stdout(m: object) -> None:
        out.append(str(m))

    execution = await async_sbx.run_code("print('async'); 6 * 7", on_stdout=on_stdout)
    assert execution.text == "42"
    assert out == ["async\n"]
    ctx = await async_sbx.create_code_context()
    assert (await async_sbx.run_code("1 + 1", context=ctx)).text == "2"
    await async_sbx.remove_code_context(ctx)
