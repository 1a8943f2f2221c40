"""Regenerate the committed gRPC code from ``hostagent.proto``.

Run ``python src/warren/rpc/generate.py`` (needs grpcio-tools). It writes ``hostagent_pb2.py``,
``hostagent_pb2.pyi`` and ``hostagent_pb2_grpc.py`` next to the proto, with the import of the
messages module made package-relative so ``warren.rpc`` works from any working directory.
``tests/unit/agent/test_rpc_generated.py`` checks the committed files match a fresh run.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = "hostagent.proto"
OUTPUTS = ("hostagent_pb2.py", "hostagent_pb2.pyi", "hostagent_pb2_grpc.py")


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
            str(HERE / PROTO),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")
    texts = {name: (out_dir / name).read_text() for name in OUTPUTS}
    # protoc emits an absolute `import hostagent_pb2`, which only works with rpc/ on sys.path.
    texts["hostagent_pb2_grpc.py"] = re.sub(
        r"^import hostagent_pb2 as",
        "from . import hostagent_pb2 as",
        texts["hostagent_pb2_grpc.py"],
        flags=re.M,
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
