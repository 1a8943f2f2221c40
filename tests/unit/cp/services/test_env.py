"""The one rule for environment variables handed to sandbox processes."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from warren.cp.services.env import MAX_ENV_BYTES, EnvVars, validate_env
from warren.errors import InvalidRequest


def test_valid_env_passes_through() -> None:
    env = {"PATH": "/usr/bin", "EMPTY": "", "UNICODE_é": "ü", "lower_1": "a=b"}
    assert validate_env(env) == env
    assert validate_env(None) == {}


@pytest.mark.parametrize(
    "env",
    [
        {"": "x"},
        {"A=B": "x"},
        {"A\x00": "x"},
        {"A": "x\x00"},
        {"A": 1},
        ["A", "B"],
        {f"V{i}": "" for i in range(257)},
        {"BIG": "x" * MAX_ENV_BYTES},
    ],
)
def test_bad_env_is_a_400(env: object) -> None:
    with pytest.raises(InvalidRequest):
        validate_env(env)


def test_request_models_reject_bad_env_as_validation_errors() -> None:
    class Body(BaseModel):
        env: EnvVars

    assert Body(env={"A": "1"}).env == {"A": "1"}
    with pytest.raises(ValidationError, match="without '=' or NUL"):
        Body(env={"A=B": "1"})
