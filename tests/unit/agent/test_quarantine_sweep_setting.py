"""``WARREN_AGENT_QUARANTINE_SWEEP_S``: how often the agent retries the destroys that left
something of a sandbox alive (agent/teardown.py, the slot quarantine)."""

from __future__ import annotations

import pytest

from warren.agent.settings import load_settings

NAME = "WARREN_AGENT_QUARANTINE_SWEEP_S"


def test_ten_seconds_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NAME, raising=False)
    assert load_settings().quarantine_sweep_s == 10.0
    monkeypatch.setenv(NAME, "2.5")
    assert load_settings().quarantine_sweep_s == 2.5
    monkeypatch.setenv(NAME, "")
    assert load_settings().quarantine_sweep_s == 10.0


@pytest.mark.parametrize("value", ["0", "0.5", "601", "soon"])
def test_outside_one_to_600_seconds_stops_the_agent_naming_it(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(NAME, value)
    with pytest.raises(SystemExit, match=f"{NAME}='{value}'"):
        load_settings()
