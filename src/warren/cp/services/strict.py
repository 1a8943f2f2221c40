"""The one rule for what a JSON request may contain, shared by every request model (the REST
routes' ``StrictRequest`` and the sandbox routes' bodies parsed in the services).

A request field is refused with a 400 when it could never be stored or sent on: an unknown field,
a string with NUL (PostgreSQL text cannot hold it, execve cannot pass it) or that is not
encodable as UTF-8 (a lone surrogate such as ``"\\udfff"``, which JSON can spell but neither
PostgreSQL, protobuf nor argon2 can encode), and an integer beyond int64 (the widest column or
RPC field). Fields narrower than that (an int32 RPC field, a platform maximum) say so with
``Field(le=...)``. Lists and objects are checked all the way down, keys included.

An integer field takes a JSON integer only: pydantic's lax mode would read ``true`` as 1,
``"5"`` as 5 and ``2.0`` as 2, so a quota or a size could be set by a value nobody meant as a
number (``{"sandboxes": true}`` set a team's quota to 1).
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from warren.errors import InvalidRequest
from warren.text import text_problem

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def check_text(value: str, what: str, *, nul_ok: bool = False) -> str:
    """``value``, or a 400 naming ``what`` (for input that no model parses: path parameters,
    WebSocket frames)."""
    problem = text_problem(value, nul_ok=nul_ok)
    if problem is not None:
        raise InvalidRequest(f"invalid {what}: {problem}")
    return value


def optional_text(obj: Mapping[str, Any], key: str) -> str:
    """``obj[key]`` as request text (``check_text``), ``""`` when absent or null, or a 400 for
    anything but a string (for fields of WebSocket frames, which no model parses)."""
    return optional_text_value(obj.get(key), key)


def optional_text_value(v: object, what: str) -> str:
    """``v`` as request text named ``what`` in its 400: ``""`` for None, a 400 for a non-string
    (fields no model parses: WebSocket frames, Connect messages)."""
    if v is None:
        return ""
    if not isinstance(v, str):
        raise InvalidRequest(f"{what} must be a string")
    return check_text(v, what)


def json_object(raw: str | bytes | bytearray, not_json: str, not_object: str) -> dict[str, Any]:
    """``raw`` parsed as a JSON object, or a 400 with the caller's message: ``not_json`` when it
    does not parse (nesting deeper than Python's stack included), ``not_object`` for any other
    JSON value."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as e:  # RecursionError: nesting deeper than the stack
        raise InvalidRequest(not_json) from e
    if not isinstance(value, dict):
        raise InvalidRequest(not_object)
    return value


def _problem(value: Any, nul_ok: bool) -> str | None:
    if isinstance(value, str):
        return text_problem(value, nul_ok=nul_ok)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if -INT64_MAX - 1 <= value <= INT64_MAX else "integer out of range"
    if isinstance(value, list | tuple | set | frozenset):
        return next((p for v in value if (p := _problem(v, nul_ok)) is not None), None)
    if isinstance(value, dict):
        items = (x for kv in value.items() for x in kv)
        return next((p for v in items if (p := _problem(v, nul_ok)) is not None), None)
    return None


def _without_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = set(typing.get_args(annotation)) - {type(None)}
        return next(iter(args)) if len(args) == 1 else annotation
    return annotation


def _int_only(annotation: Any) -> bool:
    """Whether a field of this type takes integers and nothing a lax parse turns into one."""
    return _without_none(annotation) is int


def _int_list(annotation: Any) -> bool:
    """Whether a field of this type is a list of integers (``[true]`` must not become ``[1]``)."""
    a = _without_none(annotation)
    return typing.get_origin(a) is list and typing.get_args(a) == (int,)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class StrictBody(BaseModel):
    """Base for JSON request bodies (see the module doc). A field that legitimately carries
    NUL (raw stdin text) is listed in ``nul_ok_fields``."""

    model_config = ConfigDict(extra="forbid")
    nul_ok_fields: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _integer(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is None or value is None:
            return value
        if _int_only(field.annotation) and not _is_int(value):
            raise ValueError("must be an integer")
        if _int_list(field.annotation) and isinstance(value, list) and not all(map(_is_int, value)):
            raise ValueError("must be a list of integers")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any, info: ValidationInfo) -> Any:
        problem = _problem(value, info.field_name in cls.nul_ok_fields)
        if problem is not None:
            raise ValueError(problem)
        return value


__all__ = ["INT32_MAX", "INT64_MAX", "StrictBody", "check_text", "json_object", "text_problem"]
