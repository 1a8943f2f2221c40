"""Warren guest agent: PID 1 of every sandbox (started through the tiny ``../guest.py``).

Runs under the template's own ``python3 -I -S`` and must therefore be self-contained: standard
library only, no ``warren`` imports (tests/unit/guest/test_guest_stdlib.py checks). It serves
exec, process control, file operations and health over a unix socket; the wire protocol is
described in ``PROTOCOL.md`` next to this package.

Startup latency matters (the host polls ``health`` right after the container starts), so these
modules import only C-level modules (``_socket``, ``_signal``, ``_json``, ...) on the startup
path: their friendly wrappers (``socket``, ``signal``, ``json``) drag in ``enum`` and ``re`` and
cost about 10 ms each. For the same reason annotations naming anything but builtins are written
as strings instead of ``from __future__ import annotations``, which would load the ``__future__``
module on every start. The parts, bottom up: ``protocol`` (frames, JSON, errors), ``loop``
(epoll and timers), ``conn`` (a connection and its operation), ``files`` and ``process`` (the
operations), ``server`` (the guest: socket, dispatch, signals, reaping; ``main``). Modules refer
to each other only with relative imports, so the package works both as ``guest_agent`` inside a
sandbox and as ``warren.guest.guest_agent`` on the host.
"""
