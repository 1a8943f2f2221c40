"""Regenerate the committed gRPC code from ``hostagent.proto``.

Run ``python -m warren.rpc.generate`` (needs the dev dependencies grpcio-tools and
mypy-protobuf). It writes ``hostagent_pb2.py``, ``hostagent_pb2.pyi``, ``hostagent_pb2_grpc.py``
and ``hostagent_pb2_grpc.pyi`` next to the proto, with the import of the messages module made
package-relative so ``warren.rpc`` works from any working directory. The last one (from
mypy-protobuf's ``protoc-gen-mypy_grpc``) types the stub: on a ``grpc.aio`` channel
``HostAgentStub`` is a ``HostAgentAsyncStub`` whose methods take and answer the proto's messages,
so mypy checks every agent call. ``tests/unit/agent/test_rpc_generated.py`` checks the committed
files match a fresh run.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = "hostagent.proto"
OUTPUTS = ("hostagent_pb2.py", "hostagent_pb2.pyi", "hostagent_pb2_grpc.py", "hostagent_pb2_grpc.pyi")
# mypy-protobuf's plugin for the typed stub; protoc finds plugins by path, not by module.
GRPC_STUB_PLUGIN = "protoc-gen-mypy_grpc"


def _plugin(name: str) -> str:
    """The plugin script installed beside this interpreter (a venv's bin/, which need not be
    on PATH), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install the dev dependency mypy-protobuf")
    return found


def generate(out_dir: Path) -> dict[str, str]:
    """Run protoc into ``out_dir`` and return {file name: text} of the fixed-up outputs."""
    from grpc_tools import protoc  # dev dependency; imported late so the module loads without it

    include = Path(protoc.__file__).resolve().parent / "_proto"
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{HERE}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            f"--plugin={GRPC_STUB_PLUGIN}={_plugin(GRPC_STUB_PLUGIN)}",
            f"--mypy_grpc_out={out_dir}",
            str(HERE / PROTO),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")
    texts = {name: (out_dir / name).read_text() for name in OUTPUTS}
    # protoc emits an absolute `import hostagent_pb2`, which only works with rpc/ on sys.path.
    for name in ("hostagent_pb2_grpc.py", "hostagent_pb2_grpc.pyi"):
        texts[name] = re.sub(
            r"^import hostagent_pb2 as", "from . import hostagent_pb2 as", texts[name], flags=re.M
        )
    return texts


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in generate(Path(tmp)).items():
            (HERE / name).write_text(text)
            print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
