"""The committed gRPC code must be exactly what `src/warren/rpc/generate.py` produces."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from warren.rpc import generate

# The grpc plugin stamps its own version into the code (the oldest grpcio it accepts); a clean
# install may bring a newer grpcio-tools than the one that generated the committed files.
_GRPC_STAMP = re.compile(r"^GRPC_GENERATED_VERSION = '[^']*'$", re.MULTILINE)


def _unstamped(text: str) -> str:
    return _GRPC_STAMP.sub("GRPC_GENERATED_VERSION = ...", text)


def test_committed_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is a dev dependency")
    fresh = generate.generate(tmp_path)
    for name, text in fresh.items():
        committed = (generate.HERE / name).read_text()
        stale = f"{name} is stale: run python src/warren/rpc/generate.py"
        assert _unstamped(committed) == _unstamped(text), stale


def test_generated_modules_import_from_the_package() -> None:
    from warren.rpc import hostagent_pb2, hostagent_pb2_grpc

    assert hostagent_pb2.DESCRIPTOR.package == "hostagent.v1"
    assert hasattr(hostagent_pb2_grpc, "HostAgentServicer")
