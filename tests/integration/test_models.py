"""Several models and versions through the real stack: two models side by side, a canary, a rollout under load."""

from __future__ import annotations

import time

import requests

from stack.processes import Stack
from tests.images import photo_bytes
from tests.integration.client import ClosedLoopClients, post_image, wait_until
from tests.integration.conftest import stack_settings
from tests.integration.fleet import DEFAULT, SHAPES, live_versions, model_tools, shapes_model


def p99_ms(seconds: list[float]) -> float:
    ordered = sorted(seconds)
    return 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def test_two_models_side_by_side_each_answer_with_their_own_labels(tmp_path):
    shapes_model(tmp_path)
    with Stack(stack_settings(default_model=DEFAULT), workers=1, log_dir=tmp_path / "logs") as stack:
        stack.start_worker({"MODEL_PATH": str(tmp_path / "shapes.pth"), "MODEL_ARCH": "mobilenet_v3_small",
                            "LABELS_PATH": str(tmp_path / "shapes.txt"), "MODEL_NAME": "shapes"})
        stack.wait_until_ready(120)
        models = {m["name"]: m for m in requests.get(stack.url + "/models", timeout=5).json()["models"]}
        assert set(models) == {DEFAULT, "shapes"} and models[DEFAULT]["default"]
        assert models["shapes"]["versions"][0]["num_classes"] == 3

        shapes = post_image(stack.url, photo_bytes("chelsea.png"), path="/models/shapes/predict").json()
        assert shapes["model"] == "shapes" and {p["label"] for p in shapes["predictions"]} == set(SHAPES)
        for path in ("/predict", f"/models/{DEFAULT}/predict"):  # DEFAULT_MODEL names the default
            cat = post_image(stack.url, photo_bytes("chelsea.png"), path=path).json()
            assert cat["model"] == DEFAULT and cat["predictions"][0]["label"] == "Egyptian cat"
        unknown = post_image(stack.url, photo_bytes("chelsea.png"), path="/models/dogs/predict")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_model"


def test_a_canary_then_a_rollout_under_load_answers_every_request(tmp_path):
    """v1 serves; v2 starts and gets nothing until routed; 10 %, then 100 %; v1's worker stops: nothing fails."""
    with Stack(stack_settings(request_timeout=30), workers=1, log_dir=tmp_path / "logs") as stack:
        with ClosedLoopClients(stack.url, photo_bytes("coffee.png")) as clients:
            wait_until(lambda: len(clients.outcomes) >= 40, 60, what="40 answers from v1")
            before = time.monotonic()
            stack.start_worker({"MODEL_VERSION": "2"})
            wait_until(lambda: "2" in live_versions(stack, DEFAULT), 120, 0.2, "v2 ready")
            unrouted = time.monotonic()
            wait_until(lambda: len(clients.since(unrouted)) >= 40, 60, what="40 answers with v2 up, unrouted")

            refused = model_tools(stack, "route", DEFAULT, "1=90", "3=10")
            assert refused.returncode == 1 and f"{DEFAULT}@3 has no live worker" in refused.stderr
            routing = time.monotonic()  # a request sent while the command runs may already see the weights
            assert model_tools(stack, "route", DEFAULT, "1=90", "2=10").returncode == 0
            canary = time.monotonic() + 1.5  # every API process has re-read the weights by then
            wait_until(lambda: len(clients.since(canary)) >= 300, 120, what="300 answers at 10 %")

            assert model_tools(stack, "route", DEFAULT, "2=100").returncode == 0
            switched = time.monotonic() + 1.5
            wait_until(lambda: len(clients.since(switched)) >= 40, 60, what="40 answers at 100 %")
            stack.stop_process(stack.worker_processes[0])  # SIGTERM: v1's last worker drains its queue, leaves
            wait_until(lambda: len(clients.since(time.monotonic() - 1)) >= 20, 60, what="answers after v1 left")
            after = time.monotonic()
            wait_until(lambda: len(clients.since(after)) >= 40, 60, what="40 answers from v2 alone")

    outcomes = clients.outcomes
    assert [o.status for o in outcomes] == [200] * len(outcomes), [o.body for o in outcomes if o.status != 200]
    assert all(o.body["predictions"][0]["label"] == "espresso" for o in outcomes)  # none crossed
    version_of = [(o.sent_at, o.body["version"]) for o in outcomes]
    assert {v for t, v in version_of if t < routing} == {"1"}  # v2 up but unrouted: no traffic
    at_ten = [v for t, v in version_of if canary <= t < switched - 1.5]
    assert 0.03 <= at_ten.count("2") / len(at_ten) <= 0.2, (at_ten.count("2"), len(at_ten))
    assert {v for t, v in version_of if t >= switched} == {"2"}
    assert stack.worker_processes[0].returncode == 0
    periods = {"before": [o.seconds for o in outcomes if o.sent_at < before],
               "during": [o.seconds for o in outcomes if before <= o.sent_at < after],
               "after": [o.seconds for o in outcomes if o.sent_at >= after]}
    print(f"rollout: {len(outcomes)} requests, 0 failed; v2 share at 10 %: {at_ten.count('2')}/{len(at_ten)}; "
          + ", ".join(f"p99 {name} {p99_ms(values):.0f} ms" for name, values in periods.items()))
