"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.images import PHOTOS


@pytest.fixture(scope="session")
def photos() -> Path:
    return PHOTOS
