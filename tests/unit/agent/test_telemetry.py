"""The agent's metrics address (``--metrics-listen`` / ``WARREN_AGENT_METRICS_LISTEN``) and the
command line's flags over the environment (agent/telemetry.py, agent/settings.py)."""

from __future__ import annotations

import pytest

from warren.agent.settings import load_settings
from warren.agent.telemetry import parse_listen


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    assert parse_listen(":9464") == ("127.0.0.1", 9464)
    assert parse_listen("0") is None and parse_listen("") is None
    for bad in ("9464", "host:", "host:0", "host:70000", "host:abc", "a b"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARREN_AGENT_METRICS_LISTEN", "127.0.0.1:1234")
    monkeypatch.setenv("WARREN_LOG_FORMAT", "json")
    s = load_settings()
    assert (s.metrics_listen, s.log_format) == ("127.0.0.1:1234", "json")
    s = load_settings(metrics_listen="0", log_format="text")
    assert (s.metrics_listen, s.log_format) == ("0", "text")


def test_bad_values_stop_the_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit, match="--metrics-listen"):
        load_settings(metrics_listen="nope")
    with pytest.raises(SystemExit, match="--log-format"):
        load_settings(log_format="xml")
    monkeypatch.setenv("WARREN_AGENT_METRICS_LISTEN", "nope")
    with pytest.raises(SystemExit, match="WARREN_AGENT_METRICS_LISTEN"):
        load_settings()
