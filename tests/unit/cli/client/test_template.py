"""`warren template build`'s log printer: the server's step lines become `[n/N]` headers and
cache hits `CACHED`, whatever the chunking; other output is written as it comes."""

from __future__ import annotations

import pytest

from warren.cli.client import template

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
    assert capsys.readouterr().out == "\rdownloading 99%"
    progress.log("\nSte")
    assert capsys.readouterr().out == "\n"  # "Ste" may start a step line
    progress.log("ve\n")
    assert capsys.readouterr().out == "Steve\n"
