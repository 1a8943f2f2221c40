"""The floors pyproject.toml declares for the generated gRPC code are ones it runs on.

``hostagent_pb2.py`` refuses a protobuf runtime older than the protoc that wrote it, and
``hostagent_pb2_grpc.py`` a grpcio older than its generator: with the floors at 5.26 and 1.64
(session 37 found), an install that kept an older protobuf or grpcio could not import the CP or
the agent. Regenerating the code moves these versions; this test moves the floors with them.
The other floors were found by installing the lowest versions (``uv pip install --resolution
lowest-direct``) and importing every module (docs/operations.md, "Dependency floors")."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

import warren.rpc

ROOT = Path(__file__).resolve().parents[3]
RPC = Path(warren.rpc.__file__).parent


def _floor(requirements: list[str], name: str) -> Version:
    for line in requirements:
        req = Requirement(line)
        if req.name == name:
            floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
            assert floors, f"{name} has no >= floor: {line}"
            return max(floors)
    raise AssertionError(f"{name} is not a dependency")


def test_the_floors_cover_the_generated_code() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps, dev = project["dependencies"], project["optional-dependencies"]["dev"]
    grpc_generated = re.search(
        r"GRPC_GENERATED_VERSION = '([0-9.]+)'", (RPC / "hostagent_pb2_grpc.py").read_text()
    )
    assert grpc_generated is not None
    gencode = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),",
        (RPC / "hostagent_pb2.py").read_text(),
    )
    assert gencode is not None
    protobuf_generated = Version(".".join(gencode.groups()))
    assert _floor(deps, "grpcio") >= Version(grpc_generated.group(1))
    assert _floor(dev, "grpcio-tools") >= Version(grpc_generated.group(1))
    assert _floor(deps, "protobuf") >= protobuf_generated
