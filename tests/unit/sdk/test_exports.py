"""`import warren` gives the SDK's public names (E2B-style `from warren import Sandbox, ...`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import warren
import warren.sdk


def test_top_level_names_are_the_sdks() -> None:
    for name in warren.__all__:
        assert name in warren.sdk.__all__
        assert getattr(warren, name) is getattr(warren.sdk, name)
    with pytest.raises(AttributeError):
        _ = warren.NoSuchThing  # type: ignore[attr-defined]


def test_import_warren_does_not_load_the_sdk() -> None:
    # The CP and the agent import warren.*; the SDK (httpx, websockets) loads only when used.
    code = "import sys, warren; print('warren.sdk' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
