"""The ``browser`` fixture of the browser tests (see ``browser.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser

from .browser import launch


@pytest.fixture
def browser() -> Iterator[Browser]:
    yield from launch()
