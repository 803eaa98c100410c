"""Several models and versions behind one API: naming, routing by weights, pinning, the registry's views."""

import dataclasses
import random
from collections import Counter

import pytest

from app import create_app
from serving import routing
from serving.fleet_scripts import forget_model, register_model, retire_model
from serving.protocol import FleetKeys, Keys
from serving.routing import RoutingError, choose_version, version_order, write_weights
from tests.openapi_check import assert_conforms
from tests.prometheus_text import sample_value
from tests.unit.fake_api import MODEL, SETTINGS, TABBY, answer_next_request, heartbeat, post_image, success
from worker.queue import ModelMismatch, WorkerQueue

SHAPES = dataclasses.replace(MODEL, name="shapes", num_classes=4)
FLEET = FleetKeys(SETTINGS.key_prefix)
SQUARE = [{"label": "square", "index": 2, "probability": 0.8}]


def keys(name: str, version: str) -> Keys:
    return Keys(SETTINGS.key_prefix, f"{name}@{version}")


def test_each_name_answers_on_its_own_route_with_its_own_model(client, fake_redis):
    heartbeat(fake_redis)
    heartbeat(fake_redis, model=SHAPES)
    answer_next_request(fake_redis, success(SQUARE, SHAPES), keys("shapes", "1"))
    answer = post_image(client, path="/models/shapes/predict").get_json()
    assert (answer["model"], answer["version"], answer["predictions"]) == ("shapes", "1", SQUARE)
    answer_next_request(fake_redis, success(TABBY), keys("tiny", "1"))
    assert post_image(client, path="/models/tiny/predict").get_json()["predictions"] == TABBY


def test_predict_without_a_name_needs_a_default_when_several_are_served(client, fake_redis):
    heartbeat(fake_redis)
    heartbeat(fake_redis, model=SHAPES)
    response = post_image(client)
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "no_default_model"
    assert "shapes, tiny" in response.get_json()["error"]["message"]
    ready = client.get("/readyz")  # POST /predict fails: not ready, and it says why
    assert ready.status_code == 503 and ready.get_json()["error"]["code"] == "not_ready"
    assert "no_default_model" in ready.get_json()["error"]["message"]
    assert not any(m["default"] for m in client.get("/models").get_json()["models"])
    chosen = create_app(dataclasses.replace(SETTINGS, default_model="shapes"), fake_redis).test_client()
    answer_next_request(fake_redis, success(SQUARE, SHAPES), keys("shapes", "1"))
    assert post_image(chosen).get_json()["model"] == "shapes"


def test_an_unknown_model_is_404_with_a_json_error(client, fake_redis):
    heartbeat(fake_redis)
    for response in (post_image(client, path="/models/nope/predict"), client.get("/models/nope"),
                     post_image(client, headers={"X-Model-Version": "7"})):
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "unknown_model"
        assert_conforms("/models/{name}/predict" if response.request.method == "POST" and "nope" in
                        response.request.path else ("/models/{name}" if response.request.method == "GET"
                                                    else "/predict"),
                        response.request.method.lower(), 404, response.headers, response.get_data())


def test_a_version_without_live_workers_is_503_no_worker(client, fake_redis):
    heartbeat(fake_redis, age=SETTINGS.worker_timeout + 1)  # announced once, silent since
    response = post_image(client, path="/models/tiny/predict")
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "no_worker"


def test_models_lists_every_name_with_its_versions_weights_workers_and_queues(client, fake_redis):
    heartbeat(fake_redis)
    heartbeat(fake_redis, "w2", model=dataclasses.replace(MODEL, version="2"))
    heartbeat(fake_redis, model=SHAPES)
    fake_redis.hset(FLEET.routes("tiny"), mapping={"1": 90, "2": 10})
    fake_redis.lpush(keys("tiny", "2").queue, b"waiting")
    response = client.get("/models")
    assert_conforms("/models", "get", 200, response.headers, response.get_data())
    models = {m["name"]: m for m in response.get_json()["models"]}
    assert set(models) == {"tiny", "shapes"}
    tiny = models["tiny"]
    assert tiny["routing"] == {"1": 90, "2": 10}
    assert [(v["version"], v["weight"], v["workers"], v["queue_depth"], v["input_size"]) for v in tiny["versions"]] \
        == [("1", 90, 1, 0, 224), ("2", 10, 1, 1, 224)]
    assert client.get("/models/shapes").get_json()["versions"][0]["num_classes"] == 4


def test_a_pinned_version_gets_the_request_whatever_the_weights(client, fake_redis):
    heartbeat(fake_redis)
    heartbeat(fake_redis, "w2", model=dataclasses.replace(MODEL, version="2"))
    fake_redis.hset(FLEET.routes("tiny"), mapping={"1": 100, "2": 0})
    answer_next_request(fake_redis, success(TABBY, dataclasses.replace(MODEL, version="2")), keys("tiny", "2"))
    assert post_image(client, headers={"X-Model-Version": "2"}).get_json()["version"] == "2"


def test_weights_share_the_requests_among_live_versions():
    rng = random.Random(7)
    shares = Counter(choose_version({"v3": 90, "v4": 10}, ["v3", "v4"], rng) for _ in range(10_000))
    assert 0.08 < shares["v4"] / 10_000 < 0.12
    assert choose_version({"v3": 0, "v4": 100}, ["v3", "v4"]) == "v4"
    assert choose_version({"v3": 90, "v4": 10}, ["v3"]) == "v3"  # a weighted version that died gets nothing
    assert choose_version({"v4": 100}, ["v3"]) == "v3"  # a preference among live versions: v4 is gone, v3 serves
    assert routing.is_fallback({"v4": 100}, "v3") and not routing.is_fallback({"v4": 100}, "v4")
    assert not routing.is_fallback({}, "v3") and not routing.is_fallback({"v3": 0}, "v3")


def test_without_weights_a_name_goes_to_its_lowest_live_version_so_a_new_one_waits_for_a_route():
    assert choose_version({}, ["v10", "v9"]) == "v9"
    assert sorted(["v10", "v9", "2", "10"], key=version_order) == ["2", "10", "v9", "v10"]
    assert choose_version({}, []) is None


def test_routing_is_refused_to_a_version_without_a_live_worker(fake_redis):
    fleet = FleetKeys("t")
    fake_redis.eval("redis.call('ZADD', KEYS[1], redis.call('TIME')[1], 'w1')", 1, Keys("t", "m@v3").workers)
    write_weights(fake_redis, fleet, "m", {"v3": 100}, worker_timeout=5)
    with pytest.raises(RoutingError, match="m@v4 has no live worker"):
        write_weights(fake_redis, fleet, "m", {"v3": 90, "v4": 10}, worker_timeout=5)
    with pytest.raises(RoutingError, match="at least one above 0"):
        write_weights(fake_redis, fleet, "m", {"v3": 0}, worker_timeout=5)
    assert routing.read_weights(fake_redis, fleet, "m") == {"v3": 100}  # refused routes change nothing


def test_of_two_workers_stopping_together_each_sees_nobody_staying(fake_redis):
    version = Keys("t", "m@1")
    for worker in ("a", "b", "c"):
        fake_redis.eval("redis.call('ZADD', KEYS[1], redis.call('TIME')[1], ARGV[1])", 1, version.workers, worker)
    assert WorkerQueue(fake_redis, version, "a").announce_stopping(5) == 2
    assert WorkerQueue(fake_redis, version, "b").announce_stopping(5) == 1
    assert WorkerQueue(fake_redis, version, "c").announce_stopping(5) == 0  # the last: it drains the queue


def test_predictions_are_counted_per_model_and_version(client, fake_redis):
    def counted():
        text = client.get("/metrics").get_data(as_text=True)
        return sample_value(text, "imgcls_predictions_total", model="shapes", version="1") or 0

    heartbeat(fake_redis, model=SHAPES)
    before = counted()
    answer_next_request(fake_redis, success(SQUARE, SHAPES), keys("shapes", "1"))
    assert post_image(client).status_code == 200
    assert counted() == before + 1


def test_the_first_name_served_alone_keeps_the_default_while_live_and_a_newcomer_never_takes_it(fake_redis):
    register_model(fake_redis, fleet=FLEET, model_id="tiny@1", worker_timeout=5)
    register_model(fake_redis, fleet=FLEET, model_id="shapes@1", worker_timeout=5)
    assert fake_redis.get(FLEET.default) == b"tiny"
    retire_model(fake_redis, fleet=FLEET, model_id="tiny@1", worker_timeout=5)  # tiny's last worker left
    register_model(fake_redis, fleet=FLEET, model_id="shapes@1", worker_timeout=5)
    assert fake_redis.get(FLEET.default) == b"shapes"  # the only name live now takes it


def test_a_worker_of_another_model_is_refused_by_its_versions_live_fingerprint(fake_redis):
    version = Keys(SETTINGS.key_prefix, "tiny@1")
    WorkerQueue(fake_redis, version, "a").announce(b"{}", "aaaa", worker_timeout=5)
    WorkerQueue(fake_redis, version, "b").announce(b"{}", "aaaa", worker_timeout=5)  # the same model joins
    with pytest.raises(ModelMismatch, match="fingerprint aaaa, this one's is bbbb"):
        WorkerQueue(fake_redis, version, "c").announce(b"{}", "bbbb", worker_timeout=5)
    assert fake_redis.zscore(version.workers, "c") is None  # refused before it counted as a member
    fake_redis.delete(version.fingerprint)  # what the TTL does WORKER_TIMEOUT after the last live heartbeat
    WorkerQueue(fake_redis, version, "c").announce(b"{}", "bbbb", worker_timeout=5)


def test_forgetting_keeps_live_and_routed_versions_and_takes_the_name_with_its_last_version(fake_redis):
    for model in ("tiny@1", "tiny@2"):
        register_model(fake_redis, fleet=FLEET, model_id=model, worker_timeout=5)
    fake_redis.hset(FLEET.routes("tiny"), mapping={"1": 100})
    fake_redis.lpush(keys("tiny", "2").queue, b"left behind")
    assert not forget_model(fake_redis, fleet=FLEET, model_id="tiny@2", idle_seconds=5, keep_routed=True)  # live
    assert not forget_model(fake_redis, fleet=FLEET, model_id="tiny@1", idle_seconds=0, keep_routed=True)  # routed
    assert forget_model(fake_redis, fleet=FLEET, model_id="tiny@2", idle_seconds=0, keep_routed=True)
    assert not fake_redis.exists(keys("tiny", "2").queue)
    assert forget_model(fake_redis, fleet=FLEET, model_id="tiny@1", idle_seconds=0, keep_routed=False)
    assert fake_redis.zcard(FLEET.models) == 0 and not fake_redis.exists(FLEET.routes("tiny"), FLEET.default)
