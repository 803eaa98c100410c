"""HTTP helpers for the integration tests."""

from __future__ import annotations

import time

import requests


def post_image(url: str, data: bytes, field: str = "image", filename: str = "photo",
               timeout: float = 60, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(url + "/predict", files={field: (filename, data)}, headers=headers, timeout=timeout)


def timed_post(url: str, data: bytes, timeout: float = 60) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = post_image(url, data, timeout=timeout)
    return response, time.monotonic() - started


def wait_until(condition, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll condition() until it returns something truthy; that value is returned."""
    give_up_at = time.monotonic() + timeout
    while time.monotonic() < give_up_at:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout}s")
