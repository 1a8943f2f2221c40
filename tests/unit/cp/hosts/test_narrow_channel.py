"""The narrow channel's replacement: a renewed certificate leaves the old channel's calls (a
watch, a preview's WebSocket) until the old certificate expires, not 600 s."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import grpc.aio
import pytest

from warren import clock
from warren.cp.hosts import narrow_channel
from warren.cp.security import ca as ca_mod
from warren.cp.security.ca import CertificateAuthority


async def test_a_renewal_leaves_the_old_channels_calls_until_its_certificate_expires(
    monkeypatch: pytest.MonkeyPatch, fake_clock: Any
) -> None:
    ca = CertificateAuthority.generate()
    ca.client_cert()
    client = SimpleNamespace(
        ca=ca, host_id="host-narrowtest", address="127.0.0.1:9", generation=ca.client_generation
    )
    retired: list[tuple[grpc.aio.Channel, float]] = []
    monkeypatch.setattr(narrow_channel, "_retire", lambda ch, grace: retired.append((ch, grace)))
    first = narrow_channel.dial_channel(client)  # type: ignore[arg-type]
    assert narrow_channel.dial_channel(client) is first  # type: ignore[arg-type]
    try:
        later = timedelta(hours=12, minutes=1)  # past the client certificate's half-life
        real = ca_mod._utcnow()
        monkeypatch.setattr(ca_mod, "_utcnow", lambda: real + later)
        fake_clock.advance(later.total_seconds())
        ca.client_cert()  # renewed
        client.generation = ca.client_generation
        second = narrow_channel.dial_channel(client)  # type: ignore[arg-type]
        assert second is not first
        [(old, grace)] = retired
        assert old is first
        # The old certificate has ~11 h 59 min left: its calls may go on that long (600 s before).
        assert 11 * 3600 < grace < 12 * 3600, grace
    finally:
        await first.close(None)
        await narrow_channel.close_channels()


def test_a_certificate_about_to_expire_still_gives_the_minimum_grace(fake_clock: Any) -> None:
    soon = clock.now() + timedelta(seconds=30)
    assert narrow_channel._grace(soon) == narrow_channel.MIN_GRACE_S
    assert narrow_channel._grace(clock.now() + timedelta(hours=2)) == pytest.approx(2 * 3600 - 60, abs=5)
