"""The documentation stays navigable and honest about its evidence (no servers, a fraction of a second).

* every relative link in README.md and docs/*.md points to an existing file (and, for a link
  into a markdown file with #anchor, to a heading there);
* README.md stays a short user's page, and shows the two commands CI and users run;
* bench/results holds only reports that README.md or docs/ cite (the dated history of the rest
  is bench/results/NOTEBOOK.md; git keeps the files);
* dates and commit hashes appear in README.md and docs/ only inside cited file names: dated
  narrative belongs in NOTEBOOK.md;
* the reports NOTEBOOK.md lists as removed are gone from bench/results.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "bench" / "results"
NOTEBOOK = RESULTS / "NOTEBOOK.md"
README_MAX_LINES = 260

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
DATED_FILE = re.compile(r"[\w./-]*\d{4}-\d\d-\d\d[\w./-]*\.(?:md|png|json)")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
HEXWORD = re.compile(r"\b[0-9a-f]{7,40}\b")


def pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_readme_is_short_and_shows_the_two_commands():
    text = README.read_text()
    lines = text.count("\n") + (not text.endswith("\n"))
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move design notes to docs/"
    for command in ("bash launch/demo.sh", "bash launch/test.sh"):
        assert command in text, command


def test_every_result_file_is_cited_by_readme_or_docs():
    cited = "\n".join(page.read_text() for page in pages())
    files = [p.name for p in RESULTS.iterdir() if p.is_file() and not p.name.startswith(".")]
    uncited = sorted(name for name in files if name != NOTEBOOK.name and name not in cited)
    assert not uncited, (
        f"bench/results files no page cites: {uncited}. Cite each from README.md or docs/ for a "
        "current claim, or summarize it in NOTEBOOK.md and git rm it."
    )


def test_dates_and_commit_hashes_only_in_the_notebook():
    found = []
    for page in pages():
        text = DATED_FILE.sub("", page.read_text())
        found += [f"{page.name}: {d}" for d in DATE.findall(text)]
        found += [f"{page.name}: {h}" for h in HEXWORD.findall(text)
                  if re.search(r"\d", h) and re.search(r"[a-f]", h)]
    assert not found, f"dated narrative belongs in bench/results/NOTEBOOK.md: {found}"


def test_the_notebook_exists_and_is_linked():
    assert NOTEBOOK.is_file()
    assert "bench/results/NOTEBOOK.md" in README.read_text()


def test_reports_the_notebook_lists_as_removed_are_gone():
    text = NOTEBOOK.read_text()
    heading = re.search(r"^## Reports removed.*$", text, re.M)
    assert heading, "NOTEBOOK.md has no 'Reports removed' section"
    section = text[heading.end():]
    nxt = re.search(r"^## ", section, re.M)
    listed = re.findall(r"`([\w.-]+\.(?:md|png|json))`", section[: nxt.start()] if nxt else section)
    assert listed
    still_here = sorted(name for name in listed if (RESULTS / name).exists())
    assert not still_here, f"NOTEBOOK.md lists these as removed, but they are in bench/results: {still_here}"
