"""Warren: a self-hosted, multi-host sandbox platform.

The public Python SDK is re-exported here lazily so that ``import warren`` stays cheap for the
control plane and the host agent::

    from warren import Sandbox
    with Sandbox.create() as sbx:
        print(sbx.commands.run("echo hi").stdout)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_SDK_EXPORTS = {"Sandbox", "AsyncSandbox"}


def __getattr__(name: str) -> Any:
    if name in _SDK_EXPORTS:
        from warren import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'warren' has no attribute {name!r}")
