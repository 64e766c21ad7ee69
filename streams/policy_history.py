"""Policy versions: every set the worker accepted, kept in the compacted ``gov.policies`` with
its files, so an operator can see what was in force and roll back to it.

The worker publishes the set it accepts (at start and on every accepted reload) unless the
topic's latest record for that version already has the same digest. A rollback takes version
N's files from the topic, validates them in a temporary folder, writes them into the live
policies folder file by file (temp file + ``os.replace``) and lets the worker's one reload path
apply them.

If two different sets carry the same ``version:`` (a limit edited without a bump), the later
one replaces the earlier under that key: a version names the set last accepted with it.

Beside the history, the key ``current`` holds the whole bundle in force (enforcement files,
``prices.yaml``, ``pii.yaml``, ``slo.yaml``), signed with the worker's control key: what clients
verify and enforce before each step (``streams.client.policies``). It is re-published whenever
the bundle in force changes, a rollback and a price or PII change included, so the latest
``current`` on the compacted topic is always the set in force.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.codec import Codecs, DecodeError
from streams.control import DropReason, KeyRing, SigningKey
from streams.kafka_config import client_config
from streams.pipeline.bypass import CLIENT_ID_ATTR, POLICY_SOURCE_ATTR, POLICY_VERSION_ATTR
from streams.pipeline.policy import PolicySet
from streams.policy_files import (
    OTHER_FILES,
    PolicyBundle,
    PolicyError,
    files_digest,
    load_bundle,
    load_policy_set,
)
from streams.settings import Settings
from streams.topics import publish_keyed, read_latest

log = logging.getLogger("governor.policies")

#: the key of the signed bundle in force on gov.policies (the others are ``str(version)``)
CURRENT_KEY = b"current"


@dataclass(frozen=True)
class PolicyVersion:
    version: int
    digest: str
    accepted_at_us: int
    policies: tuple[str, ...]
    #: file name -> YAML text of every enforcement file of the set
    files: Mapping[str, str] = field(default_factory=dict)
    #: the whole bundle's digest and its other files (prices, pii, slo): set on ``current``
    bundle_digest: str | None = None
    other_files: Mapping[str, str] = field(default_factory=dict)
    #: the control key's signature over :func:`signing_payload` (None: unsigned)
    key_id: str | None = None
    signature: bytes | None = None


@dataclass(frozen=True)
class Rollback:
    """Who asked for a rollback, and why (audited with it)."""

    to_version: int
    reason: str
    by: str


class UnknownPolicyVersion(LookupError):
    def __init__(self, version: int, known: list[int]) -> None:
        listed = ", ".join(map(str, known)) or "none yet"
        super().__init__(f"no policy version {version} in gov.policies; known versions: {listed}")
        self.known = known


# --- pure ----------------------------------------------------------------------------------


def policy_version_of(
    policy_set: PolicySet, files: Mapping[str, str], accepted_at_us: int
) -> PolicyVersion:
    return PolicyVersion(
        version=policy_set.version,
        digest=policy_set.digest,
        accepted_at_us=accepted_at_us,
        policies=tuple(p.id for p in policy_set.policies),
        files=dict(files),
    )


def is_recorded(latest: Mapping[int, PolicyVersion], policy_set: PolicySet) -> bool:
    """True when the topic's latest record for the set's version is this very set."""
    known = latest.get(policy_set.version)
    return known is not None and known.digest == policy_set.digest


def rollback_request(body: Any) -> Rollback:
    """The body of ``POST /policies/rollback``: {"to_version": N, "reason": "...", "by": "..."}."""
    if not isinstance(body, dict):
        raise ValueError("the body is a JSON object with to_version, reason and by")
    version = body.get("to_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"to_version must be an integer, got {version!r}")
    return Rollback(version, str(body.get("reason") or ""), str(body.get("by") or "unknown"))


def history_answer(
    versions: Mapping[int, PolicyVersion], in_force: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``governor policy history``: every version, oldest first, and which one is in force
    (the worker's ``/policies`` answer; None when no worker answered, so nobody can tell)."""
    current = None if in_force is None else (in_force.get("version"), in_force.get("digest"))
    return {
        "worker_reachable": in_force is not None,
        "in_force": None if current is None else {"version": current[0], "digest": current[1]},
        "versions": [
            {
                "version": pv.version,
                "digest": pv.digest,
                "accepted_at_us": pv.accepted_at_us,
                "policies": list(pv.policies),
                "files": sorted(pv.files),
                "in_force": None if current is None else (pv.version, pv.digest) == current,
            }
            for pv in sorted(versions.values(), key=lambda pv: pv.version)
        ],
    }


def to_record(pv: PolicyVersion) -> dict[str, Any]:
    return {
        "version": pv.version,
        "digest": pv.digest,
        "accepted_at_us": pv.accepted_at_us,
        "policies": list(pv.policies),
        "files": dict(pv.files),
        "bundle_digest": pv.bundle_digest,
        "other_files": dict(pv.other_files),
        "key_id": pv.key_id,
        "signature": pv.signature,
    }


def from_record(record: Mapping[str, Any]) -> PolicyVersion:
    return PolicyVersion(
        version=record["version"],
        digest=record["digest"],
        accepted_at_us=record["accepted_at_us"],
        policies=tuple(record["policies"]),
        files=dict(record["files"]),
        bundle_digest=record.get("bundle_digest"),
        other_files=dict(record.get("other_files") or {}),
        key_id=record.get("key_id"),
        signature=record.get("signature"),
    )


# --- the signed bundle in force (what clients enforce) ---------------------------------------


def signing_payload(pv: PolicyVersion) -> bytes:
    """Canonical JSON of everything a signed policy record says but its signature."""
    fields = {
        "version": pv.version,
        "digest": pv.digest,
        "accepted_at_us": pv.accepted_at_us,
        "policies": list(pv.policies),
        "files": dict(sorted(pv.files.items())),
        "bundle_digest": pv.bundle_digest,
        "other_files": dict(sorted(pv.other_files.items())),
        "key_id": pv.key_id,
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def signed(pv: PolicyVersion, key: SigningKey) -> PolicyVersion:
    """``pv`` carrying ``key``'s id and signature."""
    unsigned = dataclasses.replace(pv, key_id=key.key_id, signature=None)
    return dataclasses.replace(unsigned, signature=key.private_key.sign(signing_payload(unsigned)))


def verify_signed(pv: PolicyVersion, keyring: KeyRing) -> DropReason | None:
    """Why a client refuses ``pv`` (unsigned, unknown key, bad signature), or None."""
    return keyring.verify_payload(pv.key_id, pv.signature, signing_payload(pv))


def bundle_version_of(bundle: PolicyBundle, accepted_at_us: int) -> PolicyVersion:
    """The ``current`` record of a bundle (unsigned): its enforcement files and the others."""
    enforcement = {n: t for n, t in bundle.files.items() if n not in OTHER_FILES}
    return PolicyVersion(
        version=bundle.policies.version,
        digest=bundle.policies.digest,
        accepted_at_us=accepted_at_us,
        policies=tuple(p.id for p in bundle.policies.policies),
        files=enforcement,
        bundle_digest=bundle.digest,
        other_files={n: t for n, t in bundle.files.items() if n in OTHER_FILES},
    )


def bundle_of(pv: PolicyVersion) -> PolicyBundle:
    """Load a ``current`` record's files in a temporary folder: the bundle, or PolicyError.

    The files must reproduce the recorded digests, so what a client enforces is exactly what
    the worker accepted.
    """
    with tempfile.TemporaryDirectory(prefix="governor-bundle-") as tmp:
        for name, text in {**pv.files, **pv.other_files}.items():
            if Path(name).name != name or not name.endswith(".yaml"):
                raise PolicyError([f"gov.policies v{pv.version}: refusing file name {name!r}"])
            (Path(tmp) / name).write_bytes(text.encode())
        bundle = load_bundle(Path(tmp))
    if bundle.policies.digest != pv.digest or (
        pv.bundle_digest is not None and bundle.digest != pv.bundle_digest
    ):
        raise PolicyError(
            [
                f"gov.policies v{pv.version} ({pv.digest}/{pv.bundle_digest}): its files make "
                f"v{bundle.policies.version} ({bundle.policies.digest}/{bundle.digest})"
            ]
        )
    return bundle


# --- files ---------------------------------------------------------------------------------


def enforcement_files(folder: Path) -> dict[str, str]:
    """Name -> text of the folder's enforcement files (not prices, pii or slo)."""
    return {
        path.name: path.read_text()
        for path in sorted(folder.glob("*.yaml"))
        if path.name not in OTHER_FILES
    }


def validate_version(pv: PolicyVersion) -> PolicySet:
    """Load version N's files in a temporary folder: the set they make, or PolicyError.

    The files must also reproduce the recorded digest, so what is installed is exactly what
    was accepted then.
    """
    with tempfile.TemporaryDirectory(prefix="governor-rollback-") as tmp:
        for name, text in pv.files.items():
            (Path(tmp) / name).write_bytes(text.encode())
        policy_set = load_policy_set(Path(tmp))
    if policy_set.digest != pv.digest or policy_set.version != pv.version:
        raise PolicyError(
            [
                f"gov.policies v{pv.version} ({pv.digest}): its files make "
                f"v{policy_set.version} ({policy_set.digest})"
            ]
        )
    return policy_set


def install_files(folder: Path, files: Mapping[str, str]) -> None:
    """Make ``files`` the folder's enforcement files: each written whole (temp file, then
    ``os.replace``), enforcement files not among them removed; prices, pii and slo untouched.

    A temp file does not end in ``.yaml``, so a reload never sees a half-written file.
    """
    for name in files:
        if Path(name).name != name or not name.endswith(".yaml") or name in OTHER_FILES:
            raise ValueError(f"refusing to write {name!r}: not an enforcement file name")
    for name, text in files.items():
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".rollback")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(text.encode())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    for path in folder.glob("*.yaml"):
        if path.name not in OTHER_FILES and path.name not in files:
            path.unlink()


# --- Kafka ---------------------------------------------------------------------------------


def load_policy_versions(settings: Settings) -> dict[int, PolicyVersion]:
    """The latest record of every version in gov.policies."""
    return load_policy_topic(settings)[0]


def load_policy_topic(
    settings: Settings,
) -> tuple[dict[int, PolicyVersion], PolicyVersion | None]:
    """gov.policies read once: the latest record of every version, and ``current``."""
    codec = Codecs.load(settings.schemas_dir).policy_version
    latest = read_latest(settings, settings.topic("policies"))
    versions = [
        from_record(codec.decode(value)) for key, value in latest.items() if key != CURRENT_KEY
    ]
    current = latest.get(CURRENT_KEY)
    return (
        {pv.version: pv for pv in sorted(versions, key=lambda pv: pv.version)},
        None if current is None else from_record(codec.decode(current)),
    )


def publish_policy_version(settings: Settings, pv: PolicyVersion, key: bytes | None = None) -> None:
    codec = Codecs.load(settings.schemas_dir).policy_version
    publish_keyed(
        settings,
        settings.topic("policies"),
        str(pv.version).encode() if key is None else key,
        codec.encode(to_record(pv)),
    )


class PolicyHistory:
    """The worker's side: publishes each accepted set once, off the event loop, in order.

    One thread does the Kafka work, so publications keep the order the sets were accepted in
    and the event loop never waits for the broker. With a signing key it also publishes the
    whole bundle in force, signed, under ``current`` (for clients) whenever it changes.
    """

    def __init__(
        self, settings: Settings, accepted_dir: Path, signing_key: SigningKey | None = None
    ) -> None:
        self.settings = settings
        #: the folder holding exactly the files of the set in force (PolicyWatch's last good)
        self.accepted_dir = accepted_dir
        self.signing_key = signing_key
        self._latest: dict[int, PolicyVersion] | None = None
        #: bundle digest of the latest ``current`` on the topic (read with ``_latest``)
        self._current: str | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-history")

    def accepted(self, policy_set: PolicySet) -> Future[None]:
        """Record ``policy_set`` (just accepted): its files are read now, published soon.

        Call it for every bundle put in force, a price or PII change too: the history skips
        a version already recorded, ``current`` skips a bundle already published."""
        bundle_files = {
            path.name: path.read_text() for path in sorted(self.accepted_dir.glob("*.yaml"))
        }
        files = {n: t for n, t in bundle_files.items() if n not in OTHER_FILES}
        accepted_at_us = time.time_ns() // 1000
        return self._executor.submit(self._publish, policy_set, files, bundle_files, accepted_at_us)

    def _publish(
        self,
        policy_set: PolicySet,
        files: dict[str, str],
        bundle_files: dict[str, str],
        accepted_at_us: int,
    ) -> None:
        try:
            if files_digest(files) != policy_set.digest:
                # the folder changed again between accepting and copying: the next accepted
                # reload publishes what is then in force
                log.warning("policies v%s: files changed before publication", policy_set.version)
                return
            if self._latest is None:
                self._latest, current = load_policy_topic(self.settings)
                self._current = None if current is None else current.bundle_digest
            pv = policy_version_of(policy_set, files, accepted_at_us)
            if not is_recorded(self._latest, policy_set):
                publish_policy_version(self.settings, pv)
                self._latest[pv.version] = pv
                log.info("policies v%s (%s) recorded in gov.policies", pv.version, pv.digest)
            if self.signing_key is not None:
                self._publish_current(pv, bundle_files)
        except Exception:
            log.exception("could not record policies v%s in gov.policies", policy_set.version)

    def _publish_current(self, pv: PolicyVersion, bundle_files: dict[str, str]) -> None:
        assert self.signing_key is not None
        bundle_digest = files_digest(bundle_files)
        if self._current == bundle_digest:
            return
        current = dataclasses.replace(
            pv,
            bundle_digest=bundle_digest,
            other_files={n: t for n, t in bundle_files.items() if n in OTHER_FILES},
        )
        publish_policy_version(self.settings, signed(current, self.signing_key), CURRENT_KEY)
        self._current = bundle_digest
        log.info("bundle %s (policies v%s) published for clients", bundle_digest, pv.version)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


# --- which set each client reports using (issue 13) -------------------------------------------


@dataclass(frozen=True)
class ClientReport:
    """The set one client (one Governor instance) said it enforced on its latest event seen."""

    client_id: str
    tenant_id: str
    agent_id: str
    #: ``v<version>:<policy digest>``
    policy_version: str
    #: gov.policies, cache or local
    source: str
    last_seen_us: int
    events: int


def client_reports(events: Iterable[Mapping[str, Any]]) -> list[ClientReport]:
    """Per client, the set its latest event (by event time) names; events without a report
    (clients without checks) are left out. Sorted by tenant, agent, client."""
    latest: dict[str, ClientReport] = {}
    for event in events:
        attributes = event.get("attributes") or {}
        client = attributes.get(CLIENT_ID_ATTR)
        version = attributes.get(POLICY_VERSION_ATTR)
        if not client or not version:
            continue
        seen = latest.get(client)
        at = int(event.get("start_time_us") or 0)
        count = 1 if seen is None else seen.events + 1
        if seen is None or at >= seen.last_seen_us:
            latest[client] = ClientReport(
                client, event["tenant_id"], event["agent_id"], version,
                attributes.get(POLICY_SOURCE_ATTR, "?"), at, count,
            )  # fmt: skip
        else:
            latest[client] = dataclasses.replace(seen, events=count)
    return sorted(latest.values(), key=lambda r: (r.tenant_id, r.agent_id, r.client_id))


def clients_answer(reports: Sequence[ClientReport], scanned: int) -> dict[str, Any]:
    """The ``clients`` part of ``governor policy history --json``."""
    return {
        "events_scanned": scanned,
        "clients": [dataclasses.asdict(r) for r in reports],
        "by_version": dict(Counter(r.policy_version for r in reports)),
    }


def read_event_tail(settings: Settings, per_partition: int) -> list[dict[str, Any]]:
    """The last ``per_partition`` events of every partition of gov.events, decoded (records
    that do not decode are skipped: the worker dead-letters them)."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    topic = settings.topic("events")
    codec = Codecs.load(settings.schemas_dir).step_event
    consumer = Consumer(
        {
            **client_config(settings),
            "group.id": f"governor-policy-history-{os.getpid()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "log_level": 3,
        }
    )
    events: list[dict[str, Any]] = []
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or not metadata.partitions:
            return events
        assignment, pending = [], set()
        for p in sorted(metadata.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                assignment.append(TopicPartition(topic, p, max(low, high - per_partition)))
                pending.add(p)
        consumer.assign(assignment)
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(5000, 0.5):
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition() or 0)
                    continue
                try:
                    events.append(codec.decode(msg.value() or b""))
                except DecodeError:
                    continue
        return events
    finally:
        consumer.close()
