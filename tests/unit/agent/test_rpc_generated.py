"""The committed gRPC code must be exactly what `src/warren/rpc/generate.py` produces."""

from __future__ import annotations

from pathlib import Path

import pytest

from warren.rpc import generate


def test_committed_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is a dev dependency")
    fresh = generate.generate(tmp_path)
    for name, text in fresh.items():
        committed = (generate.HERE / name).read_text()
        assert committed == text, f"{name} is stale: run python src/warren/rpc/generate.py"


def test_generated_modules_import_from_the_package() -> None:
    from warren.rpc import hostagent_pb2, hostagent_pb2_grpc

    assert hostagent_pb2.DESCRIPTOR.package == "hostagent.v1"
    assert hasattr(hostagent_pb2_grpc, "HostAgentServicer")
