"""Layers: OCI layer tars ↔ overlayfs directories, digests, and OCI/docker image reading.

Shared by the agent (extracting layers it is sent, exporting sandboxes' upper dirs) and the
control plane (hashing, scanning and storing layers, importing images). It imports nothing of
Warren's but itself. The format and the safety rules: docs/templates.md §2.
"""

from warren.layers.extract import extract_layer, scan_layer
from warren.layers.hashing import (
    HashingReader,
    HashingWriter,
    LayerError,
    LayerMeta,
    check_digest,
    digest_file,
)
from warren.layers.oci_image import Image, read_image
from warren.layers.stats import LayerStats, python3_in_chain
from warren.layers.writer import write_layer

__all__ = [
    "HashingReader",
    "HashingWriter",
    "Image",
    "LayerError",
    "LayerMeta",
    "LayerStats",
    "check_digest",
    "digest_file",
    "extract_layer",
    "python3_in_chain",
    "read_image",
    "scan_layer",
    "write_layer",
]
