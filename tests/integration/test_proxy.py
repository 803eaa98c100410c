"""PROXY=nginx: a real buffering proxy in front of the API, so slow clients cannot take the API's threads."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from stack.processes import Stack
from tests.images import CAT_LABELS, photo_bytes
from tests.integration.client import post_image
from tests.integration.conftest import stack_settings

pytestmark = pytest.mark.integration

SLOW_CLIENTS = 40  # more than the API's 2 processes x 16 threads


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    with Stack(stack_settings(proxy="nginx"), workers=1, log_dir=tmp_path_factory.mktemp("logs")) as stack:
        yield stack


def test_the_service_answers_through_the_proxy_with_json_errors(proxied):
    response = post_image(proxied.url, photo_bytes("chelsea.png"))
    assert response.json()["predictions"][0]["label"] in CAT_LABELS
    too_large = post_image(proxied.url, b"\0" * (proxied.settings.max_upload_bytes + 1))
    assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "request_entity_too_large"
    assert requests.get(proxied.url + "/healthz", timeout=5).json() == {"status": "ok"}


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
