"""The login shell's startup files in the `minimal` rootfs, without their forks (issue 15).

E2B's SDK runs every command as ``/bin/bash -l -c <cmd>``, so each one reads Debian's
``/etc/profile`` and the user's ``~/.profile``, and those fork and exec a program per command:
``/etc/profile`` runs ``$(id -u)`` to choose PATH (and the prompt of a non-bash shell); root's
``~/.profile`` runs ``mesg n``, which without a terminal on stdin fails (its error and status
are thrown away). That is ~1.5 ms of CPU out of a ~4 ms ``bash -l -c true``.

The edits keep what every shell ends up with (PATH, the prompt, umask: a test runs both
versions): bash sets ``EUID`` itself (read-only, from geteuid(2)), so ``${EUID:-$(id -u)}`` is
the same number there and still runs ``id`` in dash and other shells, which do not set it. An
``EUID`` in the environment is taken as it is, by dash and by bash alike (bash sets its own only
when none was imported; session 9's attack suite, test_attack_session8_login_profile.py): as for
Debian's own ``${BASH-}`` test, it fools the caller's own shell about PATH and the prompt,
nothing more: it is never evaluated (``[`` wants a number) and gives no privilege. ``mesg`` acts
on the terminal of stdin, else of stderr, and the profile sends its stderr to /dev/null, so
``[ -t 0 ]`` runs it wherever it could do anything. Each edit replaces Debian's exact text only: a
file that differs (another release, an image's own) is left as it is.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("warren.agent.templates")

_MESG = "mesg n 2> /dev/null || true\n"
# (file under the rootfs, Debian bookworm's text, its replacement); every occurrence replaced.
EDITS: tuple[tuple[str, str, str], ...] = (
    ("etc/profile", '[ "$(id -u)" -eq 0 ]', '[ "${EUID:-$(id -u)}" -eq 0 ]'),
    # Root's own (base-files' dot.profile, copied at install; the package's copy under
    # /usr/share is left alone, so `dpkg --verify` stays clean).
    ("root/.profile", "\n" + _MESG, "\nif [ -t 0 ]; then " + _MESG.rstrip("\n") + "; fi\n"),
)


def trim_login_shell(rootfs: Path) -> list[str]:
    """Apply :data:`EDITS` under ``rootfs`` (in place: owner and mode kept); the files changed.
    A file that is a link, or under a directory that is a link out of ``rootfs``, is left alone:
    the edit never writes outside the tree (debootstrap's today, but that is not assumed)."""
    changed = []
    inside = rootfs.resolve()
    for rel, old, new in EDITS:
        path = rootfs / rel
        if path.is_symlink() or not path.is_file() or not path.resolve().is_relative_to(inside):
            continue
        text = path.read_text()
        if old not in text:
            log.info("event=template_profile_kept file=/%s (not Debian's text)", rel)
            continue
        path.write_text(text.replace(old, new))
        changed.append(rel)
    return changed
