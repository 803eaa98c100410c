"""The container tests' harness finds the Debian archive in this machine's apt configuration, in either format, and
its Redis stand-in runs the compose file's Redis command as the official image does."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.integration.containers import ROOT, STANDINS, debian_mirror


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


def test_the_redis_standin_runs_composes_command_with_the_password_on_redis_servers_stdin(tmp_path):
    """docker-compose.yml's Redis command through the stand-in's entrypoint, as the engine runs it (ENTRYPOINT
    then the command), with stubs for redis-server and for `id` (a non-root start: no chown of /data here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(STANDINS / "redis" / "entrypoint.sh", bin_dir / "docker-entrypoint.sh")
    stub(bin_dir, "redis-server", f'printf "%s\\n" "$0" "$@" > {tmp_path}/argv; cat > {tmp_path}/stdin')
    stub(bin_dir, "id", "echo 999")
    # The image puts it on PATH under the name the compose command calls.
    assert "COPY entrypoint.sh /usr/local/bin/docker-entrypoint.sh" in (STANDINS / "redis" / "Dockerfile").read_text()
    command = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]["command"]
    container_command = [part.replace("$$", "$") for part in command]  # compose's "$$" is the container's "$"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "REDIS_PASSWORD": "0123abcd"}
    subprocess.run(["docker-entrypoint.sh", *container_command], env=env, check=True, timeout=30)
    argv = (tmp_path / "argv").read_text().splitlines()
    assert Path(argv[0]).name == "redis-server" and argv[1] == "-"  # configuration from standard input
    assert argv[2:] == ["--appendonly", "yes", "--save", "", "--protected-mode", "no"]
    assert (tmp_path / "stdin").read_text() == "requirepass 0123abcd\n"


def stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
