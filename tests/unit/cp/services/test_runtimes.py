"""Runtime tiers on the control plane (issue 16): which runtime a create gets, what a host may
report it offers, and how a paused sandbox is shown."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from warren.config import RUNTIMES, Settings
from warren.cp.services.host_link import HostReport, RegisterRequest
from warren.cp.services.sandboxes import paused_state_of, runtime_for
from warren.errors import InvalidRequest


def _settings(**kw: Any) -> Settings:
    return Settings(jwt_secret="x" * 40, **kw)


def test_the_default_runtime_is_a_setting_defaulting_to_the_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    assert RUNTIMES == ("runc", "crun", "gvisor")
    assert _settings().default_runtime == "host"
    monkeypatch.setenv("WARREN_DEFAULT_RUNTIME", "gvisor")
    assert _settings().default_runtime == "gvisor"
    monkeypatch.setenv("WARREN_DEFAULT_RUNTIME", "kata")
    with pytest.raises(ValidationError):
        _settings()


def test_a_create_gets_the_runtime_it_asks_for_else_the_default() -> None:
    runc, gvisor = _settings(default_runtime="runc"), _settings(default_runtime="gvisor")
    assert runtime_for(_settings(), None, "minimal", "filesystem") == ""  # its host's default
    assert runtime_for(_settings(), "runc", "minimal", "filesystem") == "runc"
    assert runtime_for(runc, None, "minimal", "filesystem") == "runc"
    assert runtime_for(gvisor, None, "minimal", "filesystem") == "gvisor"
    assert runtime_for(gvisor, "crun", "minimal", "filesystem") == "crun"
    assert runtime_for(runc, "gvisor", "snap", "filesystem") == "gvisor"


def test_a_memory_snapshot_starts_on_gvisor_only() -> None:
    assert runtime_for(_settings(), None, "snap", "memory") == "gvisor"
    assert runtime_for(_settings(), "gvisor", "snap", "memory") == "gvisor"
    for other in ("runc", "crun"):
        with pytest.raises(InvalidRequest) as e:
            runtime_for(_settings(default_runtime="gvisor"), other, "snap", "memory")
        assert e.value.message == (
            'template "snap" is a memory snapshot, which starts on the gvisor runtime only '
            f"(asked for {other})"
        )


@pytest.mark.parametrize("model", [HostReport, RegisterRequest])
def test_a_host_reports_known_runtimes_once_each(model: type[HostReport | RegisterRequest]) -> None:
    got = model.model_validate({"runtimes": ["gvisor", "runc", "gvisor", "crun"]})
    assert got.runtimes == ["runc", "crun", "gvisor"]
    assert model.model_validate({}).runtimes is None
    assert model.model_validate({"default_runtime": "crun"}).default_runtime == "crun"
    assert model.model_validate({}).default_runtime is None
    for bad_default in ("kata", "", "host", ["crun"], 1):
        with pytest.raises(ValidationError):
            model.model_validate({"default_runtime": bad_default})
    for bad in ([], ["kata"], ["runc"] * 9, "runc", [""], ["runc", None], [1]):
        with pytest.raises(ValidationError):
            model.model_validate({"runtimes": bad})


def test_a_paused_sandbox_is_paused_in_memory_unless_its_agent_said_disk() -> None:
    assert paused_state_of({"status": "paused", "paused_state": "disk"}) == "disk"
    assert paused_state_of({"status": "paused", "paused_state": "memory"}) == "memory"
    assert paused_state_of({"status": "paused", "paused_state": None}) == "memory"  # a record from before
    assert paused_state_of({"status": "paused"}) == "memory"
    assert paused_state_of({"status": "running", "paused_state": "disk"}) is None
