"""Each test folder means what it says: tests/unit runs in-process, with no tool outside Python."""

import re
from pathlib import Path

UNIT = Path(__file__).resolve().parents[1] / "unit"
# The programs tests/repo's tests run (checking the repository's files) and tests/integration's (real processes).
OUTSIDE_TOOLS = re.compile(r"""["'](kubectl|docker|docker-compose|dockerd|clang-format|clang\+\+|node|npm|git|"""
                           r"""redis-server|redis-cli|nginx|gunicorn|cmake|make)["']""")


def test_no_unit_test_runs_a_tool_outside_python():
    offenders = {path.name: sorted(set(OUTSIDE_TOOLS.findall(path.read_text())))
                 for path in UNIT.glob("*.py") if OUTSIDE_TOOLS.search(path.read_text())}
    assert not offenders, f"move these to tests/repo or tests/integration: {offenders}"
