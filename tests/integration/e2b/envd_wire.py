"""Raw Connect (JSON codec) calls to a sandbox's envd on the E2B listener, for the tests that
need what E2B's SDK never sends (malformed envelopes, other signals, absurd deadlines)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import httpx

from tests.harness.cp import JWT_SECRET
from warren.cp.services.envd_tokens import envd_access_token


def envelope(msg: dict[str, Any] | bytes, flags: int = 0) -> bytes:
    payload = msg if isinstance(msg, bytes) else json.dumps(msg).encode()
    return bytes((flags,)) + len(payload).to_bytes(4, "big") + payload


def envelopes(body: bytes) -> list[tuple[int, dict[str, Any]]]:
    out, i = [], 0
    while i + 5 <= len(body):
        flags, size = body[i], int.from_bytes(body[i + 1 : i + 5], "big")
        out.append((flags, json.loads(body[i + 5 : i + 5 + size])))
        i += 5 + size
    assert i == len(body), "trailing bytes after the last envelope"
    return out


@dataclass
class Envd:
    url: str  # the E2B listener
    sandbox_id: str

    def headers(self, **extra: str) -> dict[str, str]:
        token = envd_access_token(JWT_SECRET, self.sandbox_id)
        h = {"E2b-Sandbox-Id": self.sandbox_id, "E2b-Sandbox-Port": "49983", "X-Access-Token": token}
        return h | {"Connect-Protocol-Version": "1"} | extra

    def unary(self, method: str, msg: dict[str, Any], **headers: str) -> httpx.Response:
        h = self.headers(**headers) | {"Content-Type": "application/json"}
        return httpx.post(f"{self.url}/process.Process/{method}", json=msg, headers=h, timeout=30)

    def stream(self, method: str, body: bytes, **headers: str) -> list[tuple[int, dict[str, Any]]]:
        """A server stream's envelopes (read to the end)."""
        h = self.headers(**headers) | {"Content-Type": "application/connect+json"}
        r = httpx.post(f"{self.url}/process.Process/{method}", content=body, headers=h, timeout=60)
        assert r.status_code == 200, r.text
        return envelopes(r.content)

    def run(self, cmd: str, **headers: str) -> tuple[bytes, dict[str, Any]]:
        """``bash -c cmd`` to its end: (stdout, the end event)."""
        start = {"process": {"cmd": "/bin/bash", "args": ["-c", cmd]}}
        out, end = b"", None
        for flags, msg in self.stream("Start", envelope(start), **headers):
            if flags & 2:
                assert msg == {}, msg
                continue
            ev = msg["event"]
            if "data" in ev and "stdout" in ev["data"]:
                out += base64.b64decode(ev["data"]["stdout"])
            if "end" in ev:
                end = ev["end"]
        assert end is not None
        return out, end


def end_error(items: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """The error of a stream that must have failed."""
    flags, last = items[-1]
    assert flags & 2 and "error" in last, items
    error: dict[str, Any] = last["error"]
    return error
