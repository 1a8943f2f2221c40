"""The SDK's template builder against a live platform (a CP process and one real agent): a chain
of calls builds a template whose sandboxes see its steps; the builder and the equivalent
hand-written Warrenfile (sent over REST with a context tar made by ``tarfile``) give the same
template, the second build entirely from the cache; a failing step raises TemplateBuildError
with its exit code; the async twin follows the same build the same way."""

from __future__ import annotations

import asyncio
import io
import tarfile
from pathlib import Path

import httpx
import pytest

from tests.harness.platform import Platform
from warren import AsyncTemplate, NotFoundError, Sandbox, Template, TemplateBuildError
from warren.sdk import BuildInfo

pytestmark = [pytest.mark.root, pytest.mark.timeout(600), pytest.mark.shared_platform]

HAND_SPEC = """FROM minimal
RUN echo same > /same
ENV A='b c'
WORKDIR /srv
COPY f.txt /srv/f.txt
"""


def _builder(local: Path, run: str = "echo hi > /hello") -> Template:
    return (
        Template()
        .from_template("minimal")
        .run(run)
        .env({"A": "b c"})
        .workdir("/srv")
        .copy(local, "/srv/f.txt")
    )


@pytest.fixture(scope="module")
def context_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ctx")
    (d / "f.txt").write_text("from the context\n")
    return d


def test_a_built_template_has_what_the_builder_said(platform: Platform, context_dir: Path) -> None:
    logs: list[str] = []
    statuses: list[BuildInfo] = []
    info = _builder(context_dir / "f.txt").build(
        "t1", on_log=logs.append, on_status=statuses.append, timeout=300, **platform.sdk()
    )
    assert (info.name, info.version, info.source) == ("t1", 1, "build")
    assert "v1" in info.tags and len(info.layers) == 3  # RUN, WORKDIR, COPY
    assert info.config["env"] == {"A": "b c"} and info.config["workdir"] == "/srv"
    log = "".join(logs)
    assert "Step 2/5: RUN echo hi > /hello" in log and "Step 5/5: COPY f.txt /srv/f.txt" in log
    assert statuses[-1].status == "ready" and statuses[-1].version == 1
    with Sandbox.create("t1", **platform.sdk()) as sbx:
        r = sbx.commands.run('cat /hello; echo "$A"; pwd; cat f.txt')
        assert r.stdout == "hi\nb c\n/srv\nfrom the context\n", r.stderr


def test_the_builder_makes_the_same_template_as_the_hand_written_spec(
    platform: Platform, context_dir: Path
) -> None:
    # By hand: the Warrenfile and a context tar written by tarfile, POSTed as multipart.
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as t:
        t.add(context_dir / "f.txt", arcname="f.txt")
    with httpx.Client(base_url=platform.url, headers=platform.headers, timeout=60) as http:
        r = http.post(
            "/v1/templates",
            data={"name": "by-hand", "spec": HAND_SPEC},
            files={"context": ("context.tar", tar.getvalue(), "application/x-tar")},
        )
        assert r.status_code == 202, r.text
    with Template.get_build("by-hand", r.json()["build_id"], **platform.sdk()) as build:
        by_hand = build.wait(timeout=300)
    assert build.info.cached_steps == 0  # its RUN is its own: nothing to reuse

    built = _builder(context_dir / "f.txt", run="echo same > /same").start_build(
        "by-builder", **platform.sdk()
    )
    with built:
        info = built.wait(timeout=300)
        assert built.info.cached_steps == 3  # every layer step came from the cache
    assert info.layers == by_hand.layers
    assert info.config == by_hand.config


def test_a_failing_step_raises_with_its_exit_code(platform: Platform) -> None:
    spec = Template().from_template("minimal").run("echo half-way").run("echo boom >&2; exit 7")
    with pytest.raises(TemplateBuildError) as caught:
        spec.build("t-fail", timeout=300, **platform.sdk())
    e = caught.value
    assert (e.exit_code, e.failed_step, e.build.status) == (7, 3, "failed")
    assert "boom" in e.log_tail and "Step 3/3" in e.log_tail
    with pytest.raises(NotFoundError):
        Template.get("t-fail", **platform.sdk())  # no half-template
    assert Template.builds("t-fail", **platform.sdk())[0].exit_code == 7

    # The same log by polling with offsets (no event stream) and read page by page.
    with Template.get_build("t-fail", e.build_id, **platform.sdk()) as build:
        streamed: list[str] = []
        polled: list[str] = []
        assert build.follow(on_log=streamed.append).status == "failed"
        assert build.follow(on_log=polled.append, stream=False).exit_code == 7
        assert "".join(polled) == "".join(streamed) and "boom" in "".join(polled)
        chunk = build.read_log("".join(polled).encode().index(b"boom"))
        assert chunk.data.startswith("boom") and chunk.done and chunk.status == "failed"


def test_the_async_builder_builds_and_follows_the_same_way(platform: Platform, context_dir: Path) -> None:
    async def main() -> tuple[str, list[str], list[str]]:
        pieces: list[str] = []

        async def on_log(text: str) -> None:  # an async callback is awaited
            pieces.append(text)

        spec = (
            AsyncTemplate()
            .from_template("minimal")
            .run("echo hi > /hello")
            .env({"A": "b c"})
            .workdir("/srv")
            .copy(context_dir / "f.txt", "/srv/f.txt")
        )
        info = await spec.build("t-async", on_log=on_log, timeout=300, **platform.sdk())
        names = [t.name for t in await AsyncTemplate.list(**platform.sdk())]
        return info.source, pieces, names

    source, pieces, names = asyncio.run(main())
    assert source == "build" and "t-async" in names and "minimal" in names
    log = "".join(pieces)  # fully cached: it may end before the stream opens, and is read whole
    assert log.count("Step 1/5: FROM minimal") == 1 and log.count(" ---> CACHED") == 3
    Template.delete("t-async", **platform.sdk())
    with pytest.raises(NotFoundError):
        Template.get("t-async", **platform.sdk())
