"""`warren template build`'s log printer: the server's step lines become `[n/N]` headers and
cache hits `CACHED`, whatever the chunking; other output is written as it comes, its colours kept
and any other control shown (the log is someone else's RUN steps'). `warren template cancel`
prints the cancelled build, or one error line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner, Result

from warren.cli.client import template
from warren.sdk import BuildInfo, ConflictError

LONG = " y" * 100
LOG = (
    "Step 1/3: FROM minimal\n"
    "Step 2/3: RUN echo hi\n"
    " ---> CACHED 0123456789ab\n"
    f"Step 3/3: RUN pip install x{LONG}\n"
    "Collecting x [progress, no newline]"
    "\nStep lines inside output: no\n"
    " ---> fedcba987654 (10240 bytes)\n"
)
EXPECTED = (
    "[1/3] FROM minimal\n"
    "[2/3] RUN echo hi\n"
    "  CACHED 0123456789ab\n"
    f"[3/3] RUN pip install x{LONG}\n"  # never wrapped at the console's width
    "Collecting x [progress, no newline]\n"
    "Step lines inside output: no\n"
    "  ---> fedcba987654 (10240 bytes)\n"
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(LOG)])
def test_step_lines_become_headers_whatever_the_chunks(size: int, capsys: pytest.CaptureFixture[str]) -> None:
    progress = template._Progress()
    for i in range(0, len(LOG), size):
        progress.log(LOG[i : i + size])
    progress.flush()
    assert capsys.readouterr().out == EXPECTED


def test_output_that_cannot_be_a_step_line_is_written_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    progress = template._Progress()
    progress.log("downloading 42%")
    assert capsys.readouterr().out == "downloading 42%"
    progress.log("\rdownloading 99%")
    assert capsys.readouterr().out == "\\x0ddownloading 99%"  # a CR could overwrite a line: shown
    progress.log("\nSte")
    assert capsys.readouterr().out == "\n"  # "Ste" may start a step line
    progress.log("ve\n")
    assert capsys.readouterr().out == "Steve\n"


OSC52 = "\x1b]52;c;cm0gLXJmIH4=\x07"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 1000])
def test_a_logs_colours_stay_and_its_other_controls_are_shown(
    size: int, capsys: pytest.CaptureFixture[str]
) -> None:
    log = f"\x1b[1;31merror\x1b[0m: {OSC52}x\x9b2J\u202eabc\ttab\nStep 2/2: RUN \x1b]0;t\x07\n\x1b[32mok"
    progress = template._Progress()
    for i in range(0, len(log), size):
        progress.log(log[i : i + size])
    progress.flush()
    assert capsys.readouterr().out == (
        "\x1b[1;31merror\x1b[0m: \\x1b]52;c;cm0gLXJmIH4=\\x07x\\x9b2J\\u202eabc\ttab\n"
        "[2/2] RUN \\x1b]0;t\\x07\n"  # a step's header: shown too
        "\x1b[32mok\x1b[0m"  # the colour the log left on, reset at its end
    )


class _FakeBuild:
    def __init__(self, result: BuildInfo | Exception) -> None:
        self.result = result

    def __enter__(self) -> _FakeBuild:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def cancel(self) -> BuildInfo:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def _cancel(monkeypatch: pytest.MonkeyPatch, result: BuildInfo | Exception, *args: str) -> Result:
    asked: list[tuple[str, str]] = []

    def get_build(name: str, build_id: str, **opts: object) -> _FakeBuild:
        asked.append((name, build_id))
        return _FakeBuild(result)

    monkeypatch.setattr(template.Template, "get_build", get_build)
    monkeypatch.setattr(template, "_conn", dict)
    r = CliRunner().invoke(template.app, ["cancel", "web", "bld-1", *args])
    assert asked == [("web", "bld-1")]
    return r


def test_cancel_prints_the_cancelled_build(monkeypatch: pytest.MonkeyPatch) -> None:
    info = BuildInfo.from_json({"build_id": "bld-1", "status": "failed", "error": "cancelled by the team"})
    r = _cancel(monkeypatch, info)
    assert r.exit_code == 0 and r.stdout == "cancelled build bld-1 of web (failed)\n", r.stdout
    r = _cancel(monkeypatch, info, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["error"] == "cancelled by the team", r.stdout


def test_cancel_of_an_ended_build_is_one_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    ended = ConflictError("build bld-1 of 'web' has already ended", code="build_finished", status=409)
    r = _cancel(monkeypatch, ended)
    assert r.exit_code == 1 and "build_finished" in r.stderr and "Traceback" not in r.stderr, r.stderr
