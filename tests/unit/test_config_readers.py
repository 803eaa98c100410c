"""Each setting records the programs that read it; these tests hold the record to the code.

The record is checked against the source: for each program, every module it imports (at the top or inside a
function, followed through the project's packages) is searched for reads of a setting (`settings.port`,
`self.settings.port`, or a property of Settings, like `settings.max_upload_bytes`, counted as the fields it
reads), and what is found must be what the record says.
"""

from __future__ import annotations

import ast
import dataclasses
from functools import cache
from pathlib import Path

import pytest

from serving.config import API, LAUNCHER, MODEL_TOOLS, PROGRAMS, WORKER, Settings, read_by

ROOT = Path(__file__).resolve().parents[2]
# Where each program starts: the API is create_app (app/__init__.py) under gunicorn's configuration.
ENTRY_MODULES = {API: ("app", "app.gunicorn_conf"), WORKER: ("worker.__main__",), LAUNCHER: ("stack.__main__",),
                 MODEL_TOOLS: ("model_tools.__main__",)}
FIELDS = {f.name for f in dataclasses.fields(Settings)}
# Reads a program makes without acting on them: the launcher hands every setting on to its children.
HANDED_ON = {"as_env"}


def test_every_setting_names_the_programs_that_read_it_and_only_known_ones():
    for f in dataclasses.fields(Settings):
        assert f.metadata["read_by"], f"{f.metadata['env']} names no program that reads it"
        assert set(f.metadata["read_by"]) <= set(PROGRAMS), f.metadata["env"]


def test_every_program_has_its_entry_modules_here():
    assert set(ENTRY_MODULES) == set(PROGRAMS)


@pytest.mark.parametrize("program", PROGRAMS)
def test_the_record_says_exactly_which_settings_the_programs_code_reads(program):
    recorded = {f.name for f in read_by(program)}
    found = settings_read_by(program)
    assert found - recorded == set(), f"{program} reads settings its record lacks: {sorted(found - recorded)}"
    assert recorded - found == set(), f"{program}'s record names settings it never reads: {sorted(recorded - found)}"


def test_the_search_finds_every_read_because_a_settings_object_is_always_called_settings():
    """The search recognises a Settings by its name; a parameter, variable or attribute holding one by another name,
    or a read by getattr, would hide reads from it."""
    for path in project_modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.arg) and node.annotation is not None and "Settings" in ast.unparse(node.annotation):
                assert node.arg.endswith("settings"), f"{path}:{node.lineno}: a Settings named {node.arg}"
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and _makes_settings(node.value):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    assert _holds_settings(target), f"{path}:{node.lineno}: a Settings named {ast.unparse(target)}"
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "getattr" and _holds_settings(node.args[0]):
                assert path.name == "config.py", f"{path}:{node.lineno}: a setting read by name"


def test_the_search_sees_reads_through_attributes_and_properties():
    source = ("def f(settings, stack):\n    return settings.port, stack.settings.max_upload_bytes, "
              "Settings().workers, options.top_k\n")
    assert reads_in(ast.parse(source)) == {"port", "max_upload_mb"}  # defaults and other objects are no reads


def settings_read_by(program: str) -> set[str]:
    reads: set[str] = set()
    for module in imported_by(ENTRY_MODULES[program]):
        if module != "serving.config":  # its own validation reads every field
            reads |= reads_in(ast.parse(project_modules()[module].read_text()))
    return reads


def reads_in(tree: ast.AST) -> set[str]:
    """The fields read from anything that holds a Settings, properties resolved to the fields they read."""
    reads: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _holds_settings(node.value) and node.attr not in HANDED_ON:
            reads |= {node.attr} & FIELDS | property_reads().get(node.attr, set())
    return reads


@cache
def property_reads() -> dict[str, set[str]]:
    """Each property of Settings: the fields it reads."""
    tree = ast.parse((ROOT / "serving" / "config.py").read_text())
    settings_class = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Settings")
    return {function.name: {node.attr for node in ast.walk(function) if isinstance(node, ast.Attribute)
                            and ast.unparse(node.value) == "self" and node.attr in FIELDS}
            for function in settings_class.body if isinstance(function, ast.FunctionDef)
            and "property" in {ast.unparse(decorator) for decorator in function.decorator_list}}


def _holds_settings(node: ast.AST) -> bool:
    """`settings`, `_settings`, `self.settings`, `stack.settings`: never `Settings` (the class: a default)."""
    return (isinstance(node, ast.Name) and node.id.endswith("settings")) or \
        (isinstance(node, ast.Attribute) and node.attr == "settings")


def _makes_settings(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Call) and ast.unparse(node.func) in ("Settings.from_env", "program_settings")


@cache
def project_modules() -> dict[str, Path]:
    """Every module of the programs' packages, by its dotted name."""
    modules = {}
    for package in ("app", "engines", "model_files", "model_tools", "serving", "stack", "worker"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_by(entries: tuple[str, ...]) -> set[str]:
    """The entry modules and every project module they import, directly or not, wherever the import statement is."""
    seen: set[str] = set()
    waiting = list(entries)
    while waiting:
        module = waiting.pop()
        if module not in seen:
            seen.add(module)
            waiting += _imports(module)
    return seen


def _imports(module: str) -> set[str]:
    named: set[str] = set()
    for node in ast.walk(ast.parse(project_modules()[module].read_text())):
        if isinstance(node, ast.Import):
            named |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            named |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    # `import a.b.c` imports a and a.b too, whose __init__ modules run
    return {".".join(name.split(".")[:end]) for name in named for end in range(1, name.count(".") + 2)} & \
        set(project_modules())
