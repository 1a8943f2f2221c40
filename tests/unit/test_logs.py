"""The JSON log formatter (warren/logs.py): one object per line, with the request id inside a
request, and nothing a message contains can break the line."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

from warren.logs import JsonFormatter, RequestIdFilter, uvicorn_log_config
from warren.request_context import request_id


def _emit(msg: str, *args: object, exc: bool = False) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("warren.test_logs")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        if exc:
            try:
                raise ValueError("boom")
            except ValueError:
                logger.exception(msg, *args)
        else:
            logger.info(msg, *args)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_one_object_per_line_with_the_fields() -> None:
    out = _emit("event=x sandbox_id=%s", "sb-1")
    assert out.count("\n") == 1
    line = json.loads(out)
    assert line["level"] == "INFO" and line["logger"] == "warren.test_logs"
    assert line["message"] == "event=x sandbox_id=sb-1" and line["time"].endswith("+00:00")
    assert "request_id" not in line


def test_the_request_id_inside_a_request() -> None:
    token = request_id.set("req-7")
    try:
        line = json.loads(_emit("inside"))
    finally:
        request_id.reset(token)
    assert line["request_id"] == "req-7"


def test_newlines_and_control_characters_stay_inside_the_object() -> None:
    out = _emit("a\nb\r\x1b[31m\u2028 %s", '"quoted"\n{"level": "ERROR"}', exc=True)
    assert out.count("\n") == 1  # the traceback and the newlines are escaped
    line = json.loads(out)
    # Controls are written as escapes inside the message too (warren/log_safe.py, docs/security.md §33).
    assert line["level"] == "ERROR" and line["message"].startswith("a\\x0ab\\x0d\\x1b[31m\\u2028")
    assert "ValueError: boom" in line["exc_info"]


def test_uvicorn_config_in_json_sends_every_logger_through_one_json_handler() -> None:
    config = uvicorn_log_config("json")
    assert config["formatters"]["json"]["()"] == "warren.logs.JsonFormatter"
    # uvicorn's own loggers and the root (the CP's) all write through the one JSON handler.
    assert config["loggers"]["uvicorn.access"]["handlers"] == ["default"] == config["root"]["handlers"]


_APPLY = """
import logging, logging.config, sys
from warren.logs import uvicorn_log_config
logging.config.dictConfig(uvicorn_log_config(sys.argv[1]))
logging.getLogger("warren.builds").info("event=build_cancelled_here build_id=b1")
logging.getLogger("warren.builds").debug("not at INFO")
logging.getLogger("uvicorn.error").info("Uvicorn running")
"""


def test_uvicorn_config_in_text_keeps_the_control_planes_info_lines() -> None:
    """``warren cp`` in text: uvicorn's config once configured only uvicorn's loggers, so the
    CP's own INFO lines (a build cancelled, a host gone) were dropped."""
    done = subprocess.run(
        [sys.executable, "-c", _APPLY, "text"], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stderr.splitlines()
    wanted = "INFO warren.builds event=build_cancelled_here build_id=b1"
    assert any(line.endswith(wanted) for line in lines), lines
    assert "not at INFO" not in done.stderr
    # Uvicorn's own lines as uvicorn writes them, once each (its logger does not propagate).
    assert [line for line in lines if "Uvicorn running" in line] == ["INFO:     Uvicorn running"], lines
