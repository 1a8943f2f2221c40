"""Refusals held past an address's budget (docs/security.md §24).

A request the CP refuses costs it nearly what a served one does: the head is parsed, routed,
its credentials looked at (a well-formed API key is a database query). An anonymous client
looping on 401s, or a team looping on its own 429s, made ~1450 refusals a second per
connection, ~0.5 of a core each, up to its address's connection cap (session 28).

``RefusalHoldMiddleware`` counts every 401 and 429 the app answers (HTTP, and a WebSocket
handshake refused with an HTTP answer) against the client's address
(``services.rate_limits.RefusalBudget``). Within the budget the answer goes out at once; past
it the answer is held ``WARREN_REFUSAL_HOLD_S`` first. HTTP/1.1 answers in order, so a held
connection sends nothing more meanwhile: an address gets at most its connection cap's worth of
refusals per hold, and a served request never waits.

It sits inside the preview middleware: a sandbox's own server answering 401 to its visitors is
the tenant's business, not a refusal of the platform's. The preview proxy's own refusals (a
missing or wrong credential, an unknown sandbox: ``PREVIEW_REFUSALS``) go through
:func:`hold_refusal` too, in the CP against the same budget, in ``warren proxy`` against its own
(session 30: a flood of bad preview credentials got ~4500 answers a second, like the API's 401s);
so do its 502 ``port_not_open`` and 409 ``sandbox_paused`` to a public port's anonymous visitors
(``ANONYMOUS_PREVIEW_REFUSALS``: each 502 was an RPC to the host's agent).
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from warren.cp.services.rate_limits import RefusalBudget
from warren.request_context import client_ip

REFUSALS = frozenset({401, 429})
# The preview proxy's answers it holds (cp/proxy/app.py): a preview's credential is anonymous,
# so its refusals are also 403 (a wrong token, a bad or expired signature) and 404 (a sandbox id
# that names none: a database read each), as the API's 401s are.
PREVIEW_REFUSALS = REFUSALS | {403, 404}
# And its answers to a public port's visitors (no credential: grant kind public) that cost the
# host as much (session 30): nothing listens on the port (each one an RPC to the host's agent
# and a connect in the sandbox's netns) or the sandbox is paused. A credentialed visitor (the
# traffic token, a signed URL or its cookie: the owner's own tooling) is never counted for them.
ANONYMOUS_PREVIEW_REFUSALS = frozenset({"port_not_open", "sandbox_paused"})
_STARTS = frozenset({"http.response.start", "websocket.http.response.start"})


class RefusalHoldMiddleware:
    """Hold a refusal past the client address's budget (see the module docstring). The address
    is the one the observing middleware (outside this one) resolved."""

    def __init__(self, app: ASGIApp, *, budget: RefusalBudget) -> None:
        self.app = app
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def send_held(message: Message) -> None:
            if message["type"] in _STARTS and message.get("status") in REFUSALS:
                await hold_refusal(self.budget, client_ip.get() or "")
            await send(message)

        await self.app(scope, receive, send_held)


def counted_refusal(status: int, code: str, *, anonymous: bool) -> bool:
    """Whether the preview proxy's own answer counts against the client address's budget."""
    return status in PREVIEW_REFUSALS or (anonymous and code in ANONYMOUS_PREVIEW_REFUSALS)


async def hold_refusal(budget: RefusalBudget, address: str) -> None:
    """Count one refusal of ``address``; past its budget, wait the hold before it is answered."""
    hold = budget.hold_for(address)
    if hold:
        await asyncio.sleep(hold)
