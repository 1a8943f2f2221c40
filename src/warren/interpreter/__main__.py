"""``python -m warren.interpreter [--host H] [--port P] [--cwd DIR]``: serve until SIGTERM or
SIGINT, with the default Python context started in the background (``/health`` answers 200 once
it is up), and every kernel shut down on the way out."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from warren.interpreter.contexts import Contexts
from warren.interpreter.server import InterpreterServer

log = logging.getLogger("warren.interpreter")


def _default_cwd() -> str:
    home = "/home/user"
    return home if os.path.isdir(home) else os.getcwd()


def start(host: str, port: int, cwd: str) -> InterpreterServer:
    """A listening server (not yet serving) whose default context is being started."""
    contexts = Contexts(cwd)
    server = InterpreterServer((host, port), contexts)

    def warm() -> None:
        try:
            contexts.default()
        except Exception:
            log.exception("event=default_context_failed")

    threading.Thread(target=warm, name="default-context", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m warren.interpreter", description=__doc__)
    p.add_argument("--host", default="0.0.0.0")  # the sandbox's port, reached from outside
    p.add_argument("--port", type=int, default=49999)
    p.add_argument("--cwd", default=None, help="the default context's directory (/home/user)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    server = start(args.host, args.port, args.cwd or _default_cwd())

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("event=listening host=%s port=%d", args.host, server.server_address[1])
    try:
        server.serve_forever()
    finally:
        server.server_close()
        server.contexts.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
