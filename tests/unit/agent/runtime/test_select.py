"""RuntimeSet: which runtime a create gets, and the refusal of one the host does not offer."""

from __future__ import annotations

from pathlib import Path

import pytest

from warren.agent.runtime.gvisor import GvisorRuntime, _first_line
from warren.agent.runtime.oci import OciRuntime
from warren.agent.runtime.select import RuntimeSet
from warren.errors import Conflict


def runtimes(tmp_path: Path, *, gvisor: bool) -> RuntimeSet:
    offered: dict = {"runc": OciRuntime("runc", tmp_path / "runc")}
    if gvisor:
        offered["gvisor"] = GvisorRuntime(tmp_path / "runsc", tmp_path / "sandboxes")
    return RuntimeSet(offered, "runc")


def test_empty_is_the_default_and_the_choice_is_kept_per_sandbox(tmp_path: Path) -> None:
    rs = runtimes(tmp_path, gvisor=True)
    assert rs.resolve("") == "runc" and rs.offered() == ["runc", "gvisor"]
    rs.assign("sb-a", "gvisor")
    rs.assign("sb-b", "")
    assert (rs.name_of("sb-a"), rs.name_of("sb-b")) == ("gvisor", "runc")
    assert rs.gvisor("sb-a") is not None and rs.gvisor("sb-b") is None
    rs.forget("sb-a")
    assert rs.name_of("sb-a") == "runc"


def test_a_runtime_not_offered_is_refused_naming_what_is(tmp_path: Path) -> None:
    rs = runtimes(tmp_path, gvisor=False)
    with pytest.raises(Conflict, match=r"not available on this host 'gvisor' \(this host offers: runc\)"):
        rs.assign("sb-a", "gvisor")
    with pytest.raises(Conflict, match="unknown runtime 'kata'"):
        rs.resolve("kata")
    assert rs.name_of("sb-a") == "runc"  # nothing was assigned


def test_a_failed_save_is_reported_by_its_reason_not_the_object_dump() -> None:
    stderr = (
        'checkpoint failed: checkpointing container "sb-x": encoding error at object '
        "tcp.endpoint{TCPEndpointStateInner:stack.TCPEndpointStateInner{TSOffset:0}, x:{}}: "
        "endpoint still has waiters upon save:\ngoroutine 146 [running]:\nstack"
    )
    assert _first_line(stderr) == "cannot save tcp.endpoint: endpoint still has waiters upon save"
