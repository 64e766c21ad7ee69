"""The one place Governor creates Redis clients: every call is bounded in time.

A Redis that is stopped (SIGSTOP) keeps its TCP connections open and answers nothing; without a
socket timeout a call waits forever. Every client Governor creates goes through here.
"""

from __future__ import annotations

import redis

from streams.settings import Settings


def redis_client(settings: Settings) -> redis.Redis:
    timeout = settings.redis_timeout_s
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        retry_on_timeout=False,
    )
