"""Outgoing mail (docs/operations.md "Email"): one message through ``WARREN_SMTP_URL`` with the
stdlib's smtplib in a worker thread, so a slow server never stalls the event loop.

``smtp://[user:pass@]host[:25]`` speaks plain SMTP and upgrades with STARTTLS when the server
offers it; ``smtps://user:pass@host[:465]`` is TLS from the first byte.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from warren.config import Settings

SMTP_TIMEOUT_S = 15.0


class MailError(Exception):
    """The message could not be handed to the SMTP server."""


def configured(settings: Settings) -> bool:
    return bool(settings.smtp_url)


def _send_blocking(settings: Settings, message: EmailMessage) -> None:
    url = urlsplit(settings.smtp_url)
    if url.scheme not in ("smtp", "smtps") or not url.hostname:
        raise MailError("WARREN_SMTP_URL must be smtp://host[:port] or smtps://host[:port]")
    tls = ssl.create_default_context()
    port = url.port or (465 if url.scheme == "smtps" else 25)
    client: smtplib.SMTP
    if url.scheme == "smtps":
        client = smtplib.SMTP_SSL(url.hostname, port, timeout=SMTP_TIMEOUT_S, context=tls)
    else:
        client = smtplib.SMTP(url.hostname, port, timeout=SMTP_TIMEOUT_S)
    with client:
        client.ehlo()
        if url.scheme == "smtp" and client.has_extn("starttls"):
            client.starttls(context=tls)
            client.ehlo()
        if url.username:
            client.login(unquote(url.username), unquote(url.password or ""))
        client.send_message(message)


async def send(settings: Settings, to: str, subject: str, body: str) -> None:
    """Send a plain-text message to ``to``; :class:`MailError` if the server would not take it."""
    message = EmailMessage()
    message["From"] = settings.smtp_from
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    try:
        await asyncio.to_thread(_send_blocking, settings, message)
    except (OSError, smtplib.SMTPException, ValueError) as e:
        raise MailError(f"sending mail failed: {e}") from e
