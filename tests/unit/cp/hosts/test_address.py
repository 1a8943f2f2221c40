"""Agent addresses the CP accepts at registration: what it can dial, nothing else."""

from __future__ import annotations

import pytest

from warren.cp.services.host_link import check_address
from warren.errors import InvalidRequest


@pytest.mark.parametrize("address", ["10.0.0.5:50051", "[::1]:50051", "agent-1.example.com:1", "h:65535"])
def test_dialable_addresses_pass(address: str) -> None:
    check_address(address)


@pytest.mark.parametrize(
    "address", ["10.0.0.5", "10.0.0.5:", "h:0", "h:65536", "h:x", "[::1", "[zz]:1", "-h:1", "a b:1", ":1"]
)
def test_undialable_addresses_are_400(address: str) -> None:
    with pytest.raises(InvalidRequest, match="invalid address"):
        check_address(address)
