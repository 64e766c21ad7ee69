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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from streams.settings import Settings

#: this process's identity: host, pid and a random part (a restarted process is a new instance)
INSTANCE_ID = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


#: hosts a worker may bind to that no other machine can reach it on: the group's view of the
#: member's address stands in for them
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def web_url(host: str, port: int) -> str:
    """``http://host:port``, an IPv6 host in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


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


@dataclass(frozen=True)
class WorkerMember:
    """One member of the accounting group, as the group coordinator describes it."""

    member_id: str
    client_id: str
    #: the address the broker sees the member connect from
    client_host: str
    #: where its web port is reached (from the client id); None for a member that is not a
    #: Governor worker (another tool using the group id, a worker from before client ids)
    host: str | None
    port: int | None
    #: the partitions of the events topic assigned to it, ascending
    partitions: tuple[int, ...]

    @property
    def url(self) -> str | None:
        if self.host is None or self.port is None:
            return None
        return web_url(self.host, self.port)


@dataclass(frozen=True)
class WorkerGroup:
    """The accounting group: its state and members, and how many partitions there are."""

    group_id: str
    #: the coordinator's state: stable, preparing rebalancing, completing rebalancing, empty
    #: (no member, offsets kept), dead (no member and nothing kept: never used), unknown
    state: str
    topic: str
    #: partitions of the events topic; None when the topic does not exist
    topic_partitions: int | None
    members: tuple[WorkerMember, ...]

    @property
    def unassigned(self) -> tuple[int, ...]:
        """Partitions of the events topic no member holds (none in a stable group with a
        member; all of them while no worker runs)."""
        if self.topic_partitions is None:
            return ()
        held = {p for m in self.members for p in m.partitions}
        return tuple(p for p in range(self.topic_partitions) if p not in held)


class GroupLookupError(RuntimeError):
    """The broker could not be asked who is in the group."""


def member_of(
    member_id: str,
    client_id: str,
    client_host: str,
    assignment: list[tuple[str, int]],
    topic: str,
) -> WorkerMember:
    """A group member as Governor sees it: the web address from its client id, and its share
    of the events topic (partitions of other topics the group reads are not listed)."""
    seen_from = client_host.lstrip("/")
    address = parse_client_id(client_id)
    host, port = address if address is not None else (None, None)
    if host is not None and host in _WILDCARD_HOSTS:
        # bound to every interface: reachable where the broker sees it connect from
        host = seen_from
    partitions = tuple(sorted(p for t, p in assignment if t == topic))
    return WorkerMember(member_id, client_id, seen_from, host, port, partitions)


def describe_worker_group(settings: Settings, timeout_s: float = 5.0) -> WorkerGroup:
    """Ask the group coordinator who is in the accounting group and what each member holds.

    Raises GroupLookupError when Kafka does not answer: at once when nothing listens on any
    bootstrap address (``governor status`` with the stack down must not wait for a timeout),
    after ``timeout_s`` when a broker listens but does not answer.
    """
    from confluent_kafka import KafkaException

    from streams.processor.lag import accounting_group
    from streams.topics import admin_client

    if not any(_listens(address) for address in settings.bootstrap.split(",")):
        raise GroupLookupError(f"nothing listens on the Kafka bootstrap {settings.bootstrap}")
    group_id = accounting_group(settings)
    topic = settings.events_source_topic
    admin = admin_client(settings)
    try:
        described = admin.describe_consumer_groups([group_id], request_timeout=timeout_s)
        group = described[group_id].result()
        # every topic's metadata, not the one topic's: asking for a topic by name creates it
        # on a broker with auto.create.topics.enable
        metadata = admin.list_topics(timeout=timeout_s).topics.get(topic)
    except KafkaException as exc:
        raise GroupLookupError(
            f"Kafka at {settings.bootstrap} did not describe group {group_id}: {exc}"
        ) from exc
    partitions = None
    if metadata is not None and metadata.error is None:
        partitions = len(metadata.partitions)
    members = sorted(
        (
            member_of(
                m.member_id,
                m.client_id,
                m.host,
                [(tp.topic, tp.partition) for tp in m.assignment.topic_partitions],
                topic,
            )
            for m in group.members
        ),
        key=lambda m: (m.host or "", m.port or 0, m.member_id),
    )
    state = group.state.name.lower().replace("_", " ")
    return WorkerGroup(group_id, state, topic, partitions, tuple(members))


def group_workers(settings: Settings, timeout_s: float = 5.0) -> list[WorkerMember]:
    """Every member of the accounting group (see describe_worker_group)."""
    return list(describe_worker_group(settings, timeout_s).members)


def _listens(address: str, timeout_s: float = 1.0) -> bool:
    host, _, port = address.strip().rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def group_answers(settings: Settings, path: str) -> Iterator[Any]:
    """The answers of the accounting group's workers to ``path`` (those that answer)."""
    from streams.worker import fetch_json

    try:
        members = group_workers(settings)
    except GroupLookupError:
        return
    for member in members:
        if member.host is None or member.port is None:
            continue
        answer = fetch_json(f"{web_url(member.host, member.port)}{path}", timeout_s=3)
        if answer is not None:
            yield answer


def slo_from_group(settings: Settings) -> Any:
    """The SLO answer of the worker that holds the fleet's SLO state, if one answers."""
    return next((a for a in group_answers(settings, "/ask/slo") if a.get("held")), None)
