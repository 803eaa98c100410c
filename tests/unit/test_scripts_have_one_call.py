"""Each Lua script sits beside its one typed call (issue #26.1): a private constant of a scripts module
(serving/*_scripts.py), run by exactly one function of that module, which alone writes the order of its KEYS and
ARGV. No other module sends a script to Redis, so none can pass them in another order."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "worker", "serving", "stack", "model_tools", "model_files", "engines", "scripts")
SCRIPTS_MODULES = sorted(ROOT.glob("serving/*_scripts.py"))
# Redis commands and redis-py methods that run a script; `.eval()` without arguments is a torch module's.
SCRIPT_COMMANDS = {"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO", "SCRIPT"}
SCRIPT_METHODS = {"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro", "register_script", "script_load"}


def script_calls(tree: ast.AST) -> list[ast.Call]:
    """Every call in `tree` that sends a script to Redis: client.eval(...) and kin, execute_command('EVAL', ...)."""
    def sends_a_script(call: ast.Call) -> bool:
        if not isinstance(call.func, ast.Attribute):
            return False
        if call.func.attr == "execute_command":
            command = call.args[0] if call.args else None
            return (isinstance(command, ast.Constant) and isinstance(command.value, str)
                    and command.value.upper() in SCRIPT_COMMANDS)
        return call.func.attr in SCRIPT_METHODS and bool(call.args)

    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and sends_a_script(node)]


def script_argument(call: ast.Call) -> ast.expr | None:
    """The script a call sends: execute_command's second argument, a method's first."""
    position = 1 if call.func.attr == "execute_command" else 0
    return call.args[position] if len(call.args) > position else None


def one_call_problems(source: str) -> list[str]:
    """What breaks 'each script a private constant beside its one call' in a scripts module's source."""
    tree = ast.parse(source)
    scripts = {target.id for node in tree.body if isinstance(node, ast.Assign) and "redis.call(" in ast.unparse(node)
               for target in node.targets if isinstance(target, ast.Name)}
    problems = [f"{script} is public: another module could run it" for script in sorted(scripts)
                if not script.startswith("_")]
    for call in script_calls(tree):
        sent = script_argument(call)
        if not (isinstance(sent, ast.Name) and sent.id in scripts):
            problems.append(f"line {call.lineno}: sends {ast.unparse(sent) if sent else 'no script'}, not one of "
                            "this module's private script constants")
    functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for script in sorted(scripts):
        users = [function.name for function in functions
                 if any(isinstance(node, ast.Name) and node.id == script for node in ast.walk(function))]
        if len(users) != 1:
            problems.append(f"{script} is used by {len(users)} functions ({', '.join(users) or 'none'}), not one")
    return problems


def raw_script_calls(path: Path) -> list[int]:
    return [call.lineno for call in script_calls(ast.parse(path.read_text()))]


def test_no_module_but_a_scripts_module_sends_a_script():
    raw = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = str(path.relative_to(ROOT))
            if path not in SCRIPTS_MODULES and (lines := raw_script_calls(path)):
                raw[relative] = lines
    assert not raw, (f"scripts sent outside serving/*_scripts.py, at {raw}: make each script a private constant of a "
                     "scripts module, beside the one typed function that runs it, and call that")


def test_each_script_is_a_private_constant_of_its_module_run_by_exactly_one_function():
    assert {path.name for path in SCRIPTS_MODULES} >= {"queue_scripts.py", "fleet_scripts.py", "rate_limit_scripts.py"}
    for path in SCRIPTS_MODULES:
        assert script_calls(ast.parse(path.read_text())), f"{path.name} sends no script"
        assert one_call_problems(path.read_text()) == [], path.name


def test_a_raw_script_call_is_found_however_it_is_sent(tmp_path):
    module = tmp_path / "raw.py"
    module.write_text('network.eval()\n'  # a torch module's eval mode: no script
                      'client.eval("return 1", 0)\n'
                      'pipe.execute_command("EVAL", SCRIPT, 1, key)\n'
                      "pipe.execute_command('evalsha', digest, 0)\n"
                      "client.register_script(\n    SCRIPT)\n"
                      'client.execute_command("GET", key)\n')
    assert raw_script_calls(module) == [2, 3, 4, 5]


def test_a_script_sent_inline_or_run_by_two_functions_is_found():
    source = '''
_ONE = "return redis.call('GET', KEYS[1])"
_UNUSED = PRELUDE + "return redis.call('TIME')"
SHARED = "return redis.call('TIME')"
_TIMEOUT = 5

def first(client):
    return client.eval(_ONE, 0)

def second(client):
    return client.execute_command("EVAL", _ONE, 0)

def inline(client):
    return client.eval("return 3", 0)

def shared(client):
    return client.eval(SHARED, 0)
'''
    assert one_call_problems(source) == [
        "SHARED is public: another module could run it",
        "line 14: sends 'return 3', not one of this module's private script constants",
        "_ONE is used by 2 functions (first, second), not one",
        "_UNUSED is used by 0 functions (none), not one",
    ]
