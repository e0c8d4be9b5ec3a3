"""Fixtures for the shard tests.

``world`` runs a test once on the simulator's MemoryDisk and once on real LevelDB (under
``tmp_path``); ``memory_world`` only on MemoryDisk. Because a :class:`World` is also a trio clock,
pytest-trio runs the test with time standing still until the test advances it.
"""

from __future__ import annotations

import pytest

from tests.shard.support import World


@pytest.fixture(params=["memory", "leveldb"])
def world(request: pytest.FixtureRequest, tmp_path) -> World:  # noqa: ANN001
    return World(request.param, str(tmp_path))


@pytest.fixture
def memory_world(tmp_path) -> World:  # noqa: ANN001
    return World("memory", str(tmp_path))
