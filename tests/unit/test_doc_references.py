"""Every `§` reference in the source resolves to a section of a document in this repository.

The code cites the behaviour reference and the design decisions as ``docs/spec.md §2.5`` and
``docs/design.md §4``: each ``§N`` must follow a ``docs/<page>.md`` on the same line, and that
page must have a heading numbered ``N``.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "src" / "warren"
TEXT_SUFFIXES = {".py", ".pyi", ".proto", ".md", ".html", ".js", ".css", ".ini", ".mako"}
REF = re.compile(r"§(\d+(?:\.\d+)*)")
DOC = re.compile(r"docs/([\w./-]+\.md)")


def _headings(doc: Path) -> set[str]:
    numbers = set()
    for line in doc.read_text().splitlines():
        # A markdown heading ("### 2.5 Sandboxes") or a bold run-in one ("**9.4 Metrics.**").
        m = re.match(r"(?:#+\s+|\*\*)(\d+(?:\.\d+)*)\.?\s", line)
        if m:
            numbers.add(m.group(1))
    return numbers


def _references() -> list[tuple[str, int, str | None, str]]:
    """(file, line, cited doc or None, section) for every § in the source."""
    found = []
    for path in sorted(SOURCE.rglob("*")):
        if path.suffix not in TEXT_SUFFIXES or not path.is_file():
            continue
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for m in REF.finditer(line):
                docs = DOC.findall(line[: m.start()])
                found.append((str(path.relative_to(ROOT)), lineno, docs[-1] if docs else None, m.group(1)))
    return found


def test_the_source_cites_sections() -> None:
    assert len(_references()) > 50  # the check below must have something to check


def test_every_section_reference_resolves_in_this_repository() -> None:
    broken = []
    cache: dict[str, set[str]] = {}
    for where, lineno, doc, section in _references():
        if doc is None:
            broken.append(f"{where}:{lineno}: §{section} names no docs/<page>.md before it on its line")
            continue
        page = ROOT / "docs" / doc
        if not page.is_file():
            broken.append(f"{where}:{lineno}: docs/{doc} does not exist")
            continue
        headings = cache.setdefault(doc, _headings(page))
        if section not in headings:
            broken.append(f"{where}:{lineno}: docs/{doc} has no section {section}")
    assert broken == []
