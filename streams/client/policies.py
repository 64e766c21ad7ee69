"""The policy set a client enforces: the worker's signed bundle from ``gov.policies``.

The worker publishes the bundle in force (policies, prices, PII rules) under the key
``current`` of the compacted ``gov.policies``, signed with its control key
(:mod:`streams.policy_history`). A client verifies the signature against the keys it trusts for
decisions, loads the files as the worker does (refusing any that do not reproduce the recorded
digests) and keeps the last good record on disk, so it starts with the set in force even when
Kafka is down. Before any worker has published, the client enforces its local policies folder,
and says so (``source: local``) on its events.

A record that fails (unsigned, unknown key, bad signature, files that do not load) is refused
and counted; the set in force stays.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from streams.client.checks import ClientPolicies
from streams.codec import Codec, DecodeError
from streams.control import KeyRing
from streams.kafka_config import KafkaSecurity, connection_config
from streams.pipeline.bypass import CLIENT_ID_ATTR, POLICY_SOURCE_ATTR, POLICY_VERSION_ATTR
from streams.pipeline.policy import PolicySet
from streams.pipeline.pricing import PriceTable
from streams.policy_files import PolicyBundle, PolicyError, load_bundle
from streams.policy_history import (
    CURRENT_KEY,
    PolicyVersion,
    bundle_of,
    from_record,
    to_record,
    verify_signed,
)

log = logging.getLogger("governor.client")

__all__ = [
    "BLOCKED_POLICY_ATTR",
    "CLIENT_ID_ATTR",
    "POLICY_SOURCE_ATTR",
    "POLICY_VERSION_ATTR",
    "PolicyCache",
    "PolicyFeed",
    "RefusedSet",
    "accept_record",
    "local_policies",
]

#: on a BLOCKED step: the policy that refused it
BLOCKED_POLICY_ATTR = "governor.blocked_policy"
CACHE_FILE = "current.avro"


def client_policies(bundle: PolicyBundle, source: str) -> ClientPolicies:
    return ClientPolicies(bundle.policies, bundle.prices, bundle.pii, bundle.digest, source)


def empty_policies() -> ClientPolicies:
    return ClientPolicies(PolicySet.build([]), PriceTable({}), None, "", "none")


class RefusedSet(ValueError):
    """A policy record the client will not enforce; ``reason`` is ``unsigned``,
    ``unknown_key``, ``bad_signature`` or ``invalid`` (its files do not load as accepted)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def accept_record(pv: PolicyVersion, keyring: KeyRing, source: str) -> ClientPolicies:
    """The set a signed record holds; :class:`RefusedSet` says why it is refused."""
    refused = verify_signed(pv, keyring)
    if refused is not None:
        raise RefusedSet(refused.value, f"gov.policies v{pv.version} (key {pv.key_id!r})")
    try:
        bundle = bundle_of(pv)
    except PolicyError as exc:
        raise RefusedSet("invalid", str(exc)) from exc
    return client_policies(bundle, source)


def local_policies(folder: Path) -> ClientPolicies:
    """The local policies folder (unsigned, the operator's own files), or nothing."""
    try:
        return client_policies(load_bundle(folder), "local")
    except (PolicyError, OSError) as exc:
        log.warning(
            "policies folder %s refused (%s): no client-side checks until a set arrives",
            folder,
            exc,
        )
        return empty_policies()


class PolicyCache:
    """The last good signed record, on disk (written whole: temp file + ``os.replace``)."""

    def __init__(self, folder: Path, codec: Codec) -> None:
        self.path = folder / CACHE_FILE
        self._codec = codec

    def save(self, pv: PolicyVersion) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".current.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(self._codec.encode(to_record(pv)))
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self, keyring: KeyRing) -> tuple[PolicyVersion, ClientPolicies] | None:
        """The cached set, verified again (a file on disk is no more trusted than Kafka)."""
        try:
            pv = from_record(self._codec.decode(self.path.read_bytes()))
            return pv, accept_record(pv, keyring, "cache")
        except FileNotFoundError:
            return None
        except (DecodeError, RefusedSet, OSError) as exc:
            log.warning("cached policy set %s refused: %s", self.path, exc)
            return None


#: how long the feed waits between attempts to reach gov.policies
RETRY_S = 1.0


class PolicyFeed:
    """Background thread reading ``current`` from gov.policies (every partition, from the
    beginning, no consumer group): each verified new set goes to ``on_set``.

    The thread itself finds the topic's partitions, retrying every second while Kafka (or the
    topic) is not there, so a client started during an outage still gets the set later."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        codec: Codec,
        keyring: KeyRing,
        on_set: Callable[[PolicyVersion, ClientPolicies], None],
        known_digest: str = "",
        security: KafkaSecurity | None = None,
    ) -> None:
        self.topic = topic
        self._codec = codec
        self._keyring = keyring
        self._on_set = on_set
        self._digest = known_digest
        self.refused: Counter[str] = Counter()
        self.accepted = 0
        #: attempts that found no Kafka or no topic (retried every RETRY_S)
        self.unreachable = 0
        #: set once the records on the topic at start have been read (or there were none)
        self.caught_up = threading.Event()
        self._ends: dict[int, int] = {}
        self._stopping = threading.Event()
        self._consumer = Consumer(
            {
                **connection_config(bootstrap, security),
                "group.id": f"governor-client-policies-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 50,
                "log_level": 2,
            }
        )
        self._thread = threading.Thread(target=self._run, name="governor-policies", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _assign(self, timeout_s: float = 1.0) -> bool:
        """Assign every partition from the beginning, noting where each ends now."""
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=timeout_s)
            topic = metadata.topics.get(self.topic)
            partitions = sorted(topic.partitions) if topic is not None and topic.partitions else []
            if not partitions or topic is None or topic.error is not None:
                return False
            ends = {}
            for p in partitions:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=timeout_s
                )
                if high > 0:
                    ends[p] = int(high)
        except KafkaException:
            return False
        self._ends = ends
        if not ends:
            self.caught_up.set()
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        return True

    def _run(self) -> None:
        while not self._stopping.is_set() and not self._assign():
            self.unreachable += 1
            self._stopping.wait(RETRY_S)
        while not self._stopping.is_set():
            msg = self._consumer.poll(0.1)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._ends.pop(msg.partition() or 0, None)
                    if not self._ends:
                        self.caught_up.set()
                continue
            if msg.key() == CURRENT_KEY and msg.value():
                self._offer(msg.value() or b"")
        self._consumer.close()

    def _offer(self, value: bytes) -> None:
        try:
            pv = from_record(self._codec.decode(value))
        except DecodeError:
            self.refused["undecodable"] += 1
            return
        if pv.bundle_digest == self._digest:
            return
        try:
            policies = accept_record(pv, self._keyring, "gov.policies")
        except RefusedSet as exc:
            self.refused[exc.reason] += 1
            log.warning("policy set refused, the one in force stays: %s", exc)
            return
        self._digest = pv.bundle_digest or ""
        self.accepted += 1
        self._on_set(pv, policies)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
