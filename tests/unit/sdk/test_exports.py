"""`import warren` gives the SDK's public names (E2B-style `from warren import Sandbox, ...`)."""

from __future__ import annotations

import inspect
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


@pytest.mark.parametrize("module", [warren, warren.sdk], ids=["warren", "warren.sdk"])
def test_timeout_error_is_a_deprecated_alias_of_warren_timeout_error(module: object) -> None:
    with pytest.warns(DeprecationWarning, match=r"TimeoutError is deprecated.*WarrenTimeoutError") as caught:
        old = module.TimeoutError  # type: ignore[attr-defined]
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert old is warren.sdk.WarrenTimeoutError
    # Code written against the old name keeps catching what the SDK raises, and so does a
    # plain `except TimeoutError` (the builtin).
    for handler in (old, TimeoutError):
        with pytest.raises(handler):
            raise warren.sdk.WarrenTimeoutError("ran out", code="timeout")
    # Left out of __all__: `from warren import *` no longer shadows the builtin.
    assert "TimeoutError" not in module.__all__  # type: ignore[attr-defined]


def test_from_import_of_the_old_name_warns() -> None:
    code = (
        "import warnings; warnings.simplefilter('error')\n"
        "try:\n    from warren import TimeoutError\nexcept DeprecationWarning as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "warren.TimeoutError is deprecated" in out.stdout


def test_no_sdk_name_shadows_a_builtin() -> None:
    import builtins

    assert [n for n in warren.sdk.__all__ if hasattr(builtins, n)] == []


_DRIVERS = ["Sandbox", "AsyncSandbox", "Commands", "AsyncCommands", "CommandHandle", "AsyncCommandHandle"]


@pytest.mark.parametrize("cls_name", [*_DRIVERS, "Files", "AsyncFiles"])
def test_public_methods_have_a_docstring_with_an_example(cls_name: str) -> None:
    cls = getattr(warren.sdk, cls_name)
    missing = []
    for name in dir(cls):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(cls, name)
        fn = attr.__func__ if isinstance(attr, (classmethod, staticmethod)) else attr
        if isinstance(fn, property):
            if not fn.__doc__:
                missing.append(name)
        elif callable(fn) and "Example" not in (fn.__doc__ or ""):
            missing.append(name)
    assert missing == []


def test_the_sdk_and_the_client_commands_load_no_server_code() -> None:
    # The SDK ships to users' machines; the CLI's client commands run there too.
    code = (
        "import sys, warren.sdk, warren.cli.client.sandbox, warren.cli.client.files, "
        "warren.cli.client.login, warren.cli.client.host, warren.cli.client.key, "
        "warren.cli.client.snapshot\n"
        "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['warren', 'cp'], ['warren', 'agent'], ['warren', 'guest'], ['warren', 'rpc'])))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
