"""Session 22: a sandbox's file names reached the CLI user's terminal as control sequences.

Code in a sandbox (an agent's tool call, a user's script: untrusted by definition) names its
files. ``warren files ls`` printed names and symlink targets as they came, through Rich, which
passes ESC on: a name carrying an OSC 52 sequence wrote the terminal's clipboard (of a terminal
that allows it), others set its title, cleared its screen or rang its bell, and a name in
Rich's markup became a hyperlink. Found by the session's attack pass (a helper), by reading the
CLI.

As the attacker runs it: the tenant's sandbox makes the files; the victim, a person on the team,
lists the directory with the CLI. Now the client's consoles write every control character as
``\\xNN`` and read no markup from what they did not write (cli/client/output.py).
"""

from __future__ import annotations

import pytest

from tests.integration.cli.test_cli import cli_env, js, run

pytestmark = [pytest.mark.root, pytest.mark.timeout(600), pytest.mark.shared_platform]

__all__ = ["cli_env"]  # the fixture, from the CLI's own tests

# An OSC 52 clipboard write (base64 of "rm -rf ~"), a screen clear and a title (with its BEL),
# a CR that overwrites the line, and Rich markup for a hyperlink.
MAKE = r"""
set -e
mkdir -p /tmp/loot && cd /tmp/loot
touch "$(printf 'notes\033]52;c;cm0gLXJmIH4=\033\\.txt')"
touch "$(printf 'ok\rEVERYTHING-IS-FINE')"
touch '[link=mailto:x@evil.example]report.pdf'
ln -s "$(printf '\033[2J\033]0;pwned\007')" target
"""


def test_a_sandboxs_file_names_reach_a_cli_users_terminal_as_text(cli_env: dict[str, str]) -> None:
    sb = js(cli_env, "sandbox", "create", "--timeout", "300")
    assert isinstance(sb, dict)
    sid = str(sb["id"])
    try:
        code, out, err = run(cli_env, "sandbox", "exec", sid, "--", "/bin/sh", "-c", MAKE)
        assert code == 0, (out, err)
        code, out, err = run(cli_env, "files", "ls", sid, "/tmp/loot")
        assert code == 0, err
        obeyed = [c for c in ("\x1b", "\x07", "\r") if c in out]
        assert obeyed == [], f"control characters reached the terminal: {obeyed} in {out!r}"
        assert "notes\\x1b]52;c;cm0gLXJmIH4=" in out and "ok\\x0dEVERYTHING" in out  # shown, as text
        assert "[link=mailto:x@evil.example]report.pdf" in out
    finally:
        run(cli_env, "sandbox", "kill", sid)
