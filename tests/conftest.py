"""Fixtures shared by unit and integration tests (the integration ones, a real
Synapse and its users, live in tests/integration/conftest.py)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("MXSYNC_SOAK"):
        return
    skip = pytest.mark.skip(reason="soak test: set MXSYNC_SOAK=1")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
