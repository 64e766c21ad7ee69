"""The Kafka ACLs each Governor role needs, derived from :func:`streams.topics.topic_specs`.

Three roles (principals are ``User:<name>`` as the broker authenticates them, e.g. the SCRAM
user name):

- **agent** (the client in an agent process): writes ``events``; reads ``control`` (decisions)
  and ``policies`` (the signed policy set the client-side checks enforce); its consumers use
  throwaway ``governor-client-*`` group ids and never commit. Nothing else: above all it may
  not write ``control``, so an agent cannot forge or replay decisions onto the topic.
- **worker**: reads and writes every Governor topic and creates them (``governor topics
  create`` runs as the worker); ``<prefix>replay.*`` topics (``governor replay``); the
  stages' ``<prefix><app_id>-*`` changelogs and repartition topic; Faust's ``<app_id>-*``
  topics; the ``<app_id>*`` consumer groups and transactional ids (exactly-once
  stages) and the ``governor-*`` groups of its range readers.
- **reader** (dashboards, ``governor ask``, ``audit verify``, timelines, backtests): reads
  every Governor topic, with ``governor-*`` throwaway groups. It writes nothing.

Everything is data (:class:`Acl`); :func:`kafka_acls_command` renders the ``kafka-acls.sh``
line and :func:`acl_bindings` the confluent-kafka bindings that create it, so what is printed
is what a test applies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

from streams.settings import Settings
from streams.topics import topic_specs

if TYPE_CHECKING:
    from confluent_kafka.admin import AclBinding

Resource = Literal["topic", "group", "transactional-id", "cluster"]
Pattern = Literal["literal", "prefixed"]
ROLES = ("agent", "worker", "reader")

_WORKER_TOPIC_OPS = ("Read", "Write", "Describe", "Create", "DescribeConfigs")


@dataclass(frozen=True)
class Acl:
    """Allow ``principal`` the ``operations`` on one resource (pattern), for ``role``."""

    role: str
    principal: str
    resource: Resource
    name: str
    pattern: Pattern
    operations: tuple[str, ...]
    why: str

    def as_dict(self) -> dict[str, object]:
        row = asdict(self)
        row["operations"] = list(self.operations)
        return row


def principal(name: str) -> str:
    """``alice`` -> ``User:alice``; a name with a type (``User:...``) is kept."""
    return name if ":" in name else f"User:{name}"


def role_acls(
    settings: Settings, agent: str = "agent", worker: str = "worker", reader: str = "reader"
) -> list[Acl]:
    """Every ACL the three roles need on this deployment's topics (``topic_prefix``)."""
    specs = {spec.suffix: spec.name(settings) for spec in topic_specs(settings)}
    a, w, r = principal(agent), principal(worker), principal(reader)
    acls = [
        Acl("agent", a, "topic", specs["events"], "literal", ("Write", "Describe"),
            "the client emits one StepEvent per step"),
        Acl("agent", a, "topic", specs["control"], "literal", ("Read", "Describe"),
            "the client obeys the worker's signed decisions"),
        Acl("agent", a, "topic", specs["policies"], "literal", ("Read", "Describe"),
            "the client-side checks enforce the worker's signed policy set"),
        Acl("agent", a, "group", "governor-client-", "prefixed", ("Read",),
            "throwaway group ids of the client's consumers (assign only, no commits)"),
    ]  # fmt: skip
    for name in specs.values():
        acls.append(Acl("worker", w, "topic", name, "literal", _WORKER_TOPIC_OPS,
                        "the worker reads, writes and creates every Governor topic"))  # fmt: skip
    acls += [
        Acl("worker", w, "topic", settings.topic("replay."), "prefixed", _WORKER_TOPIC_OPS,
            "governor replay copies ranges to gov.replay.<id> and runs workers on them"),
        Acl("worker", w, "topic", settings.topic(f"{settings.app_id}-"), "prefixed",
            _WORKER_TOPIC_OPS, "the stages' changelogs and the scope stage's repartition topic"),
        Acl("worker", w, "topic", f"{settings.app_id}-", "prefixed", _WORKER_TOPIC_OPS,
            "Faust's own topics (the assignor's leader topic)"),
        Acl("worker", w, "group", settings.app_id, "prefixed", ("Read", "Describe"),
            "the worker's consumer groups (accounting, scope stage, Faust agents, lag)"),
        Acl("worker", w, "group", "governor-", "prefixed", ("Read",),
            "throwaway group ids of the worker's range readers (restore, history)"),
        Acl("worker", w, "transactional-id", f"{settings.app_id}-", "prefixed",
            ("Write", "Describe"), "the exactly-once stages' transactional producers"),
        Acl("worker", w, "cluster", "kafka-cluster", "literal", ("Describe", "DescribeConfigs"),
            "cluster size and broker configuration (replication, min ISR)"),
    ]  # fmt: skip
    for name in specs.values():
        acls.append(Acl("reader", r, "topic", name, "literal", ("Read", "Describe"),
                        "answers, audit verification and timelines read every topic"))  # fmt: skip
    acls.append(Acl("reader", r, "group", "governor-", "prefixed", ("Read",),
                    "throwaway group ids of the range readers (they never commit)"))  # fmt: skip
    return acls


_RESOURCE_FLAG = {"topic": "--topic", "group": "--group", "transactional-id": "--transactional-id"}


def kafka_acls_command(acl: Acl, bootstrap: str, command_config: str = "admin.properties") -> str:
    """The ``kafka-acls.sh`` line that creates ``acl`` (run as a super user)."""
    parts = [
        "kafka-acls.sh",
        f"--bootstrap-server {bootstrap}",
        f"--command-config {command_config}",
        "--add",
        f"--allow-principal {acl.principal}",
        *(f"--operation {op}" for op in acl.operations),
    ]
    if acl.resource == "cluster":
        parts.append("--cluster")
    else:
        parts.append(f"{_RESOURCE_FLAG[acl.resource]} {acl.name}")
    if acl.pattern == "prefixed":
        parts.append("--resource-pattern-type prefixed")
    return " ".join(parts)


def _snake(word: str) -> str:
    """``DescribeConfigs`` -> ``DESCRIBE_CONFIGS`` (the AclOperation names)."""
    out = "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(word))
    return out.upper()


def acl_bindings(acls: list[Acl]) -> list[AclBinding]:
    """confluent-kafka bindings creating exactly ``acls`` (AdminClient.create_acls)."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    types = {
        "topic": ResourceType.TOPIC,
        "group": ResourceType.GROUP,
        "transactional-id": ResourceType.TRANSACTIONAL_ID,
        "cluster": ResourceType.BROKER,
    }
    patterns = {"literal": ResourcePatternType.LITERAL, "prefixed": ResourcePatternType.PREFIXED}
    return [
        AclBinding(
            types[acl.resource],
            acl.name,
            patterns[acl.pattern],
            acl.principal,
            "*",
            AclOperation[_snake(op)],
            AclPermissionType.ALLOW,
        )
        for acl in acls
        for op in acl.operations
    ]


def acls_from_dicts(rows: list[dict[str, object]]) -> list[Acl]:
    """The rows of ``governor topics acls --json`` back as :class:`Acl` (tests, tooling)."""
    out = []
    for row in rows:
        ops = row["operations"]
        if not isinstance(ops, list):
            raise ValueError(f"ACL row {row!r}: operations must be a list")
        out.append(
            Acl(
                role=str(row["role"]),
                principal=str(row["principal"]),
                resource=str(row["resource"]),  # type: ignore[arg-type]
                name=str(row["name"]),
                pattern=str(row["pattern"]),  # type: ignore[arg-type]
                operations=tuple(str(op) for op in ops),
                why=str(row["why"]),
            )
        )
    return out
