"""CORS_ORIGINS: a browser app on an allowed origin may call every door; others, and everyone by default, not."""

import dataclasses

import pytest

from app import create_app
from serving.config import ConfigError, Settings
from tests.unit.fake_api import SETTINGS, answer_next_request, heartbeat, post_image, success

APP_ORIGIN = "https://app.example.com"
PREFLIGHT = {"Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "content-type, x-model-version"}


def cors_client(fake_redis, origins: str):
    return create_app(dataclasses.replace(SETTINGS, cors_origins=origins), fake_redis).test_client()


@pytest.mark.parametrize("path", ["/predict", "/models/tiny/predict", "/v2/models/tiny/infer",
                                  "/predictions/tiny"])
def test_a_preflight_from_an_allowed_origin_is_answered_for_every_door(fake_redis, path):
    response = cors_client(fake_redis, f"http://localhost:3000, {APP_ORIGIN}").options(path, headers=PREFLIGHT)
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert {"content-type", "x-model-version"} <= {h.strip().lower() for h in
                                                  response.headers["Access-Control-Allow-Headers"].split(",")}


def test_an_allowed_origins_answer_says_so_and_exposes_the_request_id(fake_redis):
    client = cors_client(fake_redis, APP_ORIGIN)
    heartbeat(fake_redis)
    answer_next_request(fake_redis, success([]))
    response = post_image(client, headers={"Origin": APP_ORIGIN})
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "X-Request-ID" in response.headers["Access-Control-Expose-Headers"]
    assert "Origin" in response.headers["Vary"]


def test_any_origin_with_a_star(fake_redis):
    response = cors_client(fake_redis, "*").options("/predict", headers={**PREFLIGHT, "Origin": "http://x.test"})
    assert response.status_code == 204 and response.headers["Access-Control-Allow-Origin"] == "http://x.test"


def test_another_origin_gets_no_cors_headers_and_its_preflight_is_405(fake_redis):
    client = cors_client(fake_redis, APP_ORIGIN)
    response = client.options("/predict", headers={**PREFLIGHT, "Origin": "https://evil.example"})
    assert response.status_code == 405 and "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Origin" not in client.get("/healthz", headers={"Origin": "https://evil.example"}).headers


def test_by_default_no_origin_is_allowed(client):
    response = client.options("/predict", headers=PREFLIGHT)
    assert response.status_code == 405 and "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize("origins", ["app.example.com", "https://app.example.com/path", "ftp://x"])
def test_a_cors_origin_that_is_not_an_origin_is_a_configuration_error(origins):
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        Settings.from_env({"CORS_ORIGINS": origins})
