"""The documentation's links resolve, and the README keeps exactly the two set-up commands.

Why: the README is a short front page that links into docs/; a page renamed or a heading reworded
silently breaks those links, and a third set-up command creeping into the README breaks the
promise that a fresh machine needs only `make demo` and `make test`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Pages other parts of the work deliver (issue 12 and the feature issues); until they land their
# links cannot resolve. Only these may be missing, and only with a skip that names them.
PAGES_DELIVERED_ELSEWHERE = {
    "docs/slicer.md": "the Slicer user guide",
    "docs/architecture.md": "the code map",
    "docs/benchmarks.md": "BENCHMARKS.md moved under docs/",
    "docs/batch.md": "the cohorts feature",
    "docs/interactive.md": "the interactive-segmentation feature",
}

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def documentation_pages() -> list[Path]:
    pages = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
    return [page for page in pages if page.is_file()]


def prose(markdown: str) -> str:
    """The text outside fenced blocks, indented code blocks and inline code, where links live."""
    without_fences = FENCE.sub("", markdown)
    lines = [line for line in without_fences.splitlines() if not line.startswith("    ")]
    return INLINE_CODE.sub("", "\n".join(lines))


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower())
    return text.replace(" ", "-")


def anchors_of(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        anchor = github_anchor(heading)
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        anchors.add(anchor if count == 0 else f"{anchor}-{count}")
    return anchors


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page.read_text(encoding="utf-8")))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]


def test_the_link_pattern_sees_links_and_ignores_code():
    text = "See [a](docs/a.md#x) and ![p](images/p.png).\n\n    [not](code.md)\n`[no](inline.md)`\n"
    assert LINK.findall(prose(text)) == ["docs/a.md#x", "images/p.png"]
    assert github_anchor("Progress protocol (`--progress jsonl`)") == "progress-protocol---progress-jsonl"


def test_every_relative_link_points_to_a_file_and_heading_that_exist():
    broken, pending = [], set()
    for page in documentation_pages():
        for target in relative_links(page):
            path_part, _, anchor = target.partition("#")
            resolved = (page.parent / path_part).resolve() if path_part else page
            where = f"{page.relative_to(REPO)} -> {target}"
            if not resolved.exists():
                name = resolved.relative_to(REPO).as_posix() if resolved.is_relative_to(REPO) else ""
                (pending.add(name) if name in PAGES_DELIVERED_ELSEWHERE else broken.append(where))
            elif anchor and resolved.suffix == ".md" and anchor not in anchors_of(resolved):
                broken.append(f"{where} (no such heading)")
    assert not broken, broken
    if pending:
        pytest.skip("links wait for pages delivered by other parts of the work: "
                    + ", ".join(f"{name} ({PAGES_DELIVERED_ELSEWHERE[name]})" for name in sorted(pending)))


def test_readme_has_exactly_the_two_set_up_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    code_lines = [line[4:] for line in readme.splitlines() if line.startswith("    ")]
    code_lines += [line for block in FENCE.findall(readme) for line in block.splitlines()[1:-1]]
    commands = [line.split("#", 1)[0].strip() for line in code_lines if line.split("#", 1)[0].strip()]
    assert commands == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:", makefile, re.MULTILINE) and re.search(r"^test:", makefile, re.MULTILINE)
    assert "make test" in (REPO / ".ci" / "run").read_text(encoding="utf-8")
