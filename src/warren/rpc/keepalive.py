"""HTTP/2 keepalive on the CP↔agent gRPC connections, both ends' settings in one place.

Without it, a connection whose other end vanished (the agent's machine lost power, a network
partition that drops packets instead of refusing them) looks healthy until TCP gives up, which
takes minutes to hours: a call made meanwhile waits for its whole deadline. With it:

* the control plane's channels (``cp/hosts/client_pool.py``) ping every agent every
  :data:`CLIENT_PING_S` seconds, also while no call is under way, and drop the connection when a
  ping goes unanswered for :data:`PING_TIMEOUT_S`: a dead agent is noticed within about 15 s,
  and calls to it fail fast (``UNAVAILABLE``) instead of hanging;
* the agent's server (``agent/main.py``) accepts pings as often as every
  :data:`SERVER_MIN_PING_S` seconds, with or without calls (its default, one every 5 minutes,
  would answer the control plane's pings with GOAWAY ``too_many_pings``), and pings its clients
  every :data:`SERVER_PING_S` seconds itself, so streams left by a control plane that vanished
  are closed.

The agent's server only admits the control plane's certificate, so a liberal ping policy costs
nothing: no one else can connect to ping it.
"""

from __future__ import annotations

CLIENT_PING_S = 10
PING_TIMEOUT_S = 5
# Half of CLIENT_PING_S: timers jitter, and three early pings in a row earn a GOAWAY. (A
# gRPC client never pings more often than once a second whatever it is told.)
SERVER_MIN_PING_S = 5
SERVER_PING_S = 30

Options = list[tuple[str, int]]

CLIENT_OPTIONS: Options = [
    ("grpc.keepalive_time_ms", CLIENT_PING_S * 1000),
    ("grpc.keepalive_timeout_ms", PING_TIMEOUT_S * 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    # 0: no limit on pings between data frames (the default, 2, stops an idle channel's pings).
    ("grpc.http2.max_pings_without_data", 0),
]

SERVER_OPTIONS: Options = [
    ("grpc.keepalive_time_ms", SERVER_PING_S * 1000),
    ("grpc.keepalive_timeout_ms", PING_TIMEOUT_S * 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", SERVER_MIN_PING_S * 1000),
    ("grpc.http2.max_pings_without_data", 0),
]


def client_options(ping_s: float = CLIENT_PING_S) -> Options:
    """The control plane's channel options; ``ping_s`` only for tests that check the policy."""
    return [(k, int(ping_s * 1000) if k == "grpc.keepalive_time_ms" else v) for k, v in CLIENT_OPTIONS]
