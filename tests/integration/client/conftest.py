"""Fixtures for client tests: a signing key, a real decision publisher, Governors to close."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.client import Governor
from streams.control import KeyRing, SigningKey, generate_signing_key
from streams.publisher import DecisionPublisher, make_decision
from streams.settings import Settings

GovernorFactory = Callable[..., Governor]


@pytest.fixture
def signing_key(tmp_path: Path) -> SigningKey:
    return generate_signing_key(tmp_path / "keys", "k1")


@pytest.fixture
def keyring(signing_key: SigningKey, tmp_path: Path) -> KeyRing:
    return KeyRing.from_dir(tmp_path / "keys")


@pytest.fixture
def publisher(topics: Settings, signing_key: SigningKey) -> Iterator[DecisionPublisher]:
    pub = DecisionPublisher(topics, signing_key)
    yield pub
    pub.close()


@pytest.fixture
def governor(topics: Settings, keyring: KeyRing) -> Iterator[GovernorFactory]:
    """Build Governors on the test's topics; all are closed at the end of the test."""
    made: list[Governor] = []

    def make(tenant: str = "acme", agent: str = "support-bot", **kwargs: Any) -> Governor:
        kwargs.setdefault("public_keys", keyring)
        gov = Governor(tenant=tenant, agent=agent, agent_version="1.0", settings=topics, **kwargs)
        made.append(gov)
        return gov

    yield make
    for gov in made:
        gov.close()


def decide(target: str, action: str, epoch: int = 1, **fields: Any) -> dict[str, Any]:
    fields.setdefault("tenant_id", "acme")
    fields.setdefault("policy_id", "test-policy")
    fields.setdefault("issued_at_us", time.time_ns() // 1000)
    return make_decision(target=target, action=action, epoch=epoch, **fields)


def wait_until(predicate: Callable[[], object], timeout_s: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")
