"""The template store in an S3-compatible bucket, through boto3 (whose calls block, so each runs
in a thread). A layer is spooled to a local file and hashed first; only a layer whose digest is
known (and matches what was expected) is uploaded, straight under its final key, with
multipart uploads for big layers (``upload_fileobj``)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from warren.cp.store.base import CHUNK, is_digest, layer_key, layer_missing, spool
from warren.layers import LayerMeta
from warren.stoppable import run_stoppable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Multipart above 64 MiB, in 64 MiB parts, 4 at once: a 4 GiB layer is 64 parts (S3 allows
# 10,000) and a small one a single PUT.
# A whole layer's upload is one blocking call as long as the layer (a tenant's: up to
# WARREN_BUILD_MAX_LAYER_MB): in threads of its own, so that uploads never hold the default
# executor's, which the CP's short calls share (session 23: cp/services/tenant_threads.py).
_UPLOADS = ThreadPoolExecutor(2, thread_name_prefix="warren-s3-upload")
_TRANSFER = TransferConfig(
    multipart_threshold=64 * CHUNK, multipart_chunksize=64 * CHUNK, max_concurrency=4, use_threads=True
)
_NOT_FOUND = ("404", "NoSuchKey", "NotFound")


def _missing(e: ClientError) -> bool:
    return str(e.response.get("Error", {}).get("Code", "")) in _NOT_FOUND


class S3Store:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        spool_dir: Path | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._spool_dir = Path(spool_dir or tempfile.gettempdir())
        self._spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        config = Config(
            max_pool_connections=16, retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10
        )
        # Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID, ..., instance roles).
        self._s3: S3Client = boto3.client(
            "s3", endpoint_url=endpoint_url or None, region_name=region or None, config=config
        )

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket}/{self.prefix})"

    def _key(self, digest: str) -> str:
        key = layer_key(digest)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def put(
        self, chunks: AsyncIterator[bytes], *, expect: str | None = None, max_bytes: int
    ) -> LayerMeta:
        spooled = await spool(chunks, self._spool_dir, expect=expect, max_bytes=max_bytes)
        try:
            meta = spooled.meta
            if not await self.exists(meta.digest):
                key = self._key(meta.digest)
                # A cancelled caller waits for the upload to end before the spool file goes.
                await run_stoppable(lambda _stop: self._upload(spooled.path, key), executor=_UPLOADS)
        finally:
            spooled.discard()
        return meta

    def _upload(self, path: Path, key: str) -> None:
        with path.open("rb") as f:
            self._s3.upload_fileobj(f, self.bucket, key, Config=_TRANSFER)

    async def open(self, digest: str) -> AsyncIterator[bytes]:
        key = self._key(digest)
        try:
            obj = await asyncio.to_thread(self._s3.get_object, Bucket=self.bucket, Key=key)
        except ClientError as e:
            if _missing(e):
                raise layer_missing(digest) from None
            raise
        body: Any = obj["Body"]
        try:
            while chunk := await asyncio.to_thread(body.read, CHUNK):
                yield chunk
        finally:
            body.close()

    async def _head(self, digest: str) -> int | None:
        try:
            head = await asyncio.to_thread(self._s3.head_object, Bucket=self.bucket, Key=self._key(digest))
        except ClientError as e:
            if _missing(e):
                return None
            raise
        return int(head["ContentLength"])

    async def exists(self, digest: str) -> bool:
        return await self._head(digest) is not None

    async def size(self, digest: str) -> int:
        size = await self._head(digest)
        if size is None:
            raise layer_missing(digest)
        return size

    async def delete(self, digest: str) -> None:
        await asyncio.to_thread(self._s3.delete_object, Bucket=self.bucket, Key=self._key(digest))

    async def list(self) -> AsyncIterator[str]:
        base = self._key("0" * 64).rsplit("/", 1)[0] + "/"
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base}
            if token:
                kwargs["ContinuationToken"] = token
            page = await asyncio.to_thread(self._s3.list_objects_v2, **kwargs)
            for obj in page.get("Contents", []):
                name = obj["Key"][len(base) :]
                digest, dot, ext = name.partition(".")
                if dot and ext == "tar" and is_digest(digest):
                    yield digest
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
