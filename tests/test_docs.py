"""The documentation: README.md is the entry, docs/*.md the manual.

Every relative Markdown link and image in README.md and docs/*.md points to a
file that exists, and to a heading that exists when it names one (GitHub's
anchor rules); every page of docs/ is linked from the README or from another
page; the README stays short. Only Markdown links are checked (``[text](path)``,
``![alt](path)`` and ``[label]: path``), not paths written in code spans.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

pytestmark = pytest.mark.driver_blind

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# A code span: a run of backticks, anything but a blank line, the same run.
_CODE_SPAN = re.compile(r"(`+)(?!`)(?:(?!\n[ \t]*\n).)*?(?<!`)\1(?!`)", re.DOTALL)
# [text](target "title") and ![alt](target); the target may be <wrapped>.
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]"  # [text], one level of nested brackets
    r"\(\s*(<[^>]*>|[^)\s]*)"  # (target
    r"(?:\s+\"[^\"]*\")?\s*\)"  # "title")
)
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:[ \t]*(<[^>]*>|\S+)", re.MULTILINE)
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


def _prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """Lines outside fenced code blocks, with their 1-based numbers."""
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                continue
            yield number, line
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
            fence = None


def _prose(text: str) -> str:
    """``text`` with fenced code blocks and code spans blanked, lines kept in place."""
    lines = text.splitlines()
    kept = dict(_prose_lines(text))
    prose = "\n".join(kept.get(number, "") for number in range(1, len(lines) + 1))
    return _CODE_SPAN.sub(lambda match: "\n" * match.group(0).count("\n"), prose)


def links(path: Path) -> list[tuple[int, str]]:
    """``(line, target)`` of every Markdown link and image in ``path``.

    A link's text may wrap over several lines; the line is where it starts.
    """
    prose = _prose(path.read_text(encoding="utf-8"))
    found = [
        (prose.count("\n", 0, match.start()) + 1, match.group(1))
        for pattern in (_INLINE_LINK, _REFERENCE)
        for match in pattern.finditer(prose)
    ]
    return sorted((number, target.strip("<>")) for number, target in found)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (before de-duplication)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of ``path``, duplicates numbered as GitHub does."""
    seen: dict[str, int] = {}
    result: set[str] = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def resolve(page: Path, target: str) -> tuple[Path, str] | None:
    """The file and anchor a relative link points to; None for an absolute URL."""
    if _SCHEME.match(target) or target.startswith("//"):
        return None
    file_part, _, anchor = target.partition("#")
    file = (page.parent / unquote(file_part)).resolve() if file_part else page
    return file, unquote(anchor)


def test_slug_follows_github() -> None:
    assert slug("On one machine: `compose.replicaset.yml`") == (
        "on-one-machine-composereplicasetyml"
    )
    assert slug("Browsers: origins, CORS, rebinding, headers") == (
        "browsers-origins-cors-rebinding-headers"
    )
    assert slug("Modes (`REALTIME_AUTH`)") == "modes-realtime_auth"
    assert slug("What makes the fan-out fast") == "what-makes-the-fan-out-fast"


def test_links_skip_code(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "[a](a.md) `[b](b.md)`\n```\n[c](c.md)\n```\n![d](d.png \"title\")\n[e]: e.md\n"
        "a [wrapped\nlink](f.md#g) and ``[h](h.md)\nspan``\n",
        encoding="utf-8",
    )
    assert links(page) == [(1, "a.md"), (5, "d.png"), (6, "e.md"), (7, "f.md#g")]


def test_readme_is_short() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"


@pytest.mark.parametrize("page", pages(), ids=lambda page: page.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    broken: list[str] = []
    for number, target in links(page):
        resolved = resolve(page, target)
        if resolved is None:
            continue
        file, anchor = resolved
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        if not file.exists():
            broken.append(f"{where}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{where}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_doc_is_linked() -> None:
    linked: set[Path] = set()
    for page in pages():
        for _, target in links(page):
            resolved = resolve(page, target)
            if resolved is not None and resolved[0] != page.resolve():
                linked.add(resolved[0])
    orphans = [
        doc.relative_to(ROOT).as_posix()
        for doc in sorted(DOCS.glob("*.md"))
        if doc.resolve() not in linked
    ]
    assert not orphans, f"not linked from README.md or another page: {orphans}"
