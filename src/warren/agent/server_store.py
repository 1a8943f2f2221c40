"""The agent's template-store RPCs (docs/templates.md §2): layers on this host, build steps,
snapshot export, and the legacy host-local snapshots. A mixin of ``server.HostAgentServicer``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from warren.agent import build_step, snapshot_export
from warren.agent.chain import Chain, TemplateConfig
from warren.agent.layer_slots import ADMITTED_KEY
from warren.agent.manager import SandboxManager
from warren.agent.rpc_errors import abort, mapped_errors
from warren.errors import InvalidRequest
from warren.rpc import hostagent_pb2 as pb


def chain_of(c: pb.TemplateChain) -> tuple[Chain, TemplateConfig]:
    cfg = c.config
    config = TemplateConfig.checked(
        env=dict(cfg.env), workdir=cfg.workdir, user=cfg.user, start_cmd=cfg.start_cmd,
        ready_cmd=cfg.ready_cmd, ready_timeout_sec=cfg.ready_timeout_sec,
    )  # fmt: skip
    return Chain.checked(c.base, list(c.layers)), config


class TemplateStoreRpcs:
    m: SandboxManager

    @mapped_errors
    async def CreateSnapshot(
        self, request: pb.CreateSnapshotRequest, context: Any
    ) -> pb.CreateSnapshotResponse:
        size, kind = await snapshot_export.create_legacy(
            self.m, request.sandbox_id, request.team_id, request.template_id
        )
        return pb.CreateSnapshotResponse(name=request.name, size_bytes=size, kind=kind)

    @mapped_errors
    async def DeleteSnapshot(
        self, request: pb.DeleteSnapshotRequest, context: Any
    ) -> pb.DeleteSnapshotResponse:
        await snapshot_export.delete_legacy(self.m, request.team_id, request.template_id)
        return pb.DeleteSnapshotResponse()

    # ------------------------------------------------------------- layers (template store)

    @mapped_errors
    async def HasLayers(self, request: pb.HasLayersRequest, context: Any) -> pb.HasLayersResponse:
        return pb.HasLayersResponse(missing=self.m.layers.missing(request.digests), admits=True)

    @mapped_errors
    async def PutLayer(
        self, request_iterator: AsyncIterator[pb.PutLayerRequest], context: Any
    ) -> pb.PutLayerResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("msg") != "meta":
            raise InvalidRequest("the first PutLayer message must be `meta`")

        async def chunks() -> AsyncIterator[bytes]:
            async for msg in request_iterator:
                if msg.WhichOneof("msg") != "chunk":
                    raise InvalidRequest("only `chunk` messages may follow `meta`")
                yield msg.chunk

        async def admitted() -> None:
            # The CP sends the layer's chunks only after this (layer_slots: a queued push holds
            # no bytes in gRPC's windows).
            await context.send_initial_metadata(((ADMITTED_KEY, "1"),))

        tenant = first.meta.owner_account_id or first.meta.team_id  # whose install turn
        installed = await self.m.layers.receive(
            first.meta.digest, first.meta.size, chunks(), team=tenant, admitted=admitted
        )
        return pb.PutLayerResponse(installed=installed)

    @mapped_errors
    async def ListLayers(self, request: pb.ListLayersRequest, context: Any) -> pb.ListLayersResponse:
        layers = self.m.layers.installed()
        return pb.ListLayersResponse(
            layers=[pb.LayerInfo(digest=x.digest, size=x.size, in_use=x.in_use) for x in layers]
        )

    @mapped_errors
    async def DeleteLayers(self, request: pb.DeleteLayersRequest, context: Any) -> pb.DeleteLayersResponse:
        deleted, in_use = await self.m.layers.delete(request.digests)
        return pb.DeleteLayersResponse(deleted=deleted, in_use=in_use)

    async def RunBuildStep(
        self, request: pb.RunBuildStepRequest, context: Any
    ) -> AsyncIterator[pb.BuildStepEvent]:
        r = request
        try:
            chain, config = chain_of(r.chain)
            step = build_step.BuildStep(
                build_id=r.build_id, chain=chain, config=config, cmd=r.cmd, timeout_sec=r.timeout_sec,
                max_layer_bytes=r.max_layer_bytes, vcpus=r.vcpus, memory_mb=r.memory_mb,
                disk_size_mb=r.disk_size_mb, egress_allow=list(r.egress_allow), team=r.team_id,
                owner_account=r.owner_account_id,
            )  # fmt: skip
            async for ev in build_step.run_build_step(self.m, step):
                if ev.output is not None:
                    yield pb.BuildStepEvent(output=ev.output)
                elif ev.exit_code is not None:
                    yield pb.BuildStepEvent(exit_code=ev.exit_code)
                elif ev.layer_chunk is not None:
                    yield pb.BuildStepEvent(layer_chunk=ev.layer_chunk)
                elif ev.layer is not None:
                    yield pb.BuildStepEvent(layer=pb.LayerMeta(digest=ev.layer.digest, size=ev.layer.size))
        except Exception as e:
            await abort(context, e, "RunBuildStep")

    async def ExportSnapshot(
        self, request: pb.ExportSnapshotRequest, context: Any
    ) -> AsyncIterator[pb.LayerChunk]:
        try:
            async for item in snapshot_export.export_snapshot(self.m, request.sandbox_id):
                if isinstance(item, bytes):
                    yield pb.LayerChunk(chunk=item)
                else:
                    yield pb.LayerChunk(done=pb.LayerMeta(digest=item.digest, size=item.size))
        except Exception as e:
            await abort(context, e, "ExportSnapshot")
