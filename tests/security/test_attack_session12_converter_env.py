"""Session 12: what a compromised layer converter finds in its own process.

The converter parses tenant-controlled tars as ``nobody``; a layer that took it over can read
its own memory and ``/proc/self/environ``, and exec what it likes. It found the agent's whole
environment there (every ``WARREN_*`` setting the agent was started with), and nothing kept
an exec'd program from gaining privileges (a set-uid binary). Now the converter server starts
with a minimal environment, the native converter is exec'd with one, and both converters and
``tar2sqfs`` run with ``no_new_privs``. ``tar2sqfs`` ran as nobody and, after its exec, was
dumpable: any other process of nobody (a converter child a layer took over) could ptrace it and
rewrite another layer's image. It now runs as a uid of its own per run.

Read as root during a real conversion through the converter server (the native converter and
the Python one), and for ``tar2sqfs`` as the agent starts it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from tests.security.test_attack_session12_native_convert import (
    as_nobody_probe,
    children_running,
    converter_running,
)
from warren.agent import layer_convert, layer_image

pytestmark = pytest.mark.root  # the converter's child drops to nobody; /proc read as root

SECRET = "WARREN_SESSION12_CONVERTER_SECRET"


def env_and_nnp(pid: int) -> tuple[dict[str, str], str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [p.decode("utf-8", "replace") for p in f.read().split(b"\0") if p]
    env = dict(p.split("=", 1) for p in pairs if "=" in p)
    with open(f"/proc/{pid}/status") as f:
        nnp = next(line.split()[1] for line in f if line.startswith("NoNewPrivs:"))
    return env, nnp


def wait_for(find: Callable[[], Iterable[int]], what: str) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = list(find())
        if pids:
            return int(pids[0])
        time.sleep(0.05)
    raise AssertionError(f"{what} was not found")


@pytest.fixture
def fresh_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A converter server started by an agent whose environment holds a WARREN_ secret."""
    monkeypatch.setenv(SECRET, "the agent's token")
    with layer_convert._lock:
        old, layer_convert._server = layer_convert._server, None
    if old is not None:
        old[1].close()  # that server ends on its own
    layer_convert.warm()
    yield
    with layer_convert._lock:
        server, layer_convert._server = layer_convert._server, None
    if server is not None:
        server[1].close()
        server[0].wait(timeout=60)


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_the_converter_holds_none_of_the_agents_environment(fresh_server: None, native: bool) -> None:
    server = layer_convert._server
    assert server is not None
    if native:
        exe = layer_convert.native_converter()
        assert exe is not None, "the compiled converter is not built: run `make setup`"
    else:
        exe = os.path.realpath(layer_convert.sys.executable)
    with converter_running(server[0].pid, native=native, exe=exe) as pid:
        env, nnp = env_and_nnp(pid)
        assert not [k for k in env if k.startswith("WARREN_")], sorted(env)
        assert nnp == "1"
        server_env, _ = env_and_nnp(server[0].pid)  # what a Python child's memory holds
        assert not [k for k in server_env if k.startswith("WARREN_")], sorted(server_env)


def test_tar2sqfs_holds_none_of_the_agents_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET, "the agent's token")
    out = layer_image._out_dir(tmp_path)  # nobody's, as the agent makes it
    packer = layer_image._Packer(1 << 20, out)
    try:
        tar2sqfs = os.path.realpath(layer_image.packer_path())  # or the image writer, where built
        pid = wait_for(lambda: children_running(os.getpid(), tar2sqfs), "the packer")
        env, nnp = env_and_nnp(pid)
        assert not [k for k in env if k.startswith("WARREN_")], sorted(env)
        assert nnp == "1"
        # Another process of nobody (a converter child a layer took over) cannot trace it: it
        # runs as a uid of its own, not nobody.
        assert os.stat(f"/proc/{pid}").st_uid not in (0, layer_image.NOBODY)
        got = as_nobody_probe(pid)
        assert got["ptrace"] != "attached", got
        assert not got["environ"].startswith("read"), got
    finally:
        packer.kill()
        packer.close_stdin()
