"""PROXY=nginx: a real buffering proxy in front of the API, so slow clients cannot take the API's threads."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from stack.processes import Stack
from tests.images import CAT_LABELS, MULTIPART_CONTENT_TYPE, photo_bytes, upload_of_size
from tests.integration.client import post_image
from tests.integration.conftest import stack_settings

SLOW_CLIENTS = 40  # more than the API's 2 processes x 16 threads


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    # A fractional upload limit, which the configuration accepts: nginx must start with it too.
    settings = stack_settings(proxy="nginx", max_upload_mb=10.5)
    with Stack(settings, workers=1, log_dir=tmp_path_factory.mktemp("logs")) as stack:
        yield stack


def post_body_of(url: str, size: int) -> requests.Response:
    return requests.post(url + "/predict", data=upload_of_size(size), headers={"Content-Type": MULTIPART_CONTENT_TYPE},
                         timeout=30)


def test_the_service_answers_through_the_proxy_with_json_errors(proxied):
    response = post_image(proxied.url, photo_bytes("chelsea.png"))
    assert response.json()["predictions"][0]["label"] in CAT_LABELS
    too_large = post_image(proxied.url, b"\0" * (proxied.settings.max_upload_bytes + 1))
    assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "request_entity_too_large"
    assert requests.get(proxied.url + "/healthz", timeout=5).json() == {"status": "ok"}


def test_nginx_and_the_api_refuse_a_fractional_upload_limit_from_the_same_byte(proxied):
    """MAX_UPLOAD_MB=10.5 is 11,010,048 bytes for both: a body of that size reaches the API, one byte more is 413."""
    limit = proxied.settings.max_upload_bytes
    assert limit == 11_010_048
    for url in (proxied.url, proxied.api_url):  # through nginx, and the API alone
        at_limit = post_body_of(url, limit)
        assert at_limit.status_code == 400 and at_limit.json()["error"]["code"] == "invalid_image", url
        over = post_body_of(url, limit + 1)
        assert over.status_code == 413 and over.json()["error"]["code"] == "request_entity_too_large", url


def ended_by_server(client: socket.socket) -> bool:
    client.settimeout(15)
    try:
        data = client.recv(4096)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return data == b"" or data.startswith(b"HTTP/1.1 408")


def test_slow_clients_hold_proxy_connections_not_api_threads(proxied):
    host, port = proxied.settings.host, proxied.settings.port
    slow = [socket.create_connection((host, port), timeout=30) for _ in range(SLOW_CLIENTS)]
    dripping = threading.Event()

    def drip():  # a whole header, then a byte of the body every 2 s: each would hold an API thread for good
        line = (b"POST /predict HTTP/1.1\r\nHost: imgcls\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 100000\r\n\r\n--b\r\n")
        while True:
            for client in slow:
                try:
                    client.sendall(line)
                except OSError:
                    pass  # closed by nginx
            line = b"x"
            if dripping.wait(2):
                return

    dripper = threading.Thread(target=drip)
    dripper.start()
    try:
        time.sleep(1)
        for _ in range(5):
            started = time.monotonic()
            assert requests.get(proxied.url + "/healthz", timeout=5).status_code == 200
            assert time.monotonic() - started < 1.0
            assert post_image(proxied.url, photo_bytes("coffee.png"), timeout=10).status_code == 200
            time.sleep(1)
        dripping.set()
        dripper.join()
        # A client that sends nothing for 10 s (client_body_timeout) is answered 408 and disconnected.
        assert all(ended_by_server(client) for client in slow)
    finally:
        dripping.set()
        for client in slow:
            client.close()
