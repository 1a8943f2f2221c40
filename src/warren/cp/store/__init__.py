"""The template store (docs/templates.md §3): content-addressed layer tars that every CP replica
reaches, in a directory or an S3-compatible bucket. :func:`make_store` picks the backend from
the settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from warren.config import Settings
from warren.cp.store.base import CHUNK, DigestMismatch, LayerStore, check_digest, is_digest, layer_key
from warren.cp.store.directory import DirectoryStore

if TYPE_CHECKING:
    from warren.cp.store.s3 import S3Store

__all__ = [
    "CHUNK",
    "DigestMismatch",
    "DirectoryStore",
    "LayerStore",
    "S3Store",
    "check_digest",
    "is_digest",
    "layer_key",
    "make_store",
]


def __getattr__(name: str) -> Any:
    """``S3Store`` is imported on first use: boto3 and botocore are ~0.13 s of CPU (of the CP's
    ~1.3 s import), paid at every start (and every test platform's) while most deployments and
    every test but the S3 ones keep layers in a directory."""
    if name == "S3Store":
        from warren.cp.store.s3 import S3Store

        return S3Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_store(settings: Settings) -> LayerStore:
    """``WARREN_TEMPLATE_STORE``: empty for ``<home>/store``, a directory path, or
    ``s3://bucket/prefix`` (with ``WARREN_S3_ENDPOINT_URL`` for a non-AWS server)."""
    where = settings.template_store.strip()
    if not where:
        return DirectoryStore(settings.home / "store")
    if where.startswith("s3://"):
        from warren.cp.store.s3 import S3Store  # boto3 only when the store is a bucket (above)

        url = urlparse(where)
        if not url.netloc:
            raise ValueError(f"WARREN_TEMPLATE_STORE has no bucket: {where!r}")
        return S3Store(
            url.netloc,
            url.path,
            endpoint_url=settings.s3_endpoint_url or None,
            region=settings.s3_region or os.environ.get("AWS_REGION") or None,
            spool_dir=settings.home / "store-spool",
        )
    if "://" in where:
        raise ValueError(f"WARREN_TEMPLATE_STORE must be a directory or s3://bucket/prefix: {where!r}")
    return DirectoryStore(Path(where))
