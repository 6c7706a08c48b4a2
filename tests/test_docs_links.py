"""Every relative link and image in README.md and docs/*.md points at a file or folder that exists.

Links inside code (fenced blocks, inline backticks) are commands, not links, and are skipped; web links
(http, https, mailto) are not fetched (no network in the tests). Anchors (``page.md#section``) are
optional: the file must exist, the section is not checked.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# [text](target) and ![alt](target), with an optional "title"; the target may be wrapped in <...>.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`]*`")
EXTERNAL = ("http://", "https://", "mailto:")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every link and image outside code."""
    found, in_fence = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            found.append((number, match.group(1)))
    return found


def broken(file: Path) -> list[str]:
    """'file:line: target' for every relative link of ``file`` whose target does not exist."""
    problems = []
    for number, target in links(file.read_text(encoding="utf-8")):
        if target.startswith(EXTERNAL) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (file.parent / path).exists():
            problems.append(f"{file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}:{number}: {target}")
    return problems


def test_the_link_finder_sees_links_and_images_and_skips_code(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("x")
    page.write_text("A [link](there.md#part), an ![image](figures/missing.png \"title\"), [web](https://x.org),\n"
                    "`[not a link](nowhere.md)`, [gone](gone.md)\n```\n[in code](nowhere.md)\n```\n")
    assert [t for _, t in links(page.read_text())] == ["there.md#part", "figures/missing.png", "https://x.org",
                                                       "gone.md"]
    assert [p.split(": ")[1] for p in broken(page)] == ["figures/missing.png", "gone.md"]


def test_every_relative_link_and_image_in_the_docs_resolves():
    files = markdown_files()
    assert len(files) > 5 and all(f.is_file() for f in files)
    assert sum(len(links(f.read_text(encoding="utf-8"))) for f in files) > 50  # the finder reaches the pages
    problems = [p for f in files for p in broken(f)]
    assert not problems, "links to files that do not exist:\n" + "\n".join(problems)
