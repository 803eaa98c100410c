"""A key's charge, against fakeredis: taken once per request whatever redis-py resends, given back when the request
is refused after it, and never taken for a request that is wrong in itself."""

from __future__ import annotations

import base64
import dataclasses
import hashlib

import fakeredis
import pytest
from flask import Flask

from app import access, create_app
from app.keys import ApiKey
from app.queue_client import InferenceQueue
from serving import rate_limit_scripts
from serving.protocol import ClientKeys
from tests.images import photo_bytes
from tests.unit.fake_api import KEYS, MODEL, SETTINGS, heartbeat, post_image

LIMITS = ClientKeys(SETTINGS.key_prefix, "ci")
BEARER = {"Authorization": "Bearer secret"}
CHELSEA = photo_bytes("chelsea.png")
RATE, BURST = 1.0, 5


@pytest.fixture
def keyed_client(fake_redis, tmp_path):
    """The API on fake_redis with one key, `ci`: 1 image/s, burst 5."""
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"ci {hashlib.sha256(b'secret').hexdigest()} {RATE:g} {BURST}\n")
    return create_app(dataclasses.replace(SETTINGS, api_keys_file=str(keys_file)), fake_redis).test_client()


def charge_once(client, charge_id: str = "earlier") -> None:
    """An earlier request's take, as the admission pipeline sends it: the bucket then has a state to keep."""
    pipe = client.pipeline(transaction=False)
    rate_limit_scripts.take_tokens(pipe, keys=LIMITS, charge_id=charge_id, cost=1, rate=RATE, burst=BURST, daily=0)
    assert rate_limit_scripts.decode_allowance(pipe.execute()[0]).verdict == rate_limit_scripts.TAKEN


def chelsea_json(top_k) -> dict:
    return {"image": base64.b64encode(CHELSEA).decode(), "top_k": top_k}


# Each door's way of asking for no prediction at all: refused whatever the model, so before the charge.
TOP_K_ZERO = {
    "native form": lambda client: post_image(client, CHELSEA, path="/predict?top_k=0", headers=BEARER),
    "native JSON": lambda client: client.post("/predict", json=chelsea_json(0), headers=BEARER),
    "TorchServe": lambda client: client.post("/predictions/tiny?top_k=0", data=CHELSEA, headers=BEARER,
                                             content_type="image/png"),
}


@pytest.mark.parametrize("door", TOP_K_ZERO)
def test_a_top_k_below_one_is_refused_before_the_charge_and_leaves_the_bucket_untouched(door, keyed_client,
                                                                                        fake_redis):
    heartbeat(fake_redis)
    charge_once(fake_redis)
    before = fake_redis.hgetall(LIMITS.limits)
    response = TOP_K_ZERO[door](keyed_client)
    assert response.status_code == 400 and "top_k" in response.get_data(as_text=True)
    assert fake_redis.hgetall(LIMITS.limits) == before  # not even `at`: no take ran, so none was given back
    assert fake_redis.keys(LIMITS.charge("*")) == [LIMITS.charge("earlier").encode()]


# Each door's top_k over the tiny model's 3 classes: only the model shows it, so it is charged and given back.
TOP_K_OVER_THE_CLASSES = {
    "native JSON": lambda client: client.post("/predict", json=chelsea_json(MODEL.num_classes + 1), headers=BEARER),
    "v2": lambda client: client.post("/v2/models/tiny/infer", headers=BEARER, json={
        "inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": [chelsea_json(0)["image"]]}],
        "outputs": [{"name": "PROBABILITIES", "parameters": {"classification": MODEL.num_classes + 1}}]}),
}


@pytest.mark.parametrize("door", TOP_K_OVER_THE_CLASSES)
def test_a_top_k_over_the_models_classes_is_400_and_gives_its_charge_back(door, keyed_client, fake_redis):
    heartbeat(fake_redis)
    response = TOP_K_OVER_THE_CLASSES[door](keyed_client)
    assert response.status_code == 400 and f"the model has {MODEL.num_classes} classes" in response.get_data(
        as_text=True)
    limits = fake_redis.hgetall(LIMITS.limits)
    assert float(limits[b"tokens"]) == BURST and int(limits[b"used"]) == 0


def test_a_429_is_not_given_back_what_it_never_took(keyed_client, fake_redis, monkeypatch):
    """Over its limit: 429, and no refund, which would hand out tokens that were never taken."""
    heartbeat(fake_redis)
    refunds = []
    monkeypatch.setattr(access.Charge, "refund", lambda charge, client: refunds.append(charge))
    for index in range(BURST):
        charge_once(fake_redis, f"earlier-{index}")
    response = post_image(keyed_client, CHELSEA, headers=BEARER)
    assert response.status_code == 429 and response.get_json()["error"]["code"] == "rate_limited"
    assert refunds == []


class ResendingPipeline:
    """A pipeline whose replies are lost after Redis ran its commands (a read timeout), which then sends each command
    again by itself through the client and answers with those replies: what redis-py's ClusterPipeline does
    (redis/cluster.py, PipelineStrategy._send_cluster_commands: every command of the node whose read failed is
    marked with the error and resent with execute_command, whatever the client's retry policy)."""

    def __init__(self, client: fakeredis.FakeRedis):
        self.client, self.commands = client, []

    def execute_command(self, *args) -> None:
        self.commands.append(args)

    def execute(self) -> list:
        sent = self.client.pipeline(transaction=False)
        for args in self.commands:
            sent.execute_command(*args)
        sent.execute()  # run by Redis; its replies never reached the client
        return [self.client.execute_command(*args) for args in self.commands]


class ResendingClient:
    def __init__(self, client: fakeredis.FakeRedis):
        self.client = client

    def pipeline(self, transaction: bool = False) -> ResendingPipeline:
        return ResendingPipeline(self.client)

    def __getattr__(self, command: str):  # INFO and the rest: the server itself
        return getattr(self.client, command)


def test_an_admission_resent_command_by_command_charges_its_key_once(fake_redis):
    heartbeat(fake_redis)
    queue = InferenceQueue(ResendingClient(fake_redis), fake_redis, KEYS, max_queue=10)
    charge = access.Charge(ApiKey("ci", b"", RATE, BURST), LIMITS, 2)
    with Flask(__name__).app_context():  # judge() sets the answer's RateLimit-* headers
        assert queue.admit(charge) == MODEL
    assert float(fake_redis.hget(LIMITS.limits, "tokens")) == pytest.approx(BURST - 2, abs=0.01)
    assert int(fake_redis.hget(LIMITS.limits, "used")) == 2


def test_a_take_is_once_per_charge_id_and_remembered_for_a_while(fake_redis):
    for charge_id in ("a", "a", "b"):
        charge_once(fake_redis, charge_id)
    assert int(fake_redis.hget(LIMITS.limits, "used")) == 2
    assert 0 < fake_redis.pttl(LIMITS.charge("a")) <= rate_limit_scripts.CHARGE_MEMORY_MS


def test_a_refused_take_remembers_nothing_so_a_later_one_may_pass(fake_redis):
    for index in range(BURST):
        charge_once(fake_redis, f"earlier-{index}")
    pipe = fake_redis.pipeline(transaction=False)
    rate_limit_scripts.take_tokens(pipe, keys=LIMITS, charge_id="late", cost=1, rate=RATE, burst=BURST, daily=0)
    assert rate_limit_scripts.decode_allowance(pipe.execute()[0]).verdict == rate_limit_scripts.RATE_LIMITED
    assert not fake_redis.exists(LIMITS.charge("late"))
