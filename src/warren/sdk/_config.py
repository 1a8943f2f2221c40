"""Where the SDK finds the API: arguments, then ``WARREN_*`` variables, then the CLI's login file."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_REQUEST_TIMEOUT", "DEFAULT_URL", "ConnectionConfig", "config_path", "load_config_file"]

DEFAULT_URL = "http://127.0.0.1:8000"
# Seconds an HTTP request may take. A command's own `timeout` is separate (and longer calls
# stretch this one to fit), so a long `commands.run` never dies from an HTTP deadline.
DEFAULT_REQUEST_TIMEOUT = 60.0


def config_path() -> Path:
    """The file written by ``warren login`` (``$XDG_CONFIG_HOME/warren/config.json``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "warren" / "config.json"


def load_config_file() -> dict[str, Any]:
    """What ``warren login`` saved (``url``, ``api_key``, ``token``…); {} when there is none."""
    try:
        data = json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class ConnectionConfig:
    """Where the API is and how to authenticate; :meth:`resolve` fills in what is not given."""

    url: str
    api_key: str | None = None
    # A user JWT (``Authorization: Bearer``); used when no API key is given.
    access_token: str | None = None
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT

    @classmethod
    def resolve(
        cls,
        *,
        api_key: str | None = None,
        url: str | None = None,
        access_token: str | None = None,
        request_timeout: float | None = None,
    ) -> ConnectionConfig:
        """An explicit argument wins; then ``WARREN_URL`` / ``WARREN_API_KEY`` /
        ``WARREN_ACCESS_TOKEN``; then the file ``warren login`` writes.

        Example::

            cfg = ConnectionConfig.resolve(url="http://127.0.0.1:8000")
            print(cfg.url, cfg.auth_headers())
        """
        file: dict[str, Any] | None = None

        def from_file(key: str) -> Any:
            nonlocal file
            if file is None:
                file = load_config_file()
            return file.get(key)

        # An explicit argument wins; the environment next; the login file last. The file is
        # read only when something is still missing, so the SDK works without it.
        url = url or os.environ.get("WARREN_URL") or from_file("url") or DEFAULT_URL
        api_key = api_key or os.environ.get("WARREN_API_KEY") or None
        access_token = access_token or os.environ.get("WARREN_ACCESS_TOKEN") or None
        if not api_key and not access_token:
            api_key = from_file("api_key") or None
            access_token = from_file("token") or None
        return cls(
            url=str(url).rstrip("/"),
            api_key=api_key,
            access_token=access_token,
            request_timeout=DEFAULT_REQUEST_TIMEOUT if request_timeout is None else request_timeout,
        )

    def auth_headers(self) -> dict[str, str]:
        """The header that authenticates a request: ``X-API-Key``, else a bearer token."""
        if self.api_key:
            return {"X-API-Key": self.api_key}
        if self.access_token:
            return {"Authorization": f"Bearer {self.access_token}"}
        return {}

    @property
    def ws_url(self) -> str:
        if self.url.startswith("https://"):
            return "wss://" + self.url[len("https://") :]
        if self.url.startswith("http://"):
            return "ws://" + self.url[len("http://") :]
        return self.url
