"""Session 10's hostile tenant: build contexts spooled to the control plane's disk without bound
on how many at once.

``POST /v1/templates`` (multipart) streams its ``context`` part to ``<home>/build-spool`` (up to
``WARREN_BUILD_MAX_CONTEXT_MB``, 512 MiB) and only then asks whether the team may start
another build (``WARREN_BUILD_MAX_PER_TEAM``, 429 ``too_many_builds``). Image imports count
their upload in their bound (``WARREN_IMPORT_MAX_PER_TEAM``, "upload included"); builds do not,
so one API key holding N slow uploads open has N x 512 MiB on the CP's disk at once (100
uploads: 50 GiB), whatever the build bound says.

Expected: uploads past the team's build bound are refused (429) before their bytes are read.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

BOUND = 2  # WARREN_BUILD_MAX_PER_TEAM's default
UPLOADS = BOUND + 4
BOUNDARY = "warrenattack"


@pytest.fixture(scope="module")
def mallory(platform: Platform) -> Tenant:
    return signup(platform.url, "mallory")


def spooled(platform: Platform) -> list[Path]:
    return sorted((Path(platform.cp.home) / "build-spool").glob(".upload-*"))


def open_upload(url: str, api_key: str) -> socket.socket:
    """A build whose context part has begun (1 MiB of a declared 64 MiB) and then stalls."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    name = f"slow-{uuid.uuid4().hex[:8]}"
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="name"\r\n\r\n{name}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="spec"\r\n\r\nFROM minimal\nCOPY . /x\n\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="context"; filename="c.tar"\r\n'
        "Content-Type: application/x-tar\r\n\r\n"
    ).encode()
    s = socket.create_connection((host, int(port)), timeout=30)
    s.sendall(
        f"POST /v1/templates HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {api_key}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(head) + (64 << 20)}\r\n\r\n".encode()
        + head
        + bytes(1 << 20)
    )
    return s


def answered_429(s: socket.socket) -> bool:
    s.settimeout(0.05)
    try:
        got = s.recv(64)
    except TimeoutError:
        return False
    return got.startswith(b"HTTP/1.1 429 ")


@pytest.fixture
def uploads(platform: Platform, mallory: Tenant) -> Iterator[list[socket.socket]]:
    socks = [open_upload(platform.url, mallory.api_key) for _ in range(UPLOADS)]
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def test_context_uploads_past_the_build_bound_are_refused_before_they_are_spooled(
    platform: Platform, uploads: list[socket.socket]
) -> None:
    refused: set[int] = set()
    most = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        refused |= {i for i, s in enumerate(uploads) if i not in refused and answered_429(s)}
        most = max(most, len(spooled(platform)))
        assert most <= BOUND, f"{most} build contexts spooled at once for one team (its bound is {BOUND})"
        if len(refused) >= UPLOADS - BOUND:
            return
        time.sleep(0.2)
    raise AssertionError(f"only {len(refused)} of {UPLOADS} uploads refused; {most} spooled at once")
