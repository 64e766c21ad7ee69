"""The control protocol: signatures, deterministic ids, and the client's decision book."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streams.control import (
    DecisionBook,
    DropReason,
    KeyRing,
    SigningKey,
    agent_target,
    decision_id,
    generate_signing_key,
    load_signing_key,
    session_target,
    tenant_target,
)
from streams.publisher import make_decision

NOW = 1_764_000_000_000_000


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return generate_signing_key(tmp_path / "keys", "k1")


@pytest.fixture
def book(key: SigningKey, tmp_path: Path) -> DecisionBook:
    return DecisionBook("acme", KeyRing.from_dir(tmp_path / "keys"))


def decision(key: SigningKey, **changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "target": session_target("s-1"),
        "tenant_id": "acme",
        "action": "KILL",
        "policy_id": "session-budget",
        "epoch": 1,
        "issued_at_us": NOW,
        "reason": "over budget",
    }
    fields.update(changes)
    return key.sign(make_decision(**fields))


def test_decision_ids_are_deterministic_per_policy_target_and_epoch() -> None:
    assert decision_id("p", "session:a", 1) == decision_id("p", "session:a", 1)
    variants = [
        ("p", "session:a", 1),
        ("p", "session:a", 2),
        ("q", "session:a", 1),
        ("p", "session:b", 1),
    ]
    assert len({decision_id(*v) for v in variants}) == 4


def test_keys_round_trip_through_files(key: SigningKey, tmp_path: Path) -> None:
    loaded = load_signing_key(tmp_path / "keys")
    assert loaded.key_id == "k1"
    assert loaded.public_b64() == key.public_b64()
    assert (tmp_path / "keys" / "k1.key").stat().st_mode & 0o777 == 0o600
    ring = KeyRing.parse(f"k1:{key.public_b64()}")
    assert ring.verify(decision(key)) is None


def test_a_valid_decision_is_accepted_and_in_force(key: SigningKey, book: DecisionBook) -> None:
    assert book.offer(decision(key), NOW) is None
    effective = book.effective([session_target("s-1"), agent_target("acme", "a")], NOW)
    assert effective is not None
    assert effective["action"] == "KILL"
    assert book.accepted == 1


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda d: {**d, "signature": b""}, DropReason.UNSIGNED),
        (lambda d: {**d, "action": "ALLOW"}, DropReason.BAD_SIGNATURE),
        (lambda d: {**d, "parameters": {"delay_ms": "1"}}, DropReason.BAD_SIGNATURE),
        (lambda d: {**d, "key_id": "k-unknown"}, DropReason.UNKNOWN_KEY),
    ],
)
def test_forged_decisions_are_dropped_and_counted(
    key: SigningKey, book: DecisionBook, tamper: Any, reason: DropReason
) -> None:
    assert book.offer(tamper(decision(key)), NOW) is reason
    assert book.drops[reason.value] == 1
    assert book.effective([session_target("s-1")], NOW) is None


def test_a_decision_signed_by_another_key_is_dropped(book: DecisionBook, tmp_path: Path) -> None:
    stranger = generate_signing_key(tmp_path / "other", "k1")  # same id, other key
    assert book.offer(decision(stranger), NOW) is DropReason.BAD_SIGNATURE


def test_expired_other_tenant_and_older_epoch_are_dropped(
    key: SigningKey, book: DecisionBook
) -> None:
    assert book.offer(decision(key, expires_at_us=NOW - 1), NOW) is DropReason.EXPIRED
    assert book.offer(decision(key, tenant_id="globex"), NOW) is DropReason.OTHER_TENANT
    assert book.offer(decision(key, epoch=5, action="THROTTLE"), NOW) is None
    assert book.offer(decision(key, epoch=4), NOW) is DropReason.STALE_EPOCH
    assert book.offer(decision(key, epoch=5, action="THROTTLE"), NOW) is DropReason.DUPLICATE
    assert dict(book.drops) == {"expired": 1, "other_tenant": 1, "stale_epoch": 1, "duplicate": 1}
    in_force = book.effective([session_target("s-1")], NOW)
    assert in_force is not None
    assert in_force["action"] == "THROTTLE"


def test_resume_clears_and_the_strongest_target_wins(key: SigningKey, book: DecisionBook) -> None:
    targets = [session_target("s-1"), agent_target("acme", "bot"), tenant_target("acme")]
    book.offer(decision(key, target=agent_target("acme", "bot"), action="PAUSE"), NOW)
    book.offer(decision(key, target=tenant_target("acme"), action="WARN"), NOW)
    in_force = book.effective(targets, NOW)
    assert in_force is not None
    assert in_force["action"] == "PAUSE"
    book.offer(decision(key, target=agent_target("acme", "bot"), action="RESUME", epoch=2), NOW)
    in_force = book.effective(targets, NOW)
    assert in_force is not None
    assert in_force["action"] == "WARN"


def test_a_decision_stops_applying_when_it_expires(key: SigningKey, book: DecisionBook) -> None:
    book.offer(decision(key, action="THROTTLE", expires_at_us=NOW + 10), NOW)
    assert book.effective([session_target("s-1")], NOW + 9) is not None
    assert book.effective([session_target("s-1")], NOW + 10) is None
