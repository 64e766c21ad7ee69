"""Unit-test fixtures: a private redis-server (never the shared one: the tests flush it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.private_redis import PrivateRedis


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    with PrivateRedis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def client(private_redis: PrivateRedis) -> Iterator[redis.Redis]:
    c = private_redis.client()
    yield c
    c.close()
