"""`docker compose up`, for real: the images built, the compose file run under a real Docker engine, the service
used through nginx on 127.0.0.1 as a user would (tests/integration/containers.py brings engine and images)."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from stack.processes import free_port
from tests.images import PHOTOS, photo_bytes
from tests.integration import containers
from tests.integration.client import ClosedLoopClients, post_image, wait_until
from tests.integration.test_readme_commands import assert_same_answer, console_examples
from tests.integration.test_readme_commands import run as run_shell

SERVICE_UID = "10001"  # the Dockerfile's USER
MODEL = "efficientnet_lite0"
WORKER_START = 300  # seconds for a worker container to load the model and verify its engine, on a loaded machine


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The compose project up (images built first), with its URL; taken down, volumes and all, afterwards."""
    with containers.docker_engine(tmp_path_factory.mktemp("docker")):
        settings = containers.images()
        settings.update(PROXY_PORT=str(free_port()), REDIS_PASSWORD="compose-test-password",
                        NEXT_MODEL=f"{MODEL}.pth", NEXT_VERSION="2")
        project = containers.ComposeProject(f"imgcls-test-{os.getpid()}", settings)
        try:
            project("up", "-d")
            wait_until(lambda: ready_workers(project.url) >= 1, WORKER_START, interval=1, what="a ready worker")
            yield project
        finally:
            project("--profile", "rollout", "--profile", "onnx", "down", "-v", check=False)


def ready_workers(url: str) -> int:
    try:
        answer = requests.get(url + "/readyz", timeout=5)
    except requests.RequestException:
        return 0
    return answer.json().get("workers", 0) if answer.status_code == 200 else 0


def test_readyz_is_200_through_nginx_on_127_0_0_1(stack):
    answer = requests.get(stack.url + "/readyz", timeout=10)
    assert answer.status_code == 200 and answer.json()["model"] == MODEL


def test_the_readme_curl_example_gives_the_answer_it_shows(stack):
    command, shown = console_examples()[0]
    assert command == "curl -F image=@chelsea.png http://127.0.0.1:5000/predict"
    answer = json.loads(run_shell(command.replace("http://127.0.0.1:5000", stack.url), cwd=PHOTOS))
    assert_same_answer(answer, json.loads(shown), command)


@pytest.mark.parametrize("service", ["api", "worker"])
def test_containers_run_as_the_service_user_and_cannot_write_their_code(stack, service):
    assert stack.exec(service, "id", "-u").stdout.decode().strip() == SERVICE_UID
    for code in ("app", "serving"):
        refused = stack.exec(service, "touch", f"/srv/imgcls/{code}/__init__.py", check=False)
        assert refused.returncode != 0 and b"Permission denied" in refused.stderr


def test_the_api_container_has_no_torch(stack):
    imported = stack.exec("api", "python", "-c", "import torch", check=False)
    assert imported.returncode != 0 and b"No module named 'torch'" in imported.stderr
    assert stack.exec("worker", "python", "-c", "import torch").returncode == 0  # the check can tell


def test_a_worker_starts_without_warnings_from_its_engine(stack):
    """The service user has no home: ONNX Runtime warned at every start that it could not keep its cache file."""
    logs = stack("logs", "--no-color", "worker").stdout.decode()
    assert "ready model=" in logs and "[W:onnxruntime" not in logs, logs[-3000:]


def test_redis_refuses_a_client_without_the_password(stack):
    """REDIS_PASSWORD reached redis-server (on its standard input, through the image's entrypoint)."""
    refused = stack.exec("redis", "env", "-u", "REDISCLI_AUTH", "redis-cli", "ping", check=False)
    assert b"NOAUTH" in refused.stdout + refused.stderr
    assert stack.exec("redis", "redis-cli", "ping").stdout.strip() == b"PONG"  # REDISCLI_AUTH: the health check's


@pytest.mark.parametrize("setting", ["API_IMAGE", "WORKER_IMAGE", "WORKER_ONNX_IMAGE"])
def test_the_ca_pip_trusted_in_the_build_is_in_no_image(stack, setting):
    """Built with the machine's CA bundle as the pip_ca secret (containers.build_service_images)."""
    image = containers.official_images()[setting]
    assert containers.MACHINE_CA.exists()
    assert not [variable for variable in inspected(setting, "Config")["Env"] if variable.startswith("PIP_CERT=")]
    # The secret's mount point may stay behind, empty: BuildKit leaves the directory it mounted the secret in.
    found = containers.run("docker", "run", "--rm", "--user", "0", image, "find", "/", "-xdev", "-name", "pip_ca")
    assert found.stdout == b"", found.stdout


def test_scale_worker_3_gives_three_live_workers(stack):
    stack("up", "-d", "--scale", "worker=3")
    assert len(stack.containers("worker")) == 3
    wait_until(lambda: ready_workers(stack.url) == 3, WORKER_START, interval=1, what="three live workers")


def test_kill_9_of_a_worker_container_under_load_loses_nothing(stack):
    chelsea = photo_bytes("chelsea.png")
    victim = stack.containers("worker")[0]
    pid = containers.run("docker", "inspect", "--format", "{{.State.Pid}}", victim).stdout.decode().strip()
    with ClosedLoopClients(stack.url, chelsea, count=6) as clients:
        time.sleep(3)
        killed_at = time.monotonic()
        containers.run("kill", "-9", pid)  # the container's own process, as a crash would: no docker stop
        time.sleep(12)  # past WORKER_TIMEOUT, so the reaper has handed the dead worker's requests to another
    statuses = [outcome.status for outcome in clients.outcomes]
    assert clients.since(killed_at) and set(statuses) == {200}, statuses


def test_requests_queued_across_a_redis_restart_are_answered_afterwards(stack):
    """Workers frozen, requests queue; Redis restarts (its append-only file keeps the queue); every one answered."""
    workers = stack.containers("worker")
    wait_until(lambda: ready_workers(stack.url) == len(workers), WORKER_START, interval=1, what="every worker live")
    queued = 6
    containers.run("docker", "pause", *workers)
    try:
        with ThreadPoolExecutor(queued) as pool:
            sent = [pool.submit(post_image, stack.url, photo_bytes("chelsea.png"), timeout=60) for _ in range(queued)]
            # In Redis, unanswered: queued (a frozen worker's BLMOVE still takes one, Redis moves it for it).
            wait_until(lambda: queue_depth(stack.url) > 0, 5, interval=0.1, what="the requests queued")
            assert not [future.result().text for future in sent if future.done()]
            stack("restart", "redis")
            containers.run("docker", "unpause", *workers)
            answers = [future.result() for future in sent]
    finally:
        containers.run("docker", "unpause", *workers, check=False)
    assert [answer.status_code for answer in answers] == [200] * queued, [answer.text for answer in answers]


def queue_depth(url: str) -> int:
    (served,) = requests.get(url + "/models", timeout=5).json()["models"]
    return sum(version["queue_depth"] for version in served["versions"])


def test_rollout_profile_runs_a_second_version_and_half_the_requests_go_to_each(stack):
    stack("--profile", "rollout", "up", "-d", "worker-next")
    wait_until(lambda: live_versions(stack.url) == {"1", "2"}, WORKER_START, interval=1, what="version 2 live")
    stack.exec("worker", "python", "-m", "model_tools", "route", MODEL, "1=50", "2=50")
    chelsea = photo_bytes("chelsea.png")
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post_image(stack.url, chelsea), range(40)))
    versions = [answer.json()["version"] for answer in answers]
    assert all(answer.status_code == 200 for answer in answers)
    assert versions.count("1") >= 8 and versions.count("2") >= 8, versions  # 50/50 of 40: far from either end


def live_versions(url: str) -> set[str]:
    (served,) = requests.get(url + "/models", timeout=5).json()["models"]
    return {version["version"] for version in served["versions"] if version["workers"] > 0}


ONNX_MODEL = "efficientnet_lite0_onnx"  # docker-compose.yml's default ONNX_MODEL_NAME


def inspected(setting: str, field: str):
    """One field of `docker image inspect` (e.g. Size, Config, RootFS.Layers) of the image a setting names."""
    image = containers.official_images()[setting]
    return json.loads(containers.run("docker", "image", "inspect", "--format", f"{{{{json .{field}}}}}", image).stdout)


def test_each_image_shares_the_layers_of_the_environment_below_it(stack):
    """A host that has the API image fetches only ONNX Runtime's layers more for the ONNX worker, and only torch's
    (5.9 GB) more for the full worker: the environments build on each other (the Dockerfile)."""
    api, onnx, worker = (inspected(setting, "RootFS.Layers") for setting in ("API_IMAGE", "WORKER_ONNX_IMAGE",
                                                                              "WORKER_IMAGE"))
    api_environment = api[:-2]  # the API image is its environment, then serving/ and app/
    onnx_environment = onnx[:len(api_environment) + 1]  # then ONNX Runtime's requirements
    assert onnx_environment[:-1] == api_environment and worker[:len(onnx_environment)] == onnx_environment


def served_names(url: str) -> set[str]:
    return {served["name"] for served in requests.get(url + "/models", timeout=5).json()["models"]
            if any(version["workers"] > 0 for version in served["versions"])}


def test_the_onnx_worker_has_no_torch_weighs_a_fraction_of_the_worker_and_answers_as_it_does(stack):
    """Issue #24's slim worker: the default model exported to ONNX in the build, served by ONNX Runtime alone."""
    onnx_image, worker_image = inspected("WORKER_ONNX_IMAGE", "Size"), inspected("WORKER_IMAGE", "Size")
    assert onnx_image < 1.5e9 and onnx_image < worker_image / 4, (onnx_image, worker_image)
    stack("--profile", "onnx", "up", "-d", "worker-onnx")
    try:
        wait_until(lambda: ONNX_MODEL in served_names(stack.url), WORKER_START, interval=1, what=f"{ONNX_MODEL} live")
        imported = stack.exec("worker-onnx", "python", "-c", "import torch", check=False)
        assert imported.returncode != 0 and b"No module named 'torch'" in imported.stderr
        for photo in ("chelsea.png", "coffee.png"):
            full = post_image(stack.url, photo_bytes(photo), path=f"/models/{MODEL}/predict").json()["predictions"][0]
            onnx = post_image(stack.url, photo_bytes(photo), path=f"/models/{ONNX_MODEL}/predict").json()
            assert onnx["model"] == ONNX_MODEL, onnx
            (top, *_) = onnx["predictions"]
            assert (top["index"], top["label"]) == (full["index"], full["label"]), photo
            assert top["probability"] == pytest.approx(full["probability"], abs=1e-4), photo
    finally:
        stack("--profile", "onnx", "rm", "--stop", "--force", "worker-onnx", check=False)


def test_down_v_leaves_no_container_network_or_volume(stack):
    assert stack.leftovers()  # the check can tell: the project is up
    stack("--profile", "rollout", "--profile", "onnx", "down", "-v")
    assert stack.leftovers() == {}
