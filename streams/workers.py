"""Who the workers of a deployment are: each process's identity, as the group sees it.

Every worker process has its own ``INSTANCE_ID`` (its transactional ids derive from it, so any
number of workers run side by side) and names itself to the consumer group with a client id
that carries its web address: ``governor status`` finds every worker from the group's members,
with nothing to register and nothing to go stale.
"""

from __future__ import annotations

import os
import socket
import uuid

from streams.settings import Settings

#: this process's identity: host, pid and a random part (a restarted process is a new instance)
INSTANCE_ID = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def worker_client_id(settings: Settings) -> str:
    """``<app>-worker@<host>:<port>``: the web address other tools reach this worker on."""
    return f"{settings.app_id}-worker@{settings.web_host}:{settings.web_port}"


def parse_client_id(client_id: str) -> tuple[str, int] | None:
    """(host, port) of a worker's client id; None for another kind of member."""
    _, at, address = client_id.rpartition("@")
    host, colon, port = address.rpartition(":")
    if not at or not colon or not port.isdigit():
        return None
    return host, int(port)
