"""Config files: ``/etc/warren/agent.toml`` for ``warren agent``, ``/etc/warren/cp.toml`` for
``warren cp`` (docs/operations.md, "Three machines").

A file holds the same settings as the environment, under the same names: a key is its
variable's name without the prefix, lower-cased (``net_pool`` is ``WARREN_AGENT_NET_POOL``,
``database_url`` is ``WARREN_DATABASE_URL``), flat, no tables. Precedence: a command-line flag,
then the environment, then the file, then the default. A file is applied by putting each value
into ``os.environ`` under its variable's name unless that variable is already set, so every
reader (the pydantic settings, typer's ``envvar`` options, ``warren cp``'s worker processes)
sees one source. An unknown key, a table or a value of the wrong type stops the command with
a message naming the file and the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import TypeAdapter, ValidationError

AGENT_CONFIG = Path("/etc/warren/agent.toml")
CP_CONFIG = Path("/etc/warren/cp.toml")
# The largest config file read: a config is a few hundred bytes.
MAX_BYTES = 1024 * 1024


class ConfigFileError(SystemExit):
    """The file cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Key:
    """One key of a config file: the variable it sets and the type its value must have."""

    env: str
    type: Any


def _settings_keys(model: Any, prefix: str, skip: frozenset[str] = frozenset()) -> dict[str, Key]:
    keys: dict[str, Key] = {}
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        alias = field.validation_alias
        env = alias if isinstance(alias, str) else prefix + name.upper()
        # The field's name is its variable's without the prefix (WARREN_MINIMAL_DIR: minimal_dir).
        # The field's constraints (ge, le …) come along; its validators run when settings load.
        kind = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
        keys[name] = Key(env, kind)
    return keys


def agent_keys() -> dict[str, Key]:
    """``warren agent``'s keys: its flags that have variables, and ``AgentSettings``."""
    from warren.agent.settings import PREFIX, AgentSettings

    keys = _settings_keys(AgentSettings, PREFIX)
    keys.update(
        cp_url=Key("WARREN_CP_URL", str),
        listen=Key("WARREN_AGENT_LISTEN", str),
        data_dir=Key("WARREN_AGENT_DATA_DIR", Path),
        runtime=Key("WARREN_AGENT_RUNTIME", Literal["auto", "runc", "crun"]),
        address=Key("WARREN_AGENT_ADDRESS", str),
        # Used only while the data dir holds no host credentials (see cli/config_option.py):
        # once registered, restarts must not spend the consumed token again.
        registration_token=Key("WARREN_REGISTRATION_TOKEN", str),
    )
    return keys


def cp_keys() -> dict[str, Key]:
    """``warren cp``'s keys: the control plane's ``Settings`` (``--e2b-port`` is a flag only:
    the command sets WARREN_E2B_PORT from it)."""
    from warren.config import Settings

    return _settings_keys(Settings, "WARREN_", frozenset({"e2b_port"}))


def read(path: Path, keys: Mapping[str, Key]) -> dict[str, Any]:
    """The file's values by key, each checked against its type."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ConfigFileError(f"cannot read config file {path}: {e.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigFileError(f"config file {path} is larger than {MAX_BYTES} bytes")
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigFileError(f"config file {path} is not valid TOML: {e}") from None
    values: dict[str, Any] = {}
    for name, value in data.items():
        key = keys.get(name)
        if key is None:
            known = ", ".join(sorted(keys))
            raise ConfigFileError(f"{path}: unknown key {name!r} (known keys: {known})")
        if isinstance(value, dict | list):
            raise ConfigFileError(f"{path}: {name}: a plain value is expected, not a table or an array")
        try:
            _check_type(key.type, value)
        except ValidationError as e:
            msg = "; ".join(err["msg"] for err in e.errors())
            raise ConfigFileError(f"{path}: {name} = {value!r}: {msg}") from None
        values[name] = value
    return values


def _check_type(kind: Any, value: Any) -> None:
    """Strictly (``true`` is no number, ``"4"`` no integer): TOML has types, so a value of
    the wrong one is a mistake worth naming. Paths are TOML strings."""
    adapter = TypeAdapter(kind)
    try:
        adapter.validate_python(value, strict=True)
    except ValidationError:
        if not isinstance(value, str) or "Path" not in repr(kind):
            raise
        adapter.validate_python(Path(value), strict=True)


def as_env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def apply(
    values: Mapping[str, Any], keys: Mapping[str, Key], environ: MutableMapping[str, str] | None = None
) -> list[str]:
    """Put each value into the environment under its variable, unless the variable is set
    (the environment overrides the file). Returns the names set."""
    env = os.environ if environ is None else environ
    applied = []
    for name, value in values.items():
        var = keys[name].env
        if env.get(var, "") == "":
            env[var] = as_env_value(value)
            applied.append(var)
    return applied
