"""cpp/'s sources are laid out as cpp/.clang-format says (Debian's clang-format, which `make test-tools` installs)."""

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_cpp_sources_are_clang_formatted():
    clang_format = shutil.which("clang-format")
    assert clang_format, "clang-format not found: `make test-tools` installs Debian's clang-format package"
    sources = subprocess.run(["git", "ls-files", "--", "cpp/*.h", "cpp/*.cpp"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    assert len(sources) >= 10  # the units and the executables
    checked = subprocess.run([clang_format, "--dry-run", "--Werror", *sources], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, f"run `clang-format -i` on these (cpp/.clang-format):\n{checked.stderr[-3000:]}"
