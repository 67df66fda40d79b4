"""The README and docs/ pages: every relative link (and its #anchor) resolves, the README stays a newcomer's
length, and nothing user-facing names paths of the machine a build or benchmark ran on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 300
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")
# Strings that must not appear in the README, docs/ or the package: paths outside the product and scratch folders.
FORBIDDEN = ("../shared", "SPEC.md", "/tmp/", "/work/")
# Ray's own default log folder, named in an error message so that users know where to look.
ALLOWED = ("/tmp/ray/",)


def _prose(path: Path) -> str:
    """The page without its fenced code blocks (links inside code are examples, not links)."""
    lines, in_code = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            in_code = not in_code
            continue
        if not in_code:
            lines.append(line)
    return "\n".join(lines)


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", _prose(path), flags=re.M)}


def _relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(path)) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in _relative_links(page):
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_readme_is_short() -> None:
    n = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move detail into docs/ (at most {README_MAX_LINES})"


def _text_files() -> list[Path]:
    files = [REPO / "README.md", *(REPO / "docs").rglob("*"), *(REPO / "slidefuse").rglob("*")]
    out = []
    for f in files:
        if f.is_file() and "__pycache__" not in f.parts:
            head = f.read_bytes()[:4096]
            if b"\0" not in head:
                out.append(f)
    return out


def test_no_paths_outside_the_product() -> None:
    found = []
    for f in _text_files():
        for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            rest = line
            for allowed in ALLOWED:
                rest = rest.replace(allowed, "")
            found += [f"{f.relative_to(REPO)}:{n}: {s}" for s in FORBIDDEN if s in rest]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_code_fences_pair_up(page: Path) -> None:
    """Fences are balanced and none directly follows another (a doubled fence swaps code and prose)."""
    fences = [n for n, line in enumerate(page.read_text(encoding="utf-8").splitlines()) if FENCE.match(line.strip())]
    assert len(fences) % 2 == 0, f"{page.name}: unbalanced code fences"
    doubled = [n + 1 for a, n in zip(fences, fences[1:], strict=False) if n == a + 1]
    assert not doubled, f"{page.name}: a fence directly after another at line(s) {doubled}"
