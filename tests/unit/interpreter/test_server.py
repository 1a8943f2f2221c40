"""Warren's code interpreter server (src/warren/interpreter/) with real Jupyter kernels on this
machine, read back with the E2B SDK's own parser (``e2b_code_interpreter.models.parse_output``)."""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from e2b_code_interpreter.models import Execution, parse_output

from warren.interpreter import server as server_mod
from warren.interpreter.__main__ import start
from warren.interpreter.server import InterpreterServer


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InterpreterServer]:
    s = start("127.0.0.1", 0, str(tmp_path_factory.mktemp("home")))
    s.contexts.max_contexts = 2
    t = threading.Thread(target=s.serve_forever, daemon=True)
    t.start()
    try:
        yield s
    finally:
        s.shutdown()
        s.server_close()
        s.contexts.close()


@pytest.fixture(scope="module")
def url(srv: InterpreterServer) -> str:
    u = f"http://127.0.0.1:{srv.server_address[1]}"
    with httpx.Client(timeout=60) as c:
        while c.get(u + "/health").status_code != 200:  # the default kernel starting
            threading.Event().wait(0.05)
    return u


def run(url: str, code: str, **body: Any) -> Execution:
    execution = Execution()
    with httpx.stream("POST", url + "/execute", json={"code": code, **body}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = list(r.iter_lines())
    assert json.loads(lines[-1]) == {"type": "end_of_execution"}
    for line in lines:
        parse_output(execution, line)
    return execution


def test_value_of_the_last_expression(url: str) -> None:
    ex = run(url, "x = 1; x + 1")
    assert ex.text == "2"
    assert ex.error is None
    assert isinstance(ex.execution_count, int)


def test_stdout_and_stderr_in_order(url: str) -> None:
    ex = run(url, "import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert ex.logs.stdout == ["out\n"]
    assert ex.logs.stderr == ["err\n"]
    assert ex.results == []


def test_error_with_traceback(url: str) -> None:
    ex = run(url, "def f():\n    return 1 / 0\nf()")
    assert ex.error is not None
    assert ex.error.name == "ZeroDivisionError"
    assert ex.error.value == "division by zero"
    # Jupyter's traceback, colours included (as E2B's server sends it).
    assert "return 1 / 0" in re.sub(r"\x1b\[[0-9;]*m", "", ex.error.traceback)


def test_matplotlib_figure_is_a_png_result(url: str) -> None:
    ex = run(url, "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
    pngs = [r.png for r in ex.results if r.png]
    assert len(pngs) == 1
    assert base64.b64decode(pngs[0]).startswith(b"\x89PNG\r\n\x1a\n")


def test_display_formats(url: str) -> None:
    ex = run(url, "from IPython.display import HTML, display\ndisplay(HTML('<b>hi</b>'))\n{'a': 1}")
    html = [r for r in ex.results if r.html]
    assert html[0].html == "<b>hi</b>" and not html[0].is_main_result
    assert ex.text == "{'a': 1}"


def test_env_vars_last_one_execution(url: str) -> None:
    assert run(url, "import os; os.environ.get('WARREN_T')", env_vars={"WARREN_T": "v"}).text == "'v'"
    assert run(url, "import os; os.environ.get('WARREN_T')").text is None


def test_state_is_kept_between_executions(url: str) -> None:
    run(url, "kept = 41")
    assert run(url, "kept + 1").text == "42"


def test_contexts_create_list_restart_remove(url: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    cwd = str(tmp_path_factory.mktemp("ctx"))
    with httpx.Client(base_url=url, timeout=60) as c:
        ctx = c.post("/contexts", json={"cwd": cwd, "language": "python"}).json()
        assert ctx["language"] == "python" and ctx["cwd"] == cwd
        assert ctx["id"] in [x["id"] for x in c.get("/contexts").json()]
        assert run(url, "import os; os.getcwd()", context_id=ctx["id"]).text == repr(cwd)
        run(url, "mine = 7", context_id=ctx["id"])
        assert run(url, "'mine' in globals()").text == "False"  # the default context's
        assert c.post(f"/contexts/{ctx['id']}/restart").status_code == 200
        ex = run(url, "mine", context_id=ctx["id"])
        assert ex.error is not None and ex.error.name == "NameError"
        assert c.delete(f"/contexts/{ctx['id']}").status_code == 200
        assert ctx["id"] not in [x["id"] for x in c.get("/contexts").json()]
        r = c.post("/execute", json={"code": "1", "context_id": ctx["id"]})
        assert r.status_code == 404
        assert c.delete(f"/contexts/{ctx['id']}").status_code == 404


def test_only_python(url: str) -> None:
    with httpx.Client(base_url=url, timeout=60) as c:
        for r in (
            c.post("/execute", json={"code": "1", "language": "javascript"}),
            c.post("/contexts", json={"language": "r"}),
        ):
            assert r.status_code == 400 and "Python only" in r.json()["message"]
        assert run(url, "3", language="python").text == "3"


def test_bad_requests(url: str) -> None:
    with httpx.Client(base_url=url, timeout=60) as c:
        assert c.post("/execute", content=b"not json").status_code == 400
        assert c.post("/execute", json=[1]).status_code == 400
        assert c.post("/execute", json={"code": 1}).status_code == 400
        assert c.post("/execute", json={"code": "1", "env_vars": {"A": 1}}).status_code == 400
        assert c.post("/execute", json={"code": "1", "env_vars": {"A=B": "x"}}).status_code == 400
        assert c.post("/contexts", json={"cwd": "relative"}).status_code == 400
        assert c.post("/contexts", json={"cwd": "/nonexistent-dir"}).status_code == 400
        assert c.get("/nope").status_code == 404
        r = c.post("/execute", content=b"x" * (server_mod.MAX_BODY + 1))
        assert r.status_code == 413
        assert c.get("/health").status_code == 200  # the server still serves


def test_contexts_are_bounded(url: str, srv: InterpreterServer) -> None:
    made: list[str] = []
    with httpx.Client(base_url=url, timeout=60) as c:
        try:
            while len(srv.contexts.list()) < srv.contexts.max_contexts:
                made.append(c.post("/contexts", json={}).json()["id"])
            r = c.post("/contexts", json={})
            assert r.status_code == 429
        finally:
            for cid in made:
                c.delete(f"/contexts/{cid}")


def test_a_client_that_goes_away_interrupts_its_execution(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"code": "print('started', flush=True)\nimport time\ntime.sleep(3600)"}).encode()
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            b"POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        seen = b""
        while b"started" not in seen:
            chunk = s.recv(4096)
            assert chunk
            seen += chunk
    # The kernel was interrupted: the next execution of the same context runs (the test's
    # timeout would catch an hour-long sleep).
    assert run(url, "'after'").text == "'after'"


def test_a_kernel_that_dies_is_started_again(url: str) -> None:
    ex = run(url, "import os\nos._exit(1)")
    assert ex.error is not None and ex.error.name == "KernelDied"
    assert run(url, "'alive'").text == "'alive'"


def test_removing_a_context_ends_its_execution(url: str) -> None:
    with httpx.Client(base_url=url, timeout=60) as c:
        ctx = c.post("/contexts", json={}).json()
        body = {
            "code": "print('started', flush=True)\nimport time\ntime.sleep(3600)",
            "context_id": ctx["id"],
        }
        with c.stream("POST", "/execute", json=body) as r:
            lines = r.iter_lines()
            assert json.loads(next(lines))["type"] == "number_of_executions"
            assert json.loads(next(lines))["text"] == "started\n"
            assert c.delete(f"/contexts/{ctx['id']}").status_code == 200
            rest = [json.loads(line) for line in lines]
        assert rest[-1] == {"type": "end_of_execution"}
        assert any(e["type"] == "error" for e in rest)
