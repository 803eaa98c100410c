"""The registry's lifecycle through the real stack: one wrong command (a stray name, a stale route, another model
under a live name@version) must not break `POST /predict` for everyone, and what is gone can be forgotten."""

from __future__ import annotations

import signal
import time

import requests

from serving.protocol import Keys
from stack.processes import Stack
from tests.images import photo_bytes
from tests.integration.client import post_image, wait_until
from tests.integration.conftest import stack_settings
from tests.integration.fleet import DEFAULT, SHAPES, live_versions, model_tools, shapes_model
from tests.prometheus_text import sample_value


def names(stack: Stack) -> dict[str, dict]:
    return {m["name"]: m for m in requests.get(stack.url + "/models", timeout=5).json()["models"]}


def predict(stack: Stack, **kwargs) -> requests.Response:
    return post_image(stack.url, photo_bytes("chelsea.png"), timeout=30, **kwargs)


def test_a_second_name_never_takes_the_default_and_a_name_can_be_forgotten(tmp_path):
    """The README's v2 step gone wrong (workers under other names) leaves /predict with the name that had it."""
    with Stack(stack_settings(), workers=1, log_dir=tmp_path / "logs") as stack:  # DEFAULT_MODEL unset
        default = stack.worker_processes[0]
        stack.start_worker({"MODEL_NAME": "stray"})
        other = stack.start_worker({"MODEL_NAME": "other"})
        stack.wait_until_ready(120)
        answer = predict(stack)
        assert answer.status_code == 200 and answer.json()["model"] == DEFAULT, answer.json()
        assert requests.get(stack.url + "/readyz", timeout=5).json()["model"] == DEFAULT
        assert {name: m["default"] for name, m in names(stack).items()} == {DEFAULT: True, "stray": False,
                                                                            "other": False}
        refused = model_tools(stack, "route", DEFAULT, "2=100")
        assert refused.returncode == 1 and f"{DEFAULT}@1" in refused.stderr and "stray@1" in refused.stderr

        # The holder gone and two names live: none is the default, and /readyz says so rather than "ready".
        stack.stop_process(default)
        wait_until(lambda: predict(stack).status_code == 404, 30, 0.2, "no default with two names live")
        assert predict(stack).json()["error"]["code"] == "no_default_model"
        ready = requests.get(stack.url + "/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
        assert "no_default_model" in ready.json()["error"]["message"]

        # One name left with a live worker: it is the only name served, whatever the registry remembers.
        stack.stop_process(other)
        wait_until(lambda: predict(stack).status_code == 200, 30, 0.2, "the only live name served")
        assert predict(stack).json()["model"] == "stray"
        live = model_tools(stack, "forget", "stray")
        assert live.returncode == 1 and "live workers" in live.stderr and "stray" in names(stack)
        for gone in ("other", DEFAULT):
            forgotten = model_tools(stack, "forget", gone)
            assert forgotten.returncode == 0 and f"forgot {gone}@1" in forgotten.stdout, forgotten.stderr
        assert set(names(stack)) == {"stray"}
        assert not stack.redis().exists(Keys(stack.settings.key_prefix, "other@1").workers)
        assert model_tools(stack, "forget", "stray", "--force").returncode == 0  # lasts until its next heartbeat
        wait_until(lambda: "stray" in names(stack), 30, 0.2, "stray announced again")


def test_a_route_to_a_version_whose_workers_left_falls_back_to_a_live_one_and_is_forgotten_once_unrouted(tmp_path):
    forget_after = 8.0
    with Stack(stack_settings(forget_after=forget_after), workers=1, log_dir=tmp_path / "logs") as stack:
        v2 = stack.start_worker({"MODEL_VERSION": "2"})
        wait_until(lambda: "2" in live_versions(stack, DEFAULT), 120, 0.2, "v2 live")
        assert model_tools(stack, "route", DEFAULT, "2=100").returncode == 0
        wait_until(lambda: predict(stack).json().get("version") == "2", 30, 0.2, "v2 routed")

        stack.stop_process(v2)  # its workers gone, its route stays (a restart with v1's workers only)
        wait_until(lambda: live_versions(stack, DEFAULT) == ["1"], 30, 0.2, "v2 retired")
        answers = [predict(stack) for _ in range(5)]
        assert [(a.status_code, a.json().get("version")) for a in answers] == [(200, "1")] * 5
        assert requests.get(stack.url + "/readyz", timeout=5).status_code == 200
        metrics = requests.get(stack.url + "/metrics", timeout=5).text
        assert sample_value(metrics, "imgcls_route_fallbacks_total", model=DEFAULT) >= 5
        assert "route of efficientnet_lite0 prefers 2=100, which has no live worker" in \
            stack.log_path("api").read_text()
        pinned = predict(stack, headers={"X-Model-Version": "2"})
        assert pinned.status_code == 503 and f"{DEFAULT}@2 has no live worker" in pinned.json()["error"]["message"]

        time.sleep(forget_after + 2)  # idle past FORGET_AFTER, but routed to: kept
        assert "2" in [v["version"] for v in names(stack)[DEFAULT]["versions"]]
        assert model_tools(stack, "route", DEFAULT, "1=100").returncode == 0
        wait_until(lambda: [v["version"] for v in names(stack)[DEFAULT]["versions"]] == ["1"], 30, 0.5,
                   "v2 forgotten once no route names it")


def test_another_model_under_a_live_name_and_version_refuses_to_start_until_the_first_is_dead(tmp_path):
    """Two models started at once under one name@version: one serves, the other exits 2 naming both fingerprints;
    once the first is dead, its fingerprint expires with its heartbeat and the other may take the version."""
    shapes, labels = shapes_model(tmp_path, "shapes_mnv3.pth")
    other = {"MODEL_PATH": str(shapes), "MODEL_ARCH": "mobilenet_v3_small", "LABELS_PATH": str(labels)}
    with Stack(stack_settings(), workers=0, log_dir=tmp_path / "logs") as stack:
        first, second = stack.start_worker({"MODEL_NAME": "twin"}), stack.start_worker({"MODEL_NAME": "twin", **other})
        refused = wait_until(lambda: [p for p in (first, second) if p.poll() is not None], 120, 0.2, "a refusal")
        assert [p.returncode for p in refused] == [2]
        serving = second if refused == [first] else first
        held = stack.redis().get(Keys(stack.settings.key_prefix, "twin@1").fingerprint).decode()
        log = stack.log_path(f"worker{stack.worker_processes.index(refused[0])}").read_text()
        assert f"serve a model of fingerprint {held}, this one's is " in log and "MODEL_VERSION" in log
        assert predict(stack, path="/models/twin/predict").status_code == 200  # the version is not broken

        serving.send_signal(signal.SIGKILL)
        # Its fingerprint lives WORKER_TIMEOUT past its last heartbeat: a replacement that starts sooner (one whose
        # export is in the engine cache is ready in 3 s) is refused in its turn.
        wait_until(lambda: not stack.redis().exists(Keys(stack.settings.key_prefix, "twin@1").fingerprint), 30, 0.2,
                   "the dead worker's fingerprint expired with its heartbeat")
        replacement = stack.start_worker({"MODEL_NAME": "twin", **(other if serving is first else {})})
        expected_classes = len(SHAPES) if serving is first else 1000
        wait_until(lambda: names(stack)["twin"]["versions"][0].get("num_classes") == expected_classes, 180, 0.5,
                   "the other model serving")
        assert replacement.poll() is None


def test_a_model_is_named_after_its_file_however_it_is_loaded_and_import_takes_a_name(tmp_path):
    shapes, labels = shapes_model(tmp_path, "shapes_mnv3.pth")
    with Stack(stack_settings(), workers=0, log_dir=tmp_path / "logs") as stack:
        imported = tmp_path / "imported.pth"
        done = model_tools(stack, "import", str(shapes), "--arch", "mobilenet_v3_small", "--labels", str(labels),
                           "--out", str(imported), "--name", "petals")
        assert done.returncode == 0, done.stderr
        unnamed = tmp_path / "unnamed.pth"
        done = model_tools(stack, "import", str(shapes), "--arch", "mobilenet_v3_small", "--labels", str(labels),
                           "--out", str(unnamed))
        assert done.returncode == 0 and "model:       shapes_mnv3 (architecture: mobilenet_v3_small)" in done.stdout
        stack.start_worker({"MODEL_PATH": str(shapes), "MODEL_ARCH": "mobilenet_v3_small", "LABELS_PATH": str(labels)})
        stack.start_worker({"MODEL_PATH": str(imported)})
        wait_until(lambda: set(names(stack)) == {"shapes_mnv3", "petals"}, 180, 0.5, "both named")
        assert {names(stack)[n]["versions"][0]["arch"] for n in ("shapes_mnv3", "petals")} == {"mobilenet_v3_small"}
