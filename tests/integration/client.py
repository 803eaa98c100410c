"""HTTP helpers for the integration tests."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import requests


def post_image(url: str, data: bytes, field: str = "image", filename: str = "photo",
               timeout: float = 60, headers: dict[str, str] | None = None, path: str = "/predict") -> requests.Response:
    return requests.post(url + path, files={field: (filename, data)}, headers=headers, timeout=timeout)


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


@dataclass(frozen=True)
class Outcome:
    sent_at: float  # time.monotonic()
    status: int
    body: dict
    seconds: float


class ClosedLoopClients:
    """`count` threads, each sending the next request as soon as its answer is in, until stopped."""

    def __init__(self, url: str, image: bytes, count: int = 4, path: str = "/predict"):
        self.url, self.image, self.path = url, image, path
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send_until_stopped) for _ in range(count)]

    def __enter__(self) -> "ClosedLoopClients":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _send_until_stopped(self) -> None:
        while not self._stop.is_set():
            sent_at = time.monotonic()
            response = post_image(self.url, self.image, path=self.path)
            self.outcomes.append(Outcome(sent_at, response.status_code, response.json(),
                                         time.monotonic() - sent_at))

    def since(self, moment: float) -> list[Outcome]:
        return [outcome for outcome in list(self.outcomes) if outcome.sent_at >= moment]

    def answered_since(self, moment: float) -> list[int]:
        return [outcome.status for outcome in self.since(moment)]
