"""Layer tars made by hand for the agent's layer tests, and the PutLayer calls that send them."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator

from warren.rpc import hostagent_pb2 as pb
from warren.rpc import hostagent_pb2_grpc as pb_grpc

CHUNK = 1 << 20  # what the control plane sends


def layer_tar(
    files: dict[str, bytes], *, dirs: tuple[str, ...] = (), extra: tuple[tarfile.TarInfo, ...] = ()
) -> bytes:
    """An uncompressed PAX tar: ``dirs`` (0755), then ``files`` (0644, root-owned), then ``extra``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return buf.getvalue()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_requests(
    data: bytes, *, as_digest: str | None = None, size: int | None = None
) -> Iterator[pb.PutLayerRequest]:
    meta = pb.LayerMeta(digest=as_digest or digest(data), size=len(data) if size is None else size)
    yield pb.PutLayerRequest(meta=meta)
    for i in range(0, len(data), CHUNK):
        yield pb.PutLayerRequest(chunk=data[i : i + CHUNK])


def put_layer(stub: pb_grpc.HostAgentStub, data: bytes) -> str:
    """Install ``data`` on the agent; its digest."""
    stub.PutLayer(put_requests(data), timeout=60)
    return digest(data)
