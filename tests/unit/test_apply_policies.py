"""The worker's one path for putting a bundle in force: every part swaps, only a new policy set
is recorded and audited."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from streams.app import WorkerParts, apply_policies
from streams.policy_files import PolicyBundle, load_bundle

REPO = Path(__file__).resolve().parents[2]
PRICE_TABLE = REPO / "tests" / "fixtures" / "policies" / "prices-table.yaml"


class Runner:
    def __init__(self, bundle: PolicyBundle) -> None:
        self.lock = threading.RLock()
        self.slos = bundle.slos
        self.slo_changes = 0
        self.audits: list[tuple[str, str, str]] = []

    def use_slos(self, slos: Any) -> None:
        assert self.lock._is_owned()  # type: ignore[attr-defined]  # the accounting thread reads them
        self.slos = slos
        self.slo_changes += 1

    def audit_policy_change(self, previous: Any, current: Any, **kw: Any) -> None:
        self.audits.append((previous.digest, current.digest, kw.get("kind", "POLICY_CHANGE")))


def worker(bundle: PolicyBundle) -> Any:
    accepted: list[str] = []
    gauge = SimpleNamespace(value=None)
    return SimpleNamespace(
        engine=SimpleNamespace(policies=bundle.policies, prices=bundle.prices),
        runner=Runner(bundle),
        scope=None,
        pii=SimpleNamespace(policy=bundle.pii, scanner="the first scanner"),
        settings=SimpleNamespace(pii_spacy_model=""),
        metrics=SimpleNamespace(
            policy_version=SimpleNamespace(set=lambda v: setattr(gauge, "value", v))
        ),
        history=SimpleNamespace(accepted=lambda ps: accepted.append(ps.digest)),
        accepted=accepted,
        gauge=gauge,
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    return tmp_path / "policies"


def test_a_price_pii_or_slo_change_swaps_them_without_a_new_policy_version(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = load_bundle(folder)
    parts = worker(first)
    prices = folder / "prices.yaml"
    prices.write_text(PRICE_TABLE.read_text().replace("input: 2.50", "input: 5.00"))
    pii = folder / "pii.yaml"
    pii.write_text(pii.read_text().replace("default: log", "default: allow"))
    slo = folder / "slo.yaml"
    slo.write_text(slo.read_text().replace("objective: 0.99", "objective: 0.999", 1))
    second = load_bundle(folder)
    with caplog.at_level(logging.WARNING, logger="governor.worker"):
        apply_policies(cast(WorkerParts, parts), second)
    assert parts.engine.prices is second.prices
    assert parts.engine.prices.price_micros("gpt-4o", 1_000_000, 0) == 5_000_000
    assert parts.pii.policy is second.pii
    assert parts.pii.scanner == "the first scanner", "same entities: no new scanner"
    assert parts.runner.slos is second.slos
    assert parts.runner.slo_changes == 1
    # the enforcement files did not change: nothing to audit; the history is told again only so
    # the signed bundle clients enforce (gov.policies "current", issue 13) has the new prices
    assert parts.accepted == [first.policies.digest]
    assert parts.runner.audits == []
    # default: allow is a warning, logged when the bundle goes in force
    assert [r.getMessage() for r in caplog.records if "pii.yaml" in r.getMessage()]


def test_a_policy_change_is_recorded_and_audited_and_slos_kept(folder: Path) -> None:
    first = load_bundle(folder)
    parts = worker(first)
    governor = folder / "governor.yaml"
    governor.write_text(
        governor.read_text().replace("version: 1", "version: 2").replace("2.00", "0.50")
    )
    second = load_bundle(folder)
    apply_policies(cast(WorkerParts, parts), second)
    assert parts.engine.policies is second.policies
    assert parts.gauge.value == 2
    assert parts.accepted == [second.policies.digest]
    assert parts.runner.audits == [(first.policies.digest, second.policies.digest, "POLICY_CHANGE")]
    assert parts.runner.slo_changes == 0, "unchanged SLOs keep their fallback tracker"


def test_a_new_entity_list_gets_a_new_scanner(folder: Path) -> None:
    first = load_bundle(folder)
    parts = worker(first)
    pii = folder / "pii.yaml"
    pii.write_text(pii.read_text().replace(", IP_ADDRESS, SECRET]", ", SECRET]"))
    second = load_bundle(folder)
    apply_policies(cast(WorkerParts, parts), second)
    assert parts.pii.policy is second.pii
    assert list(parts.pii.scanner.entities) == list(second.pii.entities)
    assert "IP_ADDRESS" not in parts.pii.scanner.entities


def test_a_worker_with_a_broken_folder_and_no_last_good_copy_does_not_start(
    folder: Path, tmp_path: Path
) -> None:
    from streams.app import build_app
    from streams.settings import Settings

    (folder / "slo.yaml").write_text("version: 1\nslos: [{name: latency, objective: .inf}]\n")
    settings = Settings().replace(policies_dir=folder, state_dir=tmp_path / "state")
    with pytest.raises(SystemExit) as stopped:
        build_app(settings)
    message = str(stopped.value.code)
    assert message.startswith("policy files refused, the worker cannot start:\n")
    assert f"{folder / 'slo.yaml'}:2: slos.0.objective: Input should be a finite number" in message
    assert message.endswith("policies-last-good: no last good copy to fall back on")
