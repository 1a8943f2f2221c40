"""The SDK's exec stdin frames stay under the server's smallest WebSocket message limit
(WARREN_WS_MAX_MESSAGE >= 256 KiB) whatever the data, and carry it unchanged."""

from __future__ import annotations

import base64
import json

import pytest

from warren.sdk._exec_frames import STDIN_CHUNK, stdin_frames

SMALLEST_LIMIT = 256 << 10


def _joined(frames: list[dict[str, object]]) -> bytes:
    out = b""
    for f in frames:
        out += base64.b64decode(str(f["data_b64"])) if "data_b64" in f else str(f["data"]).encode()
    return out


@pytest.mark.parametrize(
    "data",
    [
        "\x01" * (3 * STDIN_CHUNK + 5),  # JSON escapes each as \u0001: 6 bytes
        "\U0001f600" * STDIN_CHUNK,  # 4 UTF-8 bytes, cut in the middle at chunk edges
        bytes(range(256)) * 1000,  # not UTF-8: base64
        b"plain" * 100_000,
        "small",
    ],
)
def test_frames_fit_and_carry_the_data(data: str | bytes) -> None:
    frames = list(stdin_frames(data))
    assert all(len(json.dumps(f)) < SMALLEST_LIMIT for f in frames)
    assert _joined(frames) == (data.encode() if isinstance(data, str) else data)
