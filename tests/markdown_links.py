"""The relative links of Markdown files, and whether each resolves: to a file or directory that
exists and, with a ``#fragment``, to a heading of that file under GitHub's rules for its ids."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target "title") and ![alt](target); the text may hold one level of brackets.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
MARKDOWN_LINK_TEXT = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """The lines outside fenced code blocks, with their numbers."""
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's id of a heading: the text without markup, lower-cased, with punctuation other
    than ``-`` and ``_`` removed and each space made a ``-``."""
    text = MARKDOWN_LINK_TEXT.sub(r"\1", heading)
    text = INLINE_CODE.sub(r"\2", text).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The ids a link's ``#fragment`` may name in this Markdown text: repeated headings get
    ``-1``, ``-2``... as on GitHub, and explicit ``<a id=...>`` anchors count too."""
    ids: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(text):
        ids.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        ids.add(base if count == 0 else f"{base}-{count}")
    return ids


def links(text: str) -> Iterator[tuple[int, str]]:
    """Each link target outside code, with its line number."""
    for number, line in prose_lines(text):
        without_code = INLINE_CODE.sub("", line)
        for match in INLINE_LINK.finditer(without_code):
            yield number, match.group(1)
        definition = REFERENCE_DEFINITION.match(without_code)
        if definition:
            yield number, definition.group(1)


def broken_links(markdown: Path, root: Path) -> list[str]:
    """The relative links of a Markdown file under ``root`` that do not resolve, described."""
    broken: list[str] = []
    text = markdown.read_text()
    for number, target in links(text):
        parts = urlsplit(target)
        if parts.scheme or parts.netloc:
            continue  # another site: not this repository's to keep
        where = f"{markdown.relative_to(root)}:{number}: {target}"
        linked = (markdown.parent / unquote(parts.path)).resolve() if parts.path else markdown
        if not linked.exists():
            broken.append(f"{where}: no such file")
            continue
        if not linked.is_relative_to(root.resolve()):
            broken.append(f"{where}: outside the project")
            continue
        if parts.fragment and linked.suffix == ".md" and unquote(parts.fragment) not in anchors(linked.read_text()):
            broken.append(f"{where}: no heading #{parts.fragment}")
    return broken
