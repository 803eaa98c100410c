"""The container tests' harness finds the Debian archive in this machine's apt configuration, in either format."""

import pytest

from tests.integration.containers import debian_mirror


def write(root, name, text):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_mirror_comes_from_a_deb822_sources_file_for_bookworm(tmp_path):
    write(tmp_path, "sources.list.d/other.sources", "Types: deb\nURIs: http://other.example/node\nSuites: nodistro\n")
    write(tmp_path, "sources.list.d/debian.sources",
          "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
          "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n")
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"


def test_the_mirror_comes_from_a_one_line_sources_list_with_options(tmp_path):
    write(tmp_path, "sources.list", "# deb http://old.example/debian bookworm main\n"
          "deb-src http://src.example/debian bookworm main\n"
          "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n")
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"


def test_no_bookworm_source_is_a_clear_failure(tmp_path):
    write(tmp_path, "sources.list", "deb http://mirror.example/debian trixie main\n")
    with pytest.raises(AssertionError, match="no apt source for Debian bookworm"):
        debian_mirror(tmp_path)
