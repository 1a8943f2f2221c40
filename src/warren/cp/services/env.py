"""Environment variables handed to processes in a sandbox: one rule for every entry point
(sandbox create, exec, background processes, the exec stream)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator

from warren.errors import InvalidRequest

MAX_ENV_VARS = 256
MAX_ENV_BYTES = 128 * 1024


def validate_env(env: Any) -> dict[str, str]:
    """``env`` as a checked ``{name: value}``; a bad one is a 400 saying what is wrong.

    Names must be non-empty and contain neither ``=`` nor NUL (execve could not pass them on),
    values no NUL; the whole set is bounded so one request cannot balloon a process table."""
    if env is None:
        return {}
    strings = isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    if not strings:
        raise InvalidRequest("env must be an object of strings")
    if len(env) > MAX_ENV_VARS:
        raise InvalidRequest(f"env has more than {MAX_ENV_VARS} variables")
    size = 0
    for name, value in env.items():
        if not name or "=" in name or "\x00" in name:
            raise InvalidRequest(f"invalid env variable name {name!r}: non-empty, without '=' or NUL")
        if "\x00" in value:
            raise InvalidRequest(f"env variable {name} contains a NUL character")
        size += len(name.encode()) + len(value.encode()) + 2
    if size > MAX_ENV_BYTES:
        raise InvalidRequest(f"env is larger than {MAX_ENV_BYTES // 1024} KiB")
    return env


def _checked(env: dict[str, str]) -> dict[str, str]:
    try:
        return validate_env(env)
    except InvalidRequest as e:  # inside a pydantic model: a validation error, hence a 400
        raise ValueError(e.message) from e


# For request models: ``env: EnvVars = Field(default_factory=dict)``.
EnvVars = Annotated[dict[str, str], AfterValidator(_checked)]
