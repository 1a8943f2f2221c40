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

from warren.log_safe import escape, safe_message, safe_traceback
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


class _Safe(logging.Formatter):
    """A formatter whose lines hold what a tenant wrote made safe: its arguments cut, escaped
    and quoted as values, each exception's own words escaped (``warren/log_safe.py``)."""

    def format(self, record: logging.LogRecord) -> str:
        shown = copy.copy(record)  # other handlers see the record as it was logged
        shown.msg, shown.args = safe_message(record), None
        if record.exc_info:
            shown.exc_text = None  # made again, safe (another formatter may have cached its own)
        return super().format(shown)

    def formatException(self, ei: Any) -> str:
        return safe_traceback(ei)


class SafeFormatter(_Safe):
    """The text line (``TEXT_FORMAT``), made safe."""

    def __init__(self, fmt: str | None = TEXT_FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)


class SafeArgs(logging.Filter):
    """On uvicorn's loggers, whatever formatter their lines end up with (uvicorn sets its own
    again each time a ``uvicorn.Config`` is made): text arguments cut and escaped, in place (its
    access line formats its arguments itself), and an exception's traceback made safe."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "warren_safe", False):
            return True  # a second filter of the same kind (set up again) has nothing to do
        record.warren_safe = True
        if isinstance(record.args, tuple):
            record.args = tuple(escape(a) if isinstance(a, str) else a for a in record.args)
        if record.exc_info and not record.exc_text:
            record.exc_text = safe_traceback(record.exc_info)
        return True


UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


class JsonFormatter(_Safe):
    """One JSON object per record, on one line (newlines inside the message are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": safe_message(record),
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
    handler.setFormatter(JsonFormatter() if fmt == "json" else SafeFormatter(TEXT_FORMAT))
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
    for name in UVICORN_LOGGERS:  # a logger's filters outlast uvicorn's later dictConfig
        logger = logging.getLogger(name)
        if not any(isinstance(f, SafeArgs) for f in logger.filters):
            logger.addFilter(SafeArgs())


def uvicorn_log_config(fmt: LogFormat, level: str = "INFO") -> dict[str, Any]:
    """The ``log_config`` for uvicorn, which applies it in each worker process. The root logger
    (the control plane's own lines) writes at ``level`` in ``fmt``. Uvicorn's loggers keep their
    own lines in ``text``, and go through the one JSON handler in ``json``."""
    if fmt == "json":
        return {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {
                "request_id": {"()": "warren.logs.RequestIdFilter"},
                "safe_args": {"()": "warren.logs.SafeArgs"},
            },
            "formatters": {"json": {"()": "warren.logs.JsonFormatter"}},
            "handlers": {"default": _stderr_handler("json")},
            "loggers": {
                "uvicorn": {
                    "handlers": ["default"],
                    "level": level,
                    "propagate": False,
                    "filters": ["safe_args"],
                },
                "uvicorn.error": {"level": level, "filters": ["safe_args"]},
                "uvicorn.access": {
                    "handlers": ["default"],
                    "level": level,
                    "propagate": False,
                    "filters": ["safe_args"],
                },
            },
            "root": {"handlers": ["default"], "level": level},
        }
    from uvicorn.config import LOGGING_CONFIG

    # Uvicorn's own set-up configures only its loggers: the CP's lines below WARNING went nowhere.
    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"request_id": {"()": "warren.logs.RequestIdFilter"}}
    config["formatters"]["warren"] = {"()": "warren.logs.SafeFormatter", "fmt": TEXT_FORMAT}
    config["filters"]["safe_args"] = {"()": "warren.logs.SafeArgs"}
    for name in UVICORN_LOGGERS:
        config["loggers"].setdefault(name, {})["filters"] = ["safe_args"]
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
    "SafeArgs",
    "SafeFormatter",
    "setup_logging",
    "uvicorn_log_config",
]
