"""Shared fixtures: real servers and sources on loopback, and a check that none outlive a test.

The helpers they use (and tests import) live in tests/helpers.py.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    RedisServer,
    Server,
    processes_mentioning,
    start_redis,
    start_server,
    stop_redis,
    stop_server,
)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Decoders run with one thread in the loop; spare OpenMP threads only spin here."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path / "data")
    try:
        yield srv
    finally:
        stop_server(srv)
        leaked = processes_mentioning(str(tmp_path))
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
        assert not leaked, f"processes left behind: {leaked}"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = start_redis(tmp_path / "redis")
    try:
        yield srv
    finally:
        stop_redis(srv)



def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test not marked ``unit`` is an integration test (servers, processes, data)."""
    for item in items:
        if item.get_closest_marker("unit") is None:
            item.add_marker(pytest.mark.integration)
