"""Redis off the critical path, on the real broker: the read-model, the drift samples and the PII
ledger come back from gov.sessions / gov.pii after Redis lost them — by themselves in a running
worker, and with `governor readmodel rebuild` — giving exactly the answers they gave before.

Each test runs its own redis-server (it is flushed; the shared one is never touched)."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from typer.testing import CliRunner

from streams.cli import app as cli
from streams.codec import Codecs
from streams.query.answers import Answers
from streams.query.drift import DriftStore, drift_report
from streams.query.readmodel import SessionReadModel
from streams.query.rebuild import BoundedReader
from streams.settings import Settings
from streams.simulator.params import FleetParams
from streams.simulator.run import run_simulation
from streams.simulator.truth import load_truth
from streams.worker import WorkerProcess
from tests.kafka_helpers import ask, close_silent_sessions, consume, produce
from tests.private_redis import PrivateRedis
from tests.summaries import HOUR_US, T0, finding, summary

REPO = Path(__file__).resolve().parents[2]


def normal(value: Any) -> Any:
    """An answer with floats to 9 significant digits (sums of float scores depend on the order
    they were added in) and rows whose order is a tie's made canonical."""
    if isinstance(value, float):
        return value if not math.isfinite(value) or value == 0 else float(f"{value:.9g}")
    if isinstance(value, dict):
        return {k: normal(v) for k, v in value.items() if k not in ("since_us",)}
    if isinstance(value, list):
        items = [normal(v) for v in value]
        if items and all(isinstance(v, dict) for v in items):
            return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
        return items
    return value


def rebuild_cli(settings: Settings) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["readmodel", "rebuild", "--json"], env=settings.to_env())
    assert result.exit_code == 0, result.output
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def records_on(settings: Settings, suffix: str) -> int:
    with BoundedReader(settings, settings.topic(suffix)) as reader:
        return sum(len(chunk) for chunk in reader.chunks())


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


# --- with summaries produced directly: exact counts -------------------------------------------


def test_readmodel_rebuild_restores_the_same_read_model_and_ledger(
    topics: Settings, tmp_path: Path
) -> None:
    with PrivateRedis(tmp_path / "redis") as server:
        settings = topics.replace(redis_url=server.url)
        codecs = Codecs.load(settings.schemas_dir)
        summaries = [
            summary(n, prompt_version="p1" if n < 60 else "p2", status="ERROR" if n % 9 else "OK",
                    error_type="Timeout" if n % 9 else None)
            for n in range(120)
        ]  # fmt: skip
        summaries[5]["evaluations"] = {"helpfulness": math.nan, "accuracy": 0.4}
        findings = [finding(n, "KILL" if n % 4 == 0 else "LOG") for n in range(30)]
        alert: dict[str, Any] = {
            "alert_id": "drift:acme/support:unversioned:x", "kind": "DRIFT", "state": "FIRING",
            "severity": "TICKET", "summary": "drift", "event_time_us": T0,
        }  # fmt: skip
        records = [(s["session_id"].encode(), codecs.session_summary.encode(s)) for s in summaries]
        records.append(records[0])  # a redelivery
        produce(settings.bootstrap, settings.topic("sessions"), records)
        produce(
            settings.bootstrap,
            settings.topic("pii"),
            [(f["session_id"].encode(), codecs.pii_finding.encode(f)) for f in findings],
        )
        produce(
            settings.bootstrap,
            settings.topic("alerts"),
            [(alert["alert_id"].encode(), codecs.alert.encode(alert))],
        )

        first = rebuild_cli(settings)
        model, ledger = first["read_model"], first["pii_ledger"]
        assert (model["records"], model["applied"], model["dropped_scores"]) == (121, 120, 1)
        assert model["alert_states"] == 1
        assert (ledger["records"], ledger["applied"]) == (30, 30)
        client = server.client()
        before = answers(settings, client)
        assert before["outcomes"]["sessions"] == 120
        assert before["pii"]["total"] == 30
        assert before["drift_alerts"] == {alert["alert_id"]: "FIRING"}
        keys = sorted(client.keys("*"))

        again = rebuild_cli(settings)  # over a complete read-model: nothing new
        assert again["read_model"]["applied"] == 0
        assert again["pii_ledger"]["applied"] == 0
        client.flushall()
        assert answers(settings, client)["outcomes"]["sessions"] == 0
        rebuild_cli(settings)
        assert answers(settings, client) == before
        assert sorted(client.keys("*")) == keys
        assert records_on(settings, "alerts") == 1  # a rebuild sends no alert


def answers(settings: Settings, client: redis.Redis) -> dict[str, Any]:
    model = SessionReadModel(client, settings.redis_key_prefix)
    a = Answers(model, clock_us=T0 + 2 * HOUR_US)
    store = DriftStore(client, settings.redis_key_prefix)
    answer: dict[str, Any] = normal({
        "outcomes": a.outcomes("30d"),
        "top": a.top_cost(10, "30d"),
        "quality": a.quality(0.7, "30d"),
        "latency": a.latency("30d"),
        "drift": drift_report(store, "support", tenant="acme"),
        "drift_alerts": store.alerts(),
        "pii": _pii(settings),
    })  # fmt: skip
    return answer


def _pii(settings: Settings) -> Any:
    from streams.query.pii import pii_answer

    return pii_answer(settings, since="3650d")


def test_readmodel_rebuild_says_in_one_line_what_it_cannot_reach(topics: Settings) -> None:
    for changes, word in (
        ({"redis_url": "redis://127.0.0.1:1/0"}, "Redis"),
        ({"bootstrap": "127.0.0.1:1"}, "Kafka"),
    ):
        result = CliRunner().invoke(
            cli, ["readmodel", "rebuild"], env=topics.replace(**changes).to_env()
        )
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1, result.output
        assert lines[0].startswith("error:")
        assert f"{word} at" in lines[0]
        assert "Traceback" not in result.output


# --- a running worker: the agents notice Redis came back empty ---------------------------------


def ask_all(settings: Settings, agent: str, tenant: str) -> dict[str, Any]:
    latency = ask(settings, "latency", "--window", "30d")
    latency.pop("step_ms_by_kind", None)  # the worker's own state, not the read-model's
    answer: dict[str, Any] = normal({
        "outcomes": ask(settings, "outcomes", "--since", "30d"),
        "cost": ask(settings, "cost"),
        "top": ask(settings, "top-cost", "--pct", "10", "--since", "30d"),
        "quality": ask(settings, "quality", "--since", "30d"),
        "latency": latency,
        "drift": ask(settings, "drift", "--agent", agent, "--tenant", tenant),
        "pii": ask(settings, "pii", "--since", "30d"),
    })  # fmt: skip
    return answer


def test_a_worker_rebuilds_what_redis_lost_and_the_cli_rebuilds_the_same(
    topics: Settings, tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    with PrivateRedis(tmp_path / "redis") as server:
        settings = topics.replace(
            redis_url=server.url, policies_dir=policies, keys_dir=tmp_path / "keys"
        )
        log = tmp_path / "worker.log"
        truth_path = tmp_path / "truth.jsonl"
        client = server.client()
        with WorkerProcess(settings, log):
            run_simulation(
                settings,
                Console(quiet=True),
                FleetParams(sessions=200, seed=11, concurrency=8),
                rate=0,
                truth_path=truth_path,
            )
            truth = load_truth(truth_path).sessions
            close_silent_sessions(
                settings, max(int(s["last_event_time_us"]) for s in truth) + 3_600_000_000
            )
            wait_for(
                "the read-model did not catch up",
                lambda: ask(settings, "outcomes", "--since", "30d")["sessions"] == len(truth),
            )
            # the PII agent may still be writing findings when the read-model has caught up:
            # the ledger and the topic must agree, counted again on every try
            wait_for(
                "the PII ledger did not catch up",
                lambda: (
                    ask(settings, "pii", "--since", "30d")["total"] == records_on(settings, "pii")
                ),
            )
            findings = records_on(settings, "pii")
            assert findings > 0
            agent, tenant = truth[0]["agent_id"], truth[0]["tenant_id"]
            # the answers before the loss, once they stand still (the agents may still be
            # writing the last of the fleet when the counts first match)
            before = ask_all(settings, agent, tenant)
            deadline = time.monotonic() + 60
            while (latest := ask_all(settings, agent, tenant)) != before:
                assert time.monotonic() < deadline, "the answers did not settle"
                before = latest
                time.sleep(1)
            assert before["outcomes"]["sessions"] == len(truth)

            started = time.monotonic()
            client.flushall()  # Redis lost everything
            assert ask(settings, "outcomes", "--since", "30d")["sessions"] == 0
            # a summary delivered again: the agent finds the marker gone and rebuilds first
            [again] = consume(settings.bootstrap, settings.topic("sessions"), 1)
            produce(
                settings.bootstrap,
                settings.topic("sessions"),
                [(again.key() or b"", again.value() or b"")],
            )
            wait_for(
                "the worker did not rebuild the read-model and the ledger",
                lambda: ask_all(settings, agent, tenant) == before,
            )
            automatic_s = time.monotonic() - started
            text = log.read_text(errors="replace")
            assert "read-model rebuilt from" in text
            assert "PII ledger rebuilt from" in text

            client.flushall()
            started = time.monotonic()
            result = rebuild_cli(settings)
            manual_s = time.monotonic() - started
            assert result["read_model"]["records"] == records_on(settings, "sessions")
            # every record on the topic when it ran (the PII stage may have added findings since
            # they were first counted: it scans behind the accounting)
            assert result["pii_ledger"]["records"] == records_on(settings, "pii") >= findings
            assert ask_all(settings, agent, tenant) == before
            print(
                f"automatic rebuild {automatic_s:.1f}s, governor readmodel rebuild {manual_s:.1f}s"
            )
