"""The command blocks of the README and docs/ work as written: each one that can run here is run, the rest checked.

`make run` and `make test` are the suite's own start; a `make run` line of the README is checked for
settings that exist, and the commands around it run for real (a small stand-in model where the README
names the user's). The C++ block is covered by test_cpp_client.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch
import torchvision

from serving.config import Settings
from stack.processes import REPO_ROOT
from tests.images import PHOTOS
from tests.model_files import save_classic, torchserve_archive

README = "\n".join(path.read_text() for path in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))])
SETTING_NAMES = {Settings.env_name(name) for name in Settings.__dataclass_fields__}


def blocks(language: str) -> list[str]:
    return [body for kind, body in re.findall(r"```(\w+)\n(.*?)```", README, re.S) if kind == language]


def commands(block: str) -> list[str]:
    """The block's commands: comments dropped, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.split(" #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def block_with(text: str, language: str = "sh") -> list[str]:
    (block,) = [b for b in blocks(language) if text in b]
    return commands(block)


def run(command: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    finished = subprocess.run(command, shell=True, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)
    assert finished.returncode == 0, f"{command}\n{finished.stdout[-2000:]}\n{finished.stderr[-2000:]}"
    return finished.stdout


def console_examples() -> list[tuple[str, str]]:
    """Every `$ curl ...` of the console blocks, with the output shown under it."""
    examples = []
    for block in blocks("console"):
        for command, shown in re.findall(r"^\$ (curl .*)\n((?:(?!\$ ).*\n?)*)", block, re.M):
            examples.append((command, shown))
    return examples


def assert_same_answer(got, shown, where: str = "") -> None:
    """The answer a command gives now is the one shown: the same fields, labels and indices, probabilities
    within 1e-3; ids and timings are each run's own."""
    if isinstance(shown, dict):
        assert set(got) == set(shown), f"{where}: {sorted(got)} != {sorted(shown)}"
        for key in shown:
            if key not in ("id", "timing"):
                assert_same_answer(got[key], shown[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert len(got) == len(shown), where
        for i, (g, s) in enumerate(zip(got, shown)):
            assert_same_answer(g, s, f"{where}[{i}]")
    elif isinstance(shown, float):
        assert abs(got - shown) < 1e-3, f"{where}: {got} != {shown}"
    else:
        assert got == shown, f"{where}: {got!r} != {shown!r}"


def test_every_curl_example_gives_the_answer_the_docs_show(service):
    examples = console_examples()
    assert len(examples) >= 3  # the README's classify, several images, TorchServe
    for command, shown in examples:
        answer = json.loads(run(command.replace("http://127.0.0.1:5000", service.url), cwd=PHOTOS))
        assert_same_answer(answer, json.loads(shown), command)


def test_the_tritonclient_example_prints_what_the_readme_shows(service):
    (block,) = [b for b in blocks("python") if "tritonclient" in b]
    code = block.replace("127.0.0.1:5000", service.url.removeprefix("http://"))
    printed = run(f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}", cwd=PHOTOS)
    classes = r"b'([\d.]+):(\d+):([^']+)'"
    shown = re.findall(classes, block.splitlines()[-1])
    got = re.findall(classes, printed)
    assert len(shown) == 3 and [(i, label) for _, i, label in got] == [(i, label) for _, i, label in shown]
    assert all(abs(float(a) - float(b)) < 1e-3 for (a, _, _), (b, _, _) in zip(got, shown))


def test_the_load_test_commands_run_as_written_only_shorter(service, tmp_path):
    for command in block_with("-m scripts.loadtest"):
        shorter = command.replace("--requests 500", "--requests 16").replace("--duration 30", "--duration 1")
        shorter = shorter.replace("http://127.0.0.1:5000", service.url).replace(".venv/bin/python", sys.executable)
        output = run(shorter, cwd=tmp_path, env={"PYTHONPATH": str(REPO_ROOT)})  # out.* into tmp_path
        assert "status  200:" in output
    assert (tmp_path / "out.json").exists() and (tmp_path / "out.png").exists()


def test_the_compose_commands_name_services_and_profiles_the_file_has():
    """Every `docker compose` command of the README and docs/ names services (and profiles) the file has."""
    compose_commands = [c for block in blocks("sh") for c in commands(block) if "docker compose" in c]
    assert len(compose_commands) >= 6
    for command in compose_commands:
        words = shlex.split(command.split("docker compose", 1)[1])
        profiles = [words[i + 1] for i, word in enumerate(words) if word == "--profile"]
        services = set(run("docker-compose " + " ".join(f"--profile {p}" for p in profiles) + " config --services",
                           cwd=REPO_ROOT, env={"REDIS_PASSWORD": "0123abcd"}).split())  # required: no default
        action = next(w for w in words if not w.startswith("-") and w not in profiles)
        named = {w.split("=")[0] for w in words[words.index(action) + 1:] if not w.startswith("-")}
        if action == "exec":
            named = {words[words.index(action) + 1]}  # the service; the rest is its command
        assert named <= services, command


class MyNet(torch.nn.Module):
    """An architecture of the user's own, as the README's third case has it."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Conv2d(3, 8, 3, stride=4)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def test_the_serve_your_own_model_commands_work_as_written(tmp_path):
    """Run in a scratch copy of the layout the README assumes: the user's files beside models/ and .venv."""
    _user_layout(tmp_path)
    torchserve_files(tmp_path)
    torchserve_archive(tmp_path, "resnet18", tmp_path / "resnet18.pt", extra_files=(tmp_path / "index_to_name.json",))
    (tmp_path / "labels.txt").write_text("daisy\nrose\ntulip\n")
    torch.manual_seed(0)
    save_classic(torchvision.models.get_model("resnext101_32x8d", weights=None, num_classes=3).eval(),
                 tmp_path / "resnext101_32x8.pth")
    code = tmp_path / "path" / "to" / "your" / "code"
    code.mkdir(parents=True)
    (code / "mynet.py").write_text("import torch\n\n" + _source_of(MyNet))
    subprocess.run([sys.executable, "-c", "import torch, mynet; from tests.model_files import save_classic; "
                    f"save_classic(mynet.MyNet().eval(), {str(tmp_path / 'mynet.pth')!r})"],
                   env={**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(REPO_ROOT)])}, check=True)
    outputs = []
    for command in _own_model_commands():
        if command.endswith("make run"):
            _check_settings(command)
        elif command.startswith("curl"):
            continue  # the curl example above runs for real
        else:
            outputs.append(run(command, cwd=tmp_path))
            assert "checked against" in outputs[-1] and "same top-1" in outputs[-1]
    assert "wrote models/flowers.pth: state_dict of resnext101_32x8d" in outputs[0]
    assert "wrote models/mynet.onnx: ONNX, serves without trust" in outputs[1]
    assert "wrote models/resnet18.onnx: ONNX, serves without trust" in outputs[2]


def test_the_from_torchserve_commands_work_as_written(tmp_path):
    """torch-model-archiver as the docs call it (a small stand-in for resnet18.pt), then the import, for real."""
    _user_layout(tmp_path)
    torchserve_files(tmp_path)
    (tmp_path / "model_store").mkdir()
    # The archiver's scratch folder, and PATH as `pip install torch-model-archiver` leaves it for its command.
    env = {"TMPDIR": str(tmp_path), "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    outputs = []
    for command in block_with("--export-path"):
        if command.endswith("make run"):
            _check_settings(command)
        elif not command.startswith("curl"):  # TorchServe's route runs for real in test_torchserve_archive.py
            outputs.append(run(command, cwd=tmp_path, env=env))
    assert "wrote models/resnet18.onnx: ONNX, serves without trust" in outputs[-1] and "same top-1" in outputs[-1]


def torchserve_files(folder: Path) -> None:
    """resnet18.pt (TorchScript of a small stand-in network) and its index_to_name.json, as TorchServe users have."""
    torch.manual_seed(0)
    torch.jit.trace(MyNet().eval(), torch.rand(1, 3, 32, 32)).save(str(folder / "resnet18.pt"))
    (folder / "index_to_name.json").write_text(json.dumps({"0": "daisy", "1": "rose", "2": "tulip"}))


def _check_settings(make_run: str) -> None:
    """A `VAR=value ... make run` line names settings that exist, with valid values."""
    variables = dict(re.findall(r"(\w+)=(\S+)", make_run.removesuffix("make run")))
    assert set(variables) <= SETTING_NAMES, make_run
    Settings.from_env(variables)


def _user_layout(folder: Path) -> None:
    """The packages, models/ and .venv as the README's commands expect them, the user's files to go beside."""
    for package in ("app", "engines", "model_files", "model_tools", "serving", "stack", "worker"):
        (folder / package).symlink_to(REPO_ROOT / package)
    (folder / "models").mkdir()
    (folder / ".venv").symlink_to(sys.prefix)  # this test's venv, where the README says .venv


def _own_model_commands() -> list[str]:
    return block_with("resnext101_32x8.pth")


def _source_of(cls) -> str:
    import inspect
    return inspect.getsource(cls)
