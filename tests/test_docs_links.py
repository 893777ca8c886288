"""Every relative markdown link of README.md and docs/**/*.md points to a file or folder that exists (links
inside fenced code blocks and web links are not checked; a #fragment is dropped)."""

import re

from conftest import REPO

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def pages():
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def broken_links(page):
    text = FENCE.sub("", page.read_text())
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http(s):, mailto:, an anchor on the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            yield target


def test_every_relative_link_points_to_an_existing_file():
    assert len(pages()) > 10
    broken = {str(p.relative_to(REPO)): sorted(set(broken_links(p))) for p in pages()}
    assert {p: links for p, links in broken.items() if links} == {}
