"""The README and docs/ hold together: every pointer from code to a heading, and every link, resolves."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Pointers in code and configuration name a document and a heading: the document's path, then the heading in
# double quotes (after a comma in C++ strings, escaped), or after a comma in parentheses; README for the README.
QUOTED = re.compile(r'(README|docs/[\w-]+\.md),?\s*\\?"([^"\\]+)\\?"')
COMMA = re.compile(r"(docs/[\w-]+\.md), ([A-Z][\w ]+)\)")


def headings(document: Path) -> set[str]:
    found, in_code = set(), False
    for line in document.read_text().splitlines():
        in_code ^= line.startswith("```")
        if line.startswith("#") and not in_code:
            found.add(line.lstrip("#").strip().replace("`", ""))
    return found


def anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")


def tracked_code_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in names if ROOT / name != Path(__file__)
            and Path(name).suffix in {".py", ".cpp", ".h", ".sh", ".yml", ".toml"} or Path(name).name in {"Makefile",
                                                                                                   "Dockerfile"}]


def test_the_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
    assert all(f"(docs/{page.name})" in (ROOT / "README.md").read_text() for page in DOCUMENTS[1:])


def test_every_pointer_from_code_names_a_heading_that_exists():
    pointers = []
    for path in tracked_code_files():
        text = path.read_text(errors="replace")
        pointers += [(path, document, heading) for document, heading in QUOTED.findall(text) + COMMA.findall(text)]
    assert len(pointers) >= 5  # the pattern finds the pointers the code has
    for path, document, heading in pointers:
        target = ROOT / ("README.md" if document == "README" else document)
        assert target.is_file(), f"{path.name} points at {document}, which does not exist"
        assert heading.strip() in headings(target), f"{path.name} points at {document} {heading!r}: no such heading"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_link_between_the_documents_resolves(document):
    for target, fragment in re.findall(r"\]\((?!https?:)([^)#\s]*)(?:#([^)\s]+))?\)", document.read_text()):
        linked = (document.parent / target).resolve() if target else document
        assert linked.exists(), f"{document.name} links to {target}, which does not exist"
        if fragment and linked.suffix == ".md":
            assert fragment in {anchor(h) for h in headings(linked)}, f"{document.name}: no #{fragment} in {target}"
