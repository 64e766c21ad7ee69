"""The control protocol shared by the worker (which signs) and the client (which obeys).

A Decision is signed with Ed25519 over a canonical JSON of its fields (every field but
``signature``; see :data:`SIGNED_FIELDS`). Only the worker holds the private key; clients trust
the public keys of a key ring. :class:`DecisionBook` is the pure state a client keeps: the latest
accepted decision per target, with every refused decision counted by reason.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

#: uuid5 namespace of deterministic decision ids
DECISION_NAMESPACE = uuid.UUID("6f1c1e0a-4d0b-5a8e-9c39-2f1d7f6b9a11")

SIGNED_FIELDS = (
    "decision_id",
    "target",
    "tenant_id",
    "action",
    "reason",
    "policy_id",
    "policy_version",
    "epoch",
    "issued_at_us",
    "expires_at_us",
    "parameters",
    "trigger_event_id",
    "key_id",
)

#: how strongly an action restricts the agent; the strongest active decision wins
SEVERITY = {"UNKNOWN": 0, "ALLOW": 0, "RESUME": 0, "WARN": 1, "THROTTLE": 2, "PAUSE": 3, "KILL": 4}


def session_target(session_id: str) -> str:
    return f"session:{session_id}"


def agent_target(tenant_id: str, agent_id: str) -> str:
    # agent ids repeat across tenants (every tenant may run a "support-bot"): the tenant is part
    # of the target, or one tenant's throttle would count as another's
    return f"agent:{tenant_id}/{agent_id}"


def tenant_target(tenant_id: str) -> str:
    return f"tenant:{tenant_id}"


#: a decision's epoch is ``event time (µs) * EPOCH_SLOTS + slot``: the slot orders the decisions
#: one event causes; the engine uses slots 0..ENGINE_EPOCH_SLOTS-1, PII kills the last one
EPOCH_SLOTS = 32
ENGINE_EPOCH_SLOTS = EPOCH_SLOTS - 1
PII_EPOCH_SLOT = EPOCH_SLOTS - 1


def decision_id(policy_id: str, target: str, epoch: int) -> str:
    """Deterministic: replaying the same events yields the same ids, so clients skip repeats."""
    return str(uuid.uuid5(DECISION_NAMESPACE, f"{policy_id}|{target}|{epoch}"))


def decision_redis_key(key_prefix: str, target: str) -> str:
    """Redis hash of the latest decision for ``target``: ``epoch`` and ``payload`` (Avro)."""
    return f"{key_prefix}decision:{target}"


def signing_payload(decision: Mapping[str, Any]) -> bytes:
    fields = {name: decision.get(name) for name in SIGNED_FIELDS}
    fields["parameters"] = dict(sorted((decision.get("parameters") or {}).items()))
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


# --- keys ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    private_key: Ed25519PrivateKey

    def sign(self, decision: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``decision`` carrying this key's id and signature."""
        signed = {**decision, "key_id": self.key_id}
        signed["signature"] = self.private_key.sign(signing_payload(signed))
        return signed

    def public_b64(self) -> str:
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode()


def generate_signing_key(keys_dir: Path, key_id: str | None = None) -> SigningKey:
    """Write ``<key_id>.key`` (PKCS#8 PEM, mode 0600) and ``<key_id>.pub`` (base64 raw key)."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    key = SigningKey(key_id or f"k{uuid.uuid4().hex[:8]}", Ed25519PrivateKey.generate())
    private = keys_dir / f"{key.key_id}.key"
    private.write_bytes(
        key.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    (keys_dir / f"{key.key_id}.pub").write_text(key.public_b64() + "\n")
    return key


def load_signing_key(keys_dir: Path) -> SigningKey:
    """The newest private key in ``keys_dir``."""
    candidates = sorted(keys_dir.glob("*.key"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"no signing key (*.key) in {keys_dir}")
    path = candidates[-1]
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return SigningKey(path.stem, private)


def ensure_signing_key(keys_dir: Path) -> SigningKey:
    try:
        return load_signing_key(keys_dir)
    except FileNotFoundError:
        return generate_signing_key(keys_dir)


class KeyRing:
    """Public keys a client trusts, by key id."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self._keys = dict(keys)

    @classmethod
    def from_b64(cls, keys: Mapping[str, str]) -> KeyRing:
        return cls(
            {
                kid: Ed25519PublicKey.from_public_bytes(base64.b64decode(b))
                for kid, b in keys.items()
            }
        )

    @classmethod
    def from_dir(cls, keys_dir: Path) -> KeyRing:
        return cls.from_b64({p.stem: p.read_text().strip() for p in sorted(keys_dir.glob("*.pub"))})

    @classmethod
    def parse(cls, spec: str) -> KeyRing:
        """``kid1:base64,kid2:base64`` as in GOVERNOR_CONTROL_PUBLIC_KEYS."""
        pairs = (item.split(":", 1) for item in spec.split(",") if item.strip())
        return cls.from_b64({kid.strip(): b64.strip() for kid, b64 in pairs})

    def __len__(self) -> int:
        return len(self._keys)

    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, decision: Mapping[str, Any]) -> DropReason | None:
        return self.verify_payload(
            decision.get("key_id"), decision.get("signature"), signing_payload(decision)
        )

    def verify_payload(
        self, key_id: str | None, signature: bytes | None, payload: bytes
    ) -> DropReason | None:
        """Why ``signature`` over ``payload`` is refused, or None when a trusted key made it
        (decisions, and the policy sets on gov.policies)."""
        if not signature:
            return DropReason.UNSIGNED
        key = self._keys.get(key_id or "")
        if key is None:
            return DropReason.UNKNOWN_KEY
        try:
            key.verify(signature, payload)
        except InvalidSignature:
            return DropReason.BAD_SIGNATURE
        return None


# --- what a client keeps -------------------------------------------------------------------


class DropReason(StrEnum):
    UNSIGNED = "unsigned"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    STALE_EPOCH = "stale_epoch"
    DUPLICATE = "duplicate"
    OTHER_TENANT = "other_tenant"
    UNDECODABLE = "undecodable"


class DecisionBook:
    """The latest accepted decision per target; thread-safe, no I/O."""

    def __init__(self, tenant_id: str, keyring: KeyRing) -> None:
        self.tenant_id = tenant_id
        self.keyring = keyring
        self.drops: Counter[str] = Counter()
        self.accepted = 0
        self._latest: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def offer(self, decision: Mapping[str, Any], now_us: int) -> DropReason | None:
        """Accept ``decision`` or say why it is refused (and count the refusal)."""
        reason = self._judge(decision, now_us)
        with self._lock:
            if reason is None:
                current = self._latest.get(decision["target"])
                if current is not None and decision["epoch"] <= current["epoch"]:
                    same = decision["decision_id"] == current["decision_id"]
                    reason = DropReason.DUPLICATE if same else DropReason.STALE_EPOCH
                else:
                    self._latest[decision["target"]] = dict(decision)
                    self.accepted += 1
            if reason is not None:
                self.drops[reason.value] += 1
        return reason

    def count_drop(self, reason: DropReason) -> None:
        with self._lock:
            self.drops[reason.value] += 1

    def _judge(self, decision: Mapping[str, Any], now_us: int) -> DropReason | None:
        reason = self.keyring.verify(decision)
        if reason is not None:
            return reason
        if decision.get("tenant_id") != self.tenant_id:
            return DropReason.OTHER_TENANT
        expires = decision.get("expires_at_us")
        if expires is not None and expires <= now_us:
            return DropReason.EXPIRED
        return None

    def effective(self, targets: Iterable[str], now_us: int) -> dict[str, Any] | None:
        """The strongest unexpired restricting decision among ``targets``, if any."""
        best: dict[str, Any] | None = None
        with self._lock:
            for target in targets:
                decision = self._latest.get(target)
                if decision is None or SEVERITY[decision["action"]] == 0:
                    continue
                expires = decision.get("expires_at_us")
                if expires is not None and expires <= now_us:
                    continue
                if best is None or SEVERITY[decision["action"]] > SEVERITY[best["action"]]:
                    best = decision
        return best

    def latest(self, target: str) -> dict[str, Any] | None:
        with self._lock:
            return self._latest.get(target)


# --- what a client reports of acting on a decision -----------------------------------------

#: StepEvent attributes naming the decision(s) a session applied since its previous event
ACTED_DECISION_ID = "governor.decision_id"
ACTED_ACTION = "governor.action"
ACTED_AT_US = "governor.acted_at_us"
#: how long the session waited (THROTTLE slept, PAUSE blocked); absent for WARN and KILL
ACTED_WAITED_US = "governor.waited_us"


@dataclass(frozen=True)
class ActedOn:
    """A session applied a decision: KILL raised, THROTTLE slept, PAUSE blocked, WARN called."""

    decision_id: str
    action: str
    acted_at_us: int
    waited_us: int | None = None


def acted_attributes(reports: Iterable[ActedOn]) -> dict[str, str]:
    """The attributes that carry ``reports`` on one event.

    Nearly always one report; when a session applied several decisions without emitting in
    between (a PAUSE ended by a KILL), the values are comma-separated lists in the same order,
    so none is lost (decision ids, actions and numbers never contain commas).
    """
    reports = list(reports)
    if not reports:
        return {}
    attributes = {
        ACTED_DECISION_ID: ",".join(r.decision_id for r in reports),
        ACTED_ACTION: ",".join(r.action for r in reports),
        ACTED_AT_US: ",".join(str(r.acted_at_us) for r in reports),
    }
    if any(r.waited_us is not None for r in reports):
        attributes[ACTED_WAITED_US] = ",".join(
            "" if r.waited_us is None else str(r.waited_us) for r in reports
        )
    return attributes


def acted_reports(attributes: Mapping[str, str] | None) -> list[ActedOn]:
    """The reports an event's attributes carry (none when it carries none or they are garbled:
    an attribute map is free-form, so a malformed report is ignored rather than fatal)."""
    attributes = attributes or {}
    if ACTED_DECISION_ID not in attributes:
        return []
    ids = attributes[ACTED_DECISION_ID].split(",")
    actions = attributes.get(ACTED_ACTION, "").split(",")
    times = attributes.get(ACTED_AT_US, "").split(",")
    waits = attributes.get(ACTED_WAITED_US, ",".join("" for _ in ids)).split(",")
    if not len(ids) == len(actions) == len(times) == len(waits):
        return []
    try:
        return [
            ActedOn(decision_id, action, int(at), int(waited) if waited else None)
            for decision_id, action, at, waited in zip(ids, actions, times, waits, strict=True)
        ]
    except ValueError:
        return []
