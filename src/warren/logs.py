"""Log set-up shared by every Warren process (``warren cp``, ``up``, ``agent``, ``proxy``).

Two formats: ``text`` (one human line per event, as before) and ``json`` (one JSON object per
line: ``time``, ``level``, ``logger``, ``message``, plus ``request_id`` inside a request and
``exc_info`` with a traceback). Chosen by ``--log-format`` or ``WARREN_LOG_FORMAT``.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from warren.request_context import request_id

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (``record.request_id``, None outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside the message are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            out["request_id"] = rid
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


def make_handler(fmt: LogFormat) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    return handler


def setup_logging(level: str | int = "INFO", fmt: LogFormat = "text") -> None:
    """The root logger's one handler, in ``fmt``; replaces handlers set up before."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(make_handler(fmt))
    root.setLevel(level)
    # httpx logs every request at INFO: one line per heartbeat or readiness probe is noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def uvicorn_log_config(fmt: LogFormat, level: str = "INFO") -> dict[str, Any]:
    """The ``log_config`` for uvicorn, which applies it in each worker process. The root logger
    (the control plane's own lines) writes at ``level`` in ``fmt``. Uvicorn's loggers keep their
    own lines in ``text``, and go through the one JSON handler in ``json``."""
    if fmt == "json":
        return {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"request_id": {"()": "warren.logs.RequestIdFilter"}},
            "formatters": {"json": {"()": "warren.logs.JsonFormatter"}},
            "handlers": {"default": _stderr_handler("json")},
            "loggers": {
                "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
                "uvicorn.error": {"level": level},
                "uvicorn.access": {"handlers": ["default"], "level": level, "propagate": False},
            },
            "root": {"handlers": ["default"], "level": level},
        }
    from uvicorn.config import LOGGING_CONFIG

    # Uvicorn's own set-up configures only its loggers: the CP's lines below WARNING went nowhere.
    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"request_id": {"()": "warren.logs.RequestIdFilter"}}
    config["formatters"]["warren"] = {"format": TEXT_FORMAT}
    config["handlers"]["warren"] = _stderr_handler("warren")
    config["root"] = {"handlers": ["warren"], "level": level}
    return config


def _stderr_handler(formatter: str) -> dict[str, Any]:
    return {
        "class": "logging.StreamHandler",
        "formatter": formatter,
        "filters": ["request_id"],
        "stream": "ext://sys.stderr",
    }


__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "LogFormat",
    "RequestIdFilter",
    "setup_logging",
    "uvicorn_log_config",
]
