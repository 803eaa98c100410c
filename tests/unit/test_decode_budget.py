"""The API's decoding budget: uploads share a bounded number of pixels; one that does not fit waits, then is 503."""

import threading
import time

import pytest

from app import decode_budget
from app.decode_budget import DecodeBudget, DecoderBusy


def test_reservations_share_the_budget_and_a_later_one_waits_for_room(monkeypatch):
    monkeypatch.setattr(decode_budget, "WAIT_SECONDS", 5.0)
    budget = DecodeBudget(100)
    order = []

    def second():
        with budget.reserve(60):
            order.append("second decodes")

    with budget.reserve(60):
        waiting = threading.Thread(target=second)
        waiting.start()
        time.sleep(0.2)
        order.append("first done")
    waiting.join()
    assert order == ["first done", "second decodes"]


def test_an_upload_that_finds_no_room_in_time_is_refused(monkeypatch):
    monkeypatch.setattr(decode_budget, "WAIT_SECONDS", 0.1)
    budget = DecodeBudget(100)
    with budget.reserve(70):
        with pytest.raises(DecoderBusy):
            with budget.reserve(40):
                pass
        with budget.reserve(30):  # what fits goes ahead
            pass
    with budget.reserve(100):  # everything was given back
        pass
