"""The layers a host holds (docs/templates.md §2): PutLayer checks every byte, a sandbox runs on
a chain of them, and DeleteLayers never takes one a sandbox uses."""

from __future__ import annotations

import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.leaks import wait_no_leaks
from tests.integration.agent.layer_tars import digest, layer_tar, put_layer, put_requests
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root


def code_of(e: grpc.RpcError) -> grpc.StatusCode:
    return e.code()  # type: ignore[attr-defined, no-any-return]


def details(e: grpc.RpcError) -> str:
    return e.details()  # type: ignore[attr-defined, no-any-return]


def leftovers(agent: AgentProcess) -> list[str]:
    return sorted(
        p.name for p in (agent.data_dir / "layers").iterdir() if p.name.startswith((".tmp-", ".del-"))
    )


def test_put_create_on_it_delete(agent: AgentProcess) -> None:
    s = agent.stub
    data = layer_tar({"opt/app/hello.txt": b"hi from a layer\n"}, dirs=("opt", "opt/app"))
    d = digest(data)
    assert list(s.HasLayers(pb.HasLayersRequest(digests=[d])).missing) == [d]
    assert s.PutLayer(put_requests(data)).installed is True
    # Already here: answered from the meta alone, whatever follows it.
    again = iter([next(put_requests(data)), pb.PutLayerRequest(chunk=b"never read")])
    assert s.PutLayer(again).installed is False
    assert list(s.HasLayers(pb.HasLayersRequest(digests=[d])).missing) == []
    listed = {x.digest: x for x in s.ListLayers(pb.ListLayersRequest()).layers}
    assert (listed[d].size, listed[d].in_use) == (len(data), False)

    r = agent.create(memory_mb=128, chain=pb.TemplateChain(base="minimal", layers=[d]))
    sb = r.sandbox_id
    assert agent.exec(sb, "cat", "/opt/app/hello.txt").stdout == b"hi from a layer\n"
    # The sandbox writes on top; the layer itself never changes.
    agent.exec(sb, "sh", "-c", "echo changed > /opt/app/hello.txt")
    assert (agent.data_dir / "layers" / d / "tree" / "opt/app/hello.txt").read_bytes() == b"hi from a layer\n"
    assert {x.digest: x.in_use for x in s.ListLayers(pb.ListLayersRequest()).layers}[d] is True
    res = s.DeleteLayers(pb.DeleteLayersRequest(digests=[d]))
    assert (list(res.deleted), list(res.in_use)) == ([], [d])
    s.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=sb))
    assert list(s.DeleteLayers(pb.DeleteLayersRequest(digests=[d])).in_use) == [d]

    other = digest(b"not installed")
    with pytest.raises(grpc.RpcError) as ei:
        agent.create(chain=pb.TemplateChain(base="minimal", layers=[d, other]))
    assert code_of(ei.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert details(ei.value) == f"missing layers: {other}"

    s.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sb))
    assert wait_no_leaks(agent, sb, r.host_ip) == []
    res = s.DeleteLayers(pb.DeleteLayersRequest(digests=[d, other]))
    assert (list(res.deleted), list(res.in_use)) == ([d, other], [])
    assert list(s.HasLayers(pb.HasLayersRequest(digests=[d])).missing) == [d]
    assert not (agent.data_dir / "layers" / d).exists() and leftovers(agent) == []


def test_concurrent_puts_of_one_layer_install_it_once(agent: AgentProcess) -> None:
    data = layer_tar({f"f{i}": os.urandom(1000) for i in range(200)})
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: agent.stub.PutLayer(put_requests(data)).installed, range(4)))
    assert sorted(results) == [False, False, False, True]
    assert len(list((agent.data_dir / "layers" / digest(data) / "tree").iterdir())) == 200
    assert leftovers(agent) == []
    agent.stub.DeleteLayers(pb.DeleteLayersRequest(digests=[digest(data)]))


def test_bytes_that_do_not_match_install_nothing(agent: AgentProcess) -> None:
    s = agent.stub
    data = layer_tar({"evil": b"x" * 10000})
    real = digest(data)
    claimed = digest(b"something else")
    cases = [
        (put_requests(data, as_digest=claimed), grpc.StatusCode.DATA_LOSS),  # a forged digest
        (put_requests(data, size=len(data) - 1), grpc.StatusCode.DATA_LOSS),  # more than declared
        (put_requests(data, size=len(data) + 1), grpc.StatusCode.DATA_LOSS),  # fewer
        (put_requests(data, size=1 << 50), grpc.StatusCode.RESOURCE_EXHAUSTED),  # past the host's max
        (put_requests(data, as_digest="../../etc"), grpc.StatusCode.INVALID_ARGUMENT),
        (iter([pb.PutLayerRequest(chunk=data)]), grpc.StatusCode.INVALID_ARGUMENT),  # no meta
    ]
    for reqs, code in cases:
        with pytest.raises(grpc.RpcError) as ei:
            s.PutLayer(reqs)
        assert code_of(ei.value) == code, details(ei.value)
    assert set(s.HasLayers(pb.HasLayersRequest(digests=[real, claimed])).missing) == {real, claimed}
    assert leftovers(agent) == []


def test_a_hostile_tar_is_refused_and_leaves_nothing(agent: AgentProcess) -> None:
    escape = tarfile.TarInfo("../../../../escaped-by-layer")
    escape.size = 0
    link = tarfile.TarInfo("etc")
    link.type, link.linkname = tarfile.SYMTYPE, "/"
    through = tarfile.TarInfo("etc/escaped-through-link")
    for extra in ((escape,), (link, through)):
        data = layer_tar({}, extra=extra)
        with pytest.raises(grpc.RpcError) as ei:
            put_layer(agent.stub, data)
        assert code_of(ei.value) == grpc.StatusCode.INVALID_ARGUMENT, details(ei.value)
        assert list(agent.stub.HasLayers(pb.HasLayersRequest(digests=[digest(data)])).missing) == [
            digest(data)
        ]
    assert leftovers(agent) == []
    assert not list(agent.root.parent.rglob("escaped-*")) and not Path("/escaped-through-link").exists()


def test_a_long_chain_stacks_in_order(agent: AgentProcess) -> None:
    # More layer paths than one page of mount(2) options holds; one layer twice (two steps that
    # changed nothing make the same layer).
    layers = [
        put_layer(agent.stub, layer_tar({f"layers/{i}": b"", "top": f"{i}\n".encode()})) for i in range(60)
    ]
    chain = [*layers, layers[0]]
    r = agent.create(memory_mb=128, chain=pb.TemplateChain(base="minimal", layers=chain))
    res = agent.exec(r.sandbox_id, "sh", "-c", "ls /layers | wc -l; cat /top")
    assert res.stdout == b"60\n0\n"
    agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=r.sandbox_id))
    assert wait_no_leaks(agent, r.sandbox_id, r.host_ip) == []
