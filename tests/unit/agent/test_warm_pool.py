"""The warm-pool settings and requests the agent accepts (warm_pool.parse_spec, check_pool)."""

from __future__ import annotations

import pytest

from warren.agent.chain import Chain
from warren.agent.settings import load_settings
from warren.agent.warm_pool import MAX_POOL_SIZE, check_pool, parse_spec
from warren.errors import InvalidRequest


def test_parse_spec() -> None:
    assert parse_spec("") == {}
    assert parse_spec("minimal=4") == {"minimal": 4}
    assert parse_spec(" minimal = 0 ,") == {"minimal": 0}
    # Pools by runtime (session 13): no runtime is the agent's default.
    assert parse_spec("minimal@runc=2,minimal@crun=4,minimal=1") == {
        "minimal@runc": 2,
        "minimal@crun": 4,
        "minimal": 1,
    }
    for bad in (
        "minimal", "minimal=x", "minimal=-1", "python=2", f"minimal={MAX_POOL_SIZE + 1}", "python@crun=1",
        "minimal=1,minimal=2", "minimal@runc=1,minimal@runc=2",
    ):  # fmt: skip
        with pytest.raises(ValueError):
            parse_spec(bad)
    with pytest.raises(ValueError, match="unknown runtime 'kata'"):
        parse_spec("minimal@kata=1")
    with pytest.raises(ValueError, match="gVisor sandboxes are not pooled"):
        parse_spec("minimal@gvisor=1")
    with pytest.raises(ValueError, match="unknown runtime ''"):
        parse_spec("minimal@=1")


def test_check_pool() -> None:
    check_pool("minimal", 4, None)
    check_pool("acme/python:3.12", 1, Chain.checked("minimal", ["ab" * 32]))
    check_pool("python", 0, None)  # removing needs no chain
    check_pool("minimal@runc", 2, None)
    check_pool("acme/python:3.12@crun", 1, Chain.checked("minimal", ["ab" * 32]))
    for name, size, chain in (
        ("minimal", -1, None),
        ("minimal", MAX_POOL_SIZE + 1, None),
        ("../etc", 1, None),
        ("", 1, None),
        ("x" * 300, 1, None),
        ("python", 1, None),  # a template other than minimal needs its chain
        ("python@crun", 1, None),
        ("minimal@kata", 1, None),
        ("minimal@gvisor", 1, None),
    ):
        with pytest.raises(InvalidRequest):
            check_pool(name, size, chain)


def test_settings_and_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARREN_AGENT_WARM_POOL", "minimal=3")
    assert load_settings().warm_pool == "minimal=3"
    assert load_settings(warm_pool="minimal=5").warm_pool == "minimal=5"  # the flag wins
    with pytest.raises(SystemExit, match="--warm-pool"):
        load_settings(warm_pool="python=1")
    assert load_settings(warm_pool="minimal@runc=2").warm_pool == "minimal@runc=2"
    with pytest.raises(SystemExit, match="--warm-pool: warm pool 'minimal@kata': unknown runtime 'kata'"):
        load_settings(warm_pool="minimal@kata=2")
    monkeypatch.setenv("WARREN_AGENT_WARM_POOL", "minimal=lots")
    with pytest.raises(SystemExit, match="WARREN_AGENT_WARM_POOL"):
        load_settings()
