"""Session 38: log lines and metric labels a tenant writes (docs/security.md §33).

The CP and the agents write ``key=value`` lines (``event=sandbox_destroyed sandbox_id=…``) that
operators grep and tools parse, and many values in them are someone else's text: a request's
path, an error a guest, a sandbox's server or a BYOC agent worded, an exception's message. The
attacker here is anyone who can reach the CP (no account is needed for the first probe: the
dashboard refuses a cross-site POST before it looks at who sends it, and logs the request's
path) and a tenant with its own key.

Found (failing until fixed):
- ``test_a_request_path_starts_no_log_line_of_its_own``: the path of a refused dashboard POST
  went into the CP's log as it came (``dashboard: refused POST <path>: …``). Its ``%0B``,
  ``%0C``, ``%1C``-``%1E``, ``%C2%85``, ``%E2%80%A8`` are line breaks to ``str.splitlines``
  (what the tests and Python tooling read logs with) and ``%1B[…`` sequences rewrite an
  operator's terminal (erase the line, move the cursor): one request wrote a whole forged line
  (``… INFO warren.cp.services.sandboxes sandbox destroyed sandbox=<another team's>``).
- ``test_a_fake_key_value_pair_in_a_path_is_not_the_lines_own``: a path's ``%20event=…``
  made the refusal's line carry ``event=sandbox_deleted sandbox_id=… team=…`` of the attacker's
  choosing, found by any grep for that event.
- ``test_one_request_writes_no_huge_log_line``: the path's length was the line's (60 KiB a
  request, unauthenticated, never held: a 403 is not a counted refusal), uvicorn's access line
  too.
- ``test_a_file_name_starts_no_log_line_of_its_own``: a tenant's file named with a real newline
  and a forged line, its download cut midway (the sandbox deleted): the CP's ``file stream read
  failed midway … path=<the name>`` put the forged line in the log on its own.
Fixed at the root, ``warren/log_safe.py`` through ``warren/logs.py``'s formatters (every
process's lines, text and JSON, uvicorn's own): each argument of a line is cut at 1024
characters, its controls and line separators escaped, and quoted as JSON (``=`` as ``\\u003d``)
where it could add a ``key=value`` pair; an exception's own words in a traceback likewise.
Variants without a platform: ``test_variants_of_the_same_line_in_both_formats`` (a guest's
stderr, a BYOC agent's error words, an exception's message) and
``test_uvicorn_lines_stay_safe_after_uvicorn_configures_its_logging_again``.

Held: ``test_metric_labels_are_bounded_whatever_the_client_sends`` (route templates, not paths;
httptools' methods; nothing a tenant names becomes a label) and
``test_metrics_are_for_the_platform_admin_only``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import urllib.parse
import uuid

import httpx
import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup
from tests.security.attack_helpers import wait_until
from warren.logs import JsonFormatter, SafeArgs, SafeFormatter, setup_logging

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

# Characters ``str.splitlines`` breaks a line at, besides \n and \r (which URL parsing drops).
LINE_BREAKS = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
# A terminal's "cursor to column 1, erase the line": what was written of the line is gone.
ERASE = "\x1b[1G\x1b[2K"
FORGED = "2026-01-01 00:00:00,000 INFO warren.cp.services.sandboxes sandbox destroyed sandbox=sbx_{n}"


@pytest.fixture(scope="module")
def mallory(platform: Platform) -> Tenant:
    return signup(platform.url, "mallory")


def _refused_post(platform: Platform, segment: str, **headers: str) -> httpx.Response:
    """A cross-site POST to a dashboard action whose path holds ``segment`` (percent-encoded
    as any client sends it): refused (403 ``csrf_failed``) and logged with its path."""
    path = "/dashboard/actions/team/invitations/" + urllib.parse.quote(segment, safe="") + "/revoke"
    with httpx.Client(base_url=platform.url, timeout=60) as c:
        return c.post(path, headers={"Origin": "https://evil.example", **headers})


def _cp_lines(platform: Platform, marker: str) -> list[str]:
    """The CP log's lines, as ``str.splitlines`` reads them, that hold ``marker``."""
    text = platform.cp.log_path.read_text(errors="replace")
    return [line for line in text.splitlines() if marker in line]


def test_a_request_path_starts_no_log_line_of_its_own(platform: Platform) -> None:
    nonce = uuid.uuid4().hex
    payload = nonce + "".join(brk + FORGED.format(n=f"{nonce}{i}") for i, brk in enumerate(LINE_BREAKS))
    r = _refused_post(platform, payload + ERASE + FORGED.format(n=f"{nonce}esc"))
    assert r.status_code == 403, r.text
    lines = _cp_lines(platform, nonce)
    assert lines, "the refusal was not logged"
    forged = [line for line in lines if line.startswith(FORGED[:24])]
    assert not forged, f"{len(forged)} forged lines in the CP's log, e.g. {forged[0]!r}"
    assert not [line for line in lines if "\x1b" in line], "a terminal escape sequence reached the log"
    assert len([line for line in lines if "dashboard: refused" in line]) == 1, lines


def test_a_fake_key_value_pair_in_a_path_is_not_the_lines_own(platform: Platform, mallory: Tenant) -> None:
    nonce = uuid.uuid4().hex
    victim = signup(platform.url, "victim")
    fake = f"x{nonce} event=sandbox_deleted sandbox_id=sbx_{nonce} team={victim.team_id}"
    r = _refused_post(platform, fake, **{"X-API-Key": mallory.api_key})
    assert r.status_code == 403, r.text
    lines = _cp_lines(platform, nonce)
    assert lines, "the refusal was not logged"
    pair = re.compile(r"(?:^|\s)event=sandbox_deleted\b")
    assert not [line for line in lines if pair.search(line)], lines
    assert not [line for line in lines if f" team={victim.team_id}" in line], lines


def test_one_request_writes_no_huge_log_line(platform: Platform) -> None:
    nonce = uuid.uuid4().hex
    r = _refused_post(platform, nonce + "a" * 60_000)
    assert r.status_code == 403, r.text
    lines = _cp_lines(platform, nonce)
    assert lines, "the refusal was not logged"
    longest = max(lines, key=len)
    assert len(longest) < 10_000, f"one request wrote a {len(longest)}-character line: {longest[:200]}"


def _series(platform: Platform) -> list[str]:
    with httpx.Client(base_url=platform.url, headers=platform.user_headers, timeout=60) as c:
        r = c.get("/metrics")
    assert r.status_code == 200, r.text
    return [line for line in r.text.splitlines() if line and not line.startswith("#")]


def test_metric_labels_are_bounded_whatever_the_client_sends(platform: Platform, mallory: Tenant) -> None:
    """Held: 225 requests of made-up paths, methods, sandbox ids, file routes, template names
    and E2B routes add a handful of series (route templates), none named by the tenant."""
    nonce = uuid.uuid4().hex[:12]
    before = set(_series(platform))
    with mallory.client(timeout=60) as c, httpx.Client(base_url=platform.cp.e2b_url, timeout=60) as e2b:
        for i in range(25):
            tag = f"{nonce}{i}"
            c.get(f"/v1/{tag}/x")
            c.request("PROPFIND", f"/v1/sandboxes/sbx_{tag}")
            c.request("PURGE", f"/{tag}")
            with contextlib.suppress(httpx.HTTPError):  # no method httptools knows: refused
                c.request(f"X{tag.upper()}", f"/{tag}")
            c.get(f"/v1/sandboxes/sbx_{tag}/files/{tag}", params={"path": f"/{tag}"})
            c.get(f"/v1/templates/{tag}")
            c.post("/v1/templates", json={"name": tag, "spec": f"FROM {tag}"})
            e2b.get(f"/sandboxes/{tag}", headers={"X-API-Key": mallory.api_key})
            e2b.request("MKCOL", f"/{tag}/{tag}", headers={"X-API-Key": mallory.api_key})
    after = _series(platform)
    assert not [s for s in after if nonce in s or nonce.upper() in s], "a tenant's text became a label"
    new = {re.sub(r"\{.*", "", s) + s[s.find("{") : s.find("}") + 1] for s in set(after) - before}
    label_sets = {s for s in new if "_bucket" not in s}
    assert len(label_sets) < 40, sorted(label_sets)


def test_metrics_are_for_the_platform_admin_only(platform: Platform, mallory: Tenant) -> None:
    """Held: a tenant's JWT gets 403, its key or no credentials 401; none sees a team's id."""
    with httpx.Client(base_url=platform.url, timeout=60) as c:
        anonymous = c.get("/metrics")
        with_key = c.get("/metrics", headers={"X-API-Key": mallory.api_key})
        with_jwt = c.get("/metrics", headers={"Authorization": f"Bearer {mallory.token}"})
    assert anonymous.status_code == 401, anonymous.text
    assert with_key.status_code in (401, 403), with_key.text  # a user token's route
    assert with_jwt.status_code == 403, with_jwt.text
    for r in (anonymous, with_key, with_jwt):
        assert "team_" not in r.text and "warren_" not in r.text


def test_a_file_name_starts_no_log_line_of_its_own(platform: Platform, mallory: Tenant) -> None:
    """A tenant's file, named with a newline and a whole forged line, downloaded and cut midway
    (its sandbox deleted): the CP logs the failure with the path (``file stream read failed
    midway sandbox=… path=…``)."""
    nonce = uuid.uuid4().hex
    forged = FORGED.format(n=nonce)
    sid = mallory.create()
    name = f"/tmp/{nonce}\n{forged}"
    mallory.sh(sid, f"head -c 33554432 /dev/zero > \"$(printf '/tmp/{nonce}\\n{forged}')\"")
    with (
        mallory.client(timeout=60) as c,
        c.stream("POST", f"/v1/sandboxes/{sid}/files/stream/read", json={"path": name}) as r,
    ):
        assert r.status_code == 200, r.read()
        chunks = r.iter_bytes()
        next(chunks)
        assert mallory.w("DELETE", f"/v1/sandboxes/{sid}").status_code in (200, 204)
        with contextlib.suppress(httpx.HTTPError):
            for _ in chunks:
                pass
    lines = wait_until(lambda: _cp_lines(platform, nonce), 20, "the failure's log line")
    assert not [line for line in lines if line.startswith(FORGED[:24])], lines


def _formatted(
    formatter: logging.Formatter, msg: str, *args: object, exc: BaseException | None = None
) -> str:
    record = logging.LogRecord("warren.files", logging.WARNING, __file__, 1, msg, args, None)
    if exc is not None:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    return formatter.format(record)


@pytest.mark.parametrize("formatter", [SafeFormatter(), JsonFormatter()], ids=["text", "json"])
def test_variants_of_the_same_line_in_both_formats(formatter: logging.Formatter) -> None:
    """The file-name line, a guest's stderr (``repr``), an error's words with a pair of their
    own, and an exception whose message holds a whole forged line: one line each, no pair but
    the line's own, at most ~8 KiB; numbers and plain values as before."""
    forged = "\n" + FORGED.format(n="x") + " event=sandbox_deleted"
    out = [
        _formatted(formatter, "file stream read failed midway sandbox=%s path=%s: %s", "sb-1", forged, "e"),
        _formatted(formatter, "event=guest_stderr sandbox_id=%s line=%s", "sb-1", repr(f"a{forged}")),
        _formatted(formatter, "monitor: ListSandboxes on %s failed: %s", "host-1", f"x{forged}"),
        _formatted(formatter, "event=x path=%s", "p" * 100_000 + "\u2028" * 100_000),
    ]
    try:
        raise ValueError(f"boom{forged}")
    except ValueError as e:
        out.append(_formatted(formatter, "build %s failed", "b-1", exc=e))
    for text in out:
        message = json.loads(text)["message"] if isinstance(formatter, JsonFormatter) else text
        assert "\n" not in message.split("\nTraceback", 1)[0], text
        assert not [ln for ln in text.splitlines() if ln.startswith(FORGED[:24])], text
        assert not re.search(r"(?:^|\s)event=sandbox_deleted", text), text
        assert len(text) < 10_000, len(text)
    plain = _formatted(
        formatter, "event=file_window direction=%s sandbox=%s peak=%d pct=%.1f%%", "up", "sb-1", 7, 2.5
    )
    assert "event=file_window direction=up sandbox=sb-1 peak=7 pct=2.5%" in plain


def test_uvicorn_lines_stay_safe_after_uvicorn_configures_its_logging_again() -> None:
    """``warren cp`` makes a second ``uvicorn.Config`` (the E2B socket), which puts uvicorn's
    own formatters back: the bound is a filter on uvicorn's loggers, which that keeps."""
    import uvicorn

    access, root = logging.getLogger("uvicorn.access"), logging.getLogger()
    handlers, level = list(root.handlers), root.level
    setup_logging("INFO", "text")
    for h in list(root.handlers):  # this test process keeps pytest's handlers, not the CP's
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    uvicorn.Config(app=None)  # type: ignore[arg-type]  # configures logging, as warren cp's second one
    records: list[logging.LogRecord] = []
    capture = logging.Handler()
    capture.emit = records.append  # type: ignore[method-assign]
    access.addHandler(capture)
    try:
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "POST", "/" + "a" * 60_000, "1.1", 403)
    finally:
        access.removeHandler(capture)
    assert any(isinstance(f, SafeArgs) for f in access.filters)
    assert len(records[0].getMessage()) < 2_000
