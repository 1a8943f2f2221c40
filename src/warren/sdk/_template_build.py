"""Template builds over the REST API, written once as ops (see ``_transport``): submit a spec and
its context, follow the log (the server-sent-events stream, falling back to polling with
offsets), and the plain reads. ``_template`` turns them into ``Template`` / ``AsyncTemplate``
and ``TemplateBuild`` / ``AsyncTemplateBuild`` methods.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

from warren.sdk._exceptions import (
    InvalidArgumentError,
    NotFoundError,
    StreamError,
    WarrenError,
    WarrenTimeoutError,
)
from warren.sdk._models import _ts
from warren.sdk._template_spec import TemplateSpec
from warren.sdk._transport import Call, Http, Op, Sleep, StreamClose, StreamRead, Upload
from warren.url_path import segment

__all__ = [
    "BuildInfo",
    "LogChunk",
    "TemplateBuildError",
    "TemplateInfo",
    "TemplateVersion",
    "follow_op",
    "submit_op",
]

TERMINAL = ("ready", "failed")
LOG_TAIL_BYTES = 4096
# A read on the log stream waits this long for the next event (the server sends keep-alive
# comments in between); past it the stream is reopened from the offset reached.
STREAM_READ_TIMEOUT_S = 60.0
POLL_MIN_S, POLL_MAX_S = 0.2, 1.0
# One event is at most a 1 MiB log read, JSON-escaped (up to 12 bytes a character).
MAX_EVENT_BYTES = 16 << 20
SPOOL_BYTES = 16 << 20  # a context up to this size is built in memory, a larger one on disk

OnLog = Callable[[str], Any]
OnStatus = Callable[["BuildInfo"], Any]


def template_path(name: str) -> str:
    return "/v1/templates/" + segment(name, "template name")


def build_path(name: str, build_id: str) -> str:
    return f"{template_path(name)}/builds/{segment(build_id, 'build ID')}"


# ------------------------------------------------------------------------------------ models


@dataclass(frozen=True)
class TemplateVersion:
    """One version of a template: its tags (``v<version>`` first), where it came from
    (``source``: ``base``, ``build``, ``import`` or ``snapshot``), its layers and defaults."""

    version: int
    tags: list[str]
    source: str
    size_bytes: int
    layers: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    build_id: str | None = None
    created_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TemplateVersion:
        tags = d.get("tags")
        version = int(d.get("version") or 0)
        if isinstance(tags, dict):  # the listing's {tag: version}
            tags = [t for t, v in tags.items() if v == version]
        return cls(
            version=version,
            tags=[str(t) for t in tags or []],
            source=str(d.get("source") or d.get("type") or ""),
            size_bytes=int(d.get("size_bytes") or 0),
            layers=[str(x) for x in d.get("layers") or []],
            config=dict(d.get("config") or {}),
            build_id=d.get("build_id"),
            created_at=_ts(d.get("created_at")),
            raw=d,
        )


@dataclass(frozen=True)
class TemplateInfo:
    """A template: its newest version's ``version``, ``tags``, ``source``, ``size_bytes``,
    ``layers`` and ``config``; ``version_count`` versions in all, ``tag_versions`` says which
    version each tag names, and ``versions`` lists them (newest first) when the API sent them
    (``Template.get``, not the listing). ``raw`` is the whole JSON answer."""

    name: str
    version: int
    tags: list[str]
    source: str
    size_bytes: int
    platform: bool = False
    layers: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    version_count: int = 1
    tag_versions: dict[str, int] = field(default_factory=dict)
    versions: list[TemplateVersion] = field(default_factory=list)
    created_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any], version: int | None = None) -> TemplateInfo:
        """The listing's or the detail's JSON; ``version`` picks that version (a build's) as
        the one described, instead of the newest."""
        raw_versions = d.get("versions")
        versions: list[TemplateVersion] = []
        if isinstance(raw_versions, list):  # one template: every version, newest first
            versions = [TemplateVersion.from_json({**v}) for v in raw_versions if isinstance(v, dict)]
        picked = [v for v in versions if v.version == version]
        newest = picked[0] if picked else versions[0] if versions else TemplateVersion.from_json(d)
        tags = d.get("tags")
        if isinstance(tags, dict):
            tag_versions = {str(t): int(v) for t, v in tags.items()}
        else:
            tag_versions = {t: v.version for v in reversed(versions) for t in v.tags}
            tag_versions.update({t: newest.version for t in newest.tags})
        return cls(
            name=str(d["name"]),
            version=newest.version,
            tags=newest.tags,
            source=newest.source,
            size_bytes=newest.size_bytes,
            platform=bool(d.get("platform")),
            layers=newest.layers,
            config=newest.config,
            version_count=raw_versions if isinstance(raw_versions, int) else max(len(versions), 1),
            tag_versions=tag_versions,
            versions=versions,
            created_at=newest.created_at,
            raw=d,
        )


@dataclass(frozen=True)
class BuildInfo:
    """A build's state: ``status`` is ``queued``, ``running``, ``ready`` or ``failed``; ``step``
    of ``steps`` is where it is (``cached_steps`` of them came from the cache); a failed build
    has ``failed_step``, ``exit_code`` (of its ``RUN``, when it got that far) and ``error``;
    a ready one the template ``version`` it made."""

    id: str
    name: str
    status: str
    step: int = 0
    steps: int = 0
    cached_steps: int = 0
    failed_step: int | None = None
    exit_code: int | None = None
    error: str = ""
    version: int | None = None
    tags: list[str] = field(default_factory=list)
    created_at: datetime | None = None
    finished_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BuildInfo:
        version = d.get("version", d.get("template_version"))
        return cls(
            id=str(d.get("build_id") or d.get("id") or ""),
            name=str(d.get("name") or ""),
            status=str(d.get("status") or ""),
            step=int(d.get("step") or 0),
            steps=int(d.get("steps") or 0),
            cached_steps=int(d.get("cached_steps") or 0),
            failed_step=d.get("failed_step"),
            exit_code=d.get("exit_code"),
            error=str(d.get("error") or ""),
            version=int(version) if isinstance(version, int) else None,
            tags=list(d.get("tags") or []),
            created_at=_ts(d.get("created_at")),
            finished_at=_ts(d.get("finished_at")),
            raw=d,
        )


@dataclass(frozen=True)
class LogChunk:
    """One read of a build's log: ``data`` from byte ``offset`` up to ``next_offset``."""

    data: str
    offset: int
    next_offset: int
    done: bool
    status: str

    @classmethod
    def from_json(cls, d: dict[str, Any], offset: int) -> LogChunk:
        return cls(
            data=str(d.get("data") or ""),
            offset=int(d.get("offset", offset)),
            next_offset=int(d.get("next_offset", offset)),
            done=bool(d.get("done")),
            status=str(d.get("status") or ""),
        )


class TemplateBuildError(WarrenError):
    """A build failed: ``failed_step`` (1-based) exited ``exit_code`` (None when the step did not
    get to run a command, e.g. a COPY of a missing file or a time limit), ``log_tail`` holds the
    last few KiB of the log and ``build`` the whole :class:`BuildInfo`."""

    def __init__(self, build: BuildInfo, log_tail: str) -> None:
        where = f"step {build.failed_step}" if build.failed_step else "the build"
        code = f" exited with code {build.exit_code}" if build.exit_code is not None else " failed"
        detail = f": {build.error}" if build.error else ""
        super().__init__(f"template {build.name!r}: {where}{code}{detail}", code="build_failed")
        self.build = build
        self.build_id = build.id
        self.exit_code = build.exit_code
        self.failed_step = build.failed_step
        self.log_tail = log_tail


# ---------------------------------------------------------------------------------- submit


def _field(boundary: str, name: str, value: str) -> bytes:
    return (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n').encode()


def form_upload(fields: Mapping[str, str], file_field: str, filename: str, source: Any) -> Upload:
    """A multipart body: the text ``fields`` first, then one file part streamed from ``source``."""
    boundary = "warren-" + secrets.token_hex(16)
    head = b"".join(_field(boundary, k, v) for k, v in fields.items())
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
        "Content-Type: application/x-tar\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return Upload(head, source, tail, f"multipart/form-data; boundary={boundary}")


def build_fields(
    name: str, spec: str, tags: Sequence[str] | None, build_args: Mapping[str, str] | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "spec": spec}
    if tags:
        body["tags"] = list(tags)
    if build_args:
        body["build_args"] = dict(build_args)
    return body


def make_context(spec: TemplateSpec) -> IO[bytes]:
    """The build context tar in a spooled temporary file, rewound (the caller closes it)."""
    f = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115  # handed to the caller
    try:
        spec.write_context(f)
        f.seek(0)
    except BaseException:
        f.close()
        raise
    return f


def submit_op(
    spec: TemplateSpec,
    name: str,
    tags: Sequence[str] | None,
    build_args: Mapping[str, str] | None,
    context: Callable[[], Any],
) -> Op[BuildInfo]:
    """POST the spec (JSON without a context; multipart with one). ``context()`` makes the tar
    (run through ``Call`` so the async SDK can build it off the event loop)."""
    body = build_fields(name, spec.to_warrenfile(), tags, build_args)
    if not spec.needs_context():
        res = yield Http("POST", "/v1/templates", json=body)
        return BuildInfo.from_json(res.json())
    fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items()}
    tar = yield Call(context)
    try:
        res = yield Http(
            "POST", "/v1/templates", upload=form_upload(fields, "context", "context.tar", tar), timeout=None
        )
    finally:
        tar.close()
    return BuildInfo.from_json(res.json())


# ---------------------------------------------------------------------------------- follow


@dataclass
class _Follow:
    """Where following a build has got to."""

    name: str
    build_id: str
    on_log: OnLog | None
    on_status: OnStatus | None
    deadline: float | None
    offset: int = 0
    tail: bytearray = field(default_factory=bytearray)
    last: BuildInfo | None = None

    @property
    def base(self) -> str:
        return build_path(self.name, self.build_id)

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise WarrenTimeoutError(
                f"stopped following build {self.build_id} of {self.name!r} at its timeout; "
                "the build goes on in the background",
                code="timeout",
            )

    def log(self, text: str, next_offset: int | None) -> Op[None]:
        if not text:
            return
        raw = text.encode("utf-8", "replace")
        self.offset = next_offset if next_offset is not None else self.offset + len(raw)
        self.tail += raw
        del self.tail[:-LOG_TAIL_BYTES]
        if self.on_log is not None:
            yield Call(self.on_log, (text,))

    def status(self, info: BuildInfo) -> Op[None]:
        changed = self.last is None or (info.status, info.step) != (self.last.status, self.last.step)
        self.last = info
        if changed and self.on_status is not None:
            yield Call(self.on_status, (info,))

    def tail_text(self) -> str:
        return bytes(self.tail).decode("utf-8", "replace")


def _sse_events(buffer: bytearray) -> list[tuple[str, str]]:
    """Complete events taken off the front of ``buffer``: (event type, data)."""
    if b"\r" in buffer:
        buffer[:] = buffer.replace(b"\r\n", b"\n")  # a CR at a chunk's end waits for its LF
    events: list[tuple[str, str]] = []
    start = 0
    while (end := buffer.find(b"\n\n", start)) >= 0:
        kind, data = "message", []
        for line in buffer[start:end].decode("utf-8", "replace").split("\n"):
            if line.startswith(":"):
                continue  # a keep-alive comment
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "event":
                kind = value
            elif key == "data":
                data.append(value)
        if data:
            events.append((kind, "\n".join(data)))
        start = end + 2
    del buffer[:start]
    return events


def _stream_op(f: _Follow) -> Op[bool]:
    """Follow the server-sent-events stream from ``f.offset`` to its end. True when the build
    had ended by then; False when the stream closed before (the caller reopens it or polls).
    A final status can come before the last of the log: the server ends the stream once the
    log is all sent, so the stream is read to its end either way."""
    stream = yield Http(
        "GET", f"{f.base}/log/stream", params={"offset": f.offset}, stream=True, timeout=STREAM_READ_TIMEOUT_S
    )
    buffer = bytearray()
    ended = False
    try:
        while True:
            f.check_deadline()
            chunk = yield StreamRead(stream)
            if not chunk:
                return ended
            buffer += chunk
            if len(buffer) > MAX_EVENT_BYTES:
                raise StreamError(
                    "the build log stream sent an event past its size bound", code="stream_error"
                )
            for kind, data in _sse_events(buffer):
                if kind == "log":
                    yield from _log_event(f, data)
                elif kind == "status":
                    info = BuildInfo.from_json(json.loads(data))
                    yield from f.status(info)
                    ended = info.done
    finally:
        yield StreamClose(stream)


def _log_event(f: _Follow, data: str) -> Op[None]:
    try:
        event = json.loads(data)
    except ValueError:
        event = data
    if isinstance(event, dict):
        yield from f.log(str(event.get("data") or ""), event.get("next_offset"))
    else:
        yield from f.log(str(event), None)


def _poll_op(f: _Follow) -> Op[None]:
    """Poll the log (and the build, for its step) with offsets until the build ended."""
    delay = POLL_MIN_S
    while True:
        f.check_deadline()
        res = yield Http("GET", f"{f.base}/log", params={"offset": f.offset})
        chunk = LogChunk.from_json(res.json(), f.offset)
        yield from f.log(chunk.data, chunk.next_offset)
        info = yield from get_build_op(f.name, f.build_id)
        yield from f.status(info)
        if chunk.done and info.done:
            return
        delay = POLL_MIN_S if chunk.data else min(delay * 1.5, POLL_MAX_S)
        yield Sleep(delay)


def follow_op(
    name: str,
    build_id: str,
    *,
    on_log: OnLog | None = None,
    on_status: OnStatus | None = None,
    timeout: float | None = None,
    offset: int = 0,
    stream: bool = True,
) -> Op[tuple[BuildInfo, str]]:
    """Follow a build's log from ``offset`` to its end; the build's final state (failed or
    ready: raising is the caller's choice) and the log's last few KiB. The stream is reopened
    where it stopped when the connection drops; without it (a 404/405 from a server or proxy,
    or two broken streams in a row with nothing read) the log is polled."""
    f = _Follow(name, build_id, on_log, on_status, time.monotonic() + timeout if timeout else None, offset)
    ended, failures = False, 0
    while stream and not ended and failures < 2:
        reached = f.offset
        try:
            ended = yield from _stream_op(f)
        except NotFoundError:
            yield from get_build_op(name, build_id)  # a missing build raises here
            break  # the build exists: the stream route does not
        except WarrenError as e:
            if e.status == 405 or isinstance(e, InvalidArgumentError):
                break
            if not isinstance(e, (StreamError, WarrenTimeoutError)) or e.code == "timeout":
                raise
            failures = 0 if f.offset > reached else failures + 1
    if not ended:
        yield from _poll_op(f)
    final = yield from get_build_op(name, build_id)
    yield from f.status(final)
    return final, f.tail_text()


def result_op(name: str, final: BuildInfo, log_tail: str) -> Op[TemplateInfo]:
    """The template a finished build made, or its TemplateBuildError."""
    if final.status != "ready":
        raise TemplateBuildError(final, log_tail)
    res = yield Http("GET", template_path(name))
    return TemplateInfo.from_json(res.json(), final.version)


# ------------------------------------------------------------------------------------ reads


def get_build_op(name: str, build_id: str) -> Op[BuildInfo]:
    res = yield Http("GET", build_path(name, build_id))
    return BuildInfo.from_json(res.json())


def read_log_op(name: str, build_id: str, offset: int) -> Op[LogChunk]:
    res = yield Http("GET", f"{build_path(name, build_id)}/log", params={"offset": offset})
    return LogChunk.from_json(res.json(), offset)


def list_builds_op(name: str) -> Op[list[BuildInfo]]:
    res = yield Http("GET", f"{template_path(name)}/builds")
    body = res.json()
    rows = body.get("builds", []) if isinstance(body, dict) else body
    return [BuildInfo.from_json(b) for b in rows]


def get_template_op(name: str) -> Op[TemplateInfo]:
    res = yield Http("GET", template_path(name))
    return TemplateInfo.from_json(res.json())


def list_templates_op() -> Op[list[TemplateInfo]]:
    res = yield Http("GET", "/v1/templates")
    body = res.json()
    rows = body.get("templates", []) if isinstance(body, dict) else body
    return [TemplateInfo.from_json(t) for t in rows]


def delete_template_op(name: str, version: int | None = None) -> Op[None]:
    yield Http("DELETE", template_path(name), params={"version": version} if version else None)


def import_op(name: str, image: Any, tags: Sequence[str] | None) -> Op[TemplateInfo]:
    """POST an OCI layout or ``docker save`` tar (a binary file object) as a new template."""
    fields = {"name": name}
    if tags:
        fields["tags"] = json.dumps(list(tags))
    res = yield Http(
        "POST", "/v1/templates/import", upload=form_upload(fields, "image", "image.tar", image), timeout=None
    )
    return TemplateInfo.from_json(res.json())
