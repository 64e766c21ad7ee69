"""Signed decisions for HTTP: the exact signed bytes travel with the signature."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from streams.control import generate_signing_key, session_target
from streams.ingest.control_http import in_force, public_keys, published
from streams.ingest.server import bearer_ok
from streams.publisher import make_decision
from streams.settings import Settings

NOW_US = 1_760_000_000_000_000


def decision(action: str, epoch: int, expires_at_us: int | None = None) -> dict[str, object]:
    return make_decision(
        target=session_target("s1"),
        tenant_id="acme",
        action=action,
        policy_id="p",
        epoch=epoch,
        issued_at_us=NOW_US,
        expires_at_us=expires_at_us,
        parameters={"delay_ms": "500", "a": "é"},
    )


def test_published_carries_bytes_that_verify_with_the_public_key(tmp_path: Path) -> None:
    key = generate_signing_key(tmp_path, "k7")
    out = published(key.sign(decision("THROTTLE", 3)))
    payload = base64.b64decode(out["signed_payload"])
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key.public_b64()))
    public.verify(base64.b64decode(out["signature"]), payload)
    fields = json.loads(payload)
    assert (fields["action"], fields["key_id"], fields["parameters"]) == (
        "THROTTLE",
        "k7",
        {"a": "é", "delay_ms": "500"},
    )
    assert out["decision"]["epoch"] == 3
    assert out["key_id"] == "k7"


def test_in_force_is_the_strongest_unexpired() -> None:
    warn, kill = decision("WARN", 5), decision("KILL", 1, expires_at_us=NOW_US - 1)
    assert in_force([warn, kill], NOW_US) is warn
    assert in_force([warn, decision("KILL", 2)], NOW_US)["action"] == "KILL"  # type: ignore[index]
    assert in_force([kill], NOW_US) is None


def test_public_keys_from_the_setting_or_the_folder(tmp_path: Path) -> None:
    key = generate_signing_key(tmp_path / "keys", "k1")
    assert public_keys(Settings(keys_dir=tmp_path / "keys")) == {"k1": key.public_b64()}
    assert public_keys(Settings(control_public_keys="a:QUJD, b:REVG")) == {"a": "QUJD", "b": "REVG"}


def test_the_bearer_token_check() -> None:
    assert bearer_ok(None, None)
    assert bearer_ok("Bearer s3cret", "s3cret")
    assert bearer_ok("bearer  s3cret ", "s3cret")
    assert not bearer_ok(None, "s3cret")
    assert not bearer_ok("Bearer wrong", "s3cret")
    assert not bearer_ok("Basic s3cret", "s3cret")
