"""A small, seeded stream of plausible StepEvents for the quick-start demo and tests.

The full fleet simulator (tenants, agents, heavy tails, PII, ground truth) is ``governor
simulate``; this is only enough traffic to show events flowing through the codec and worker.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.table import Table

from streams.kafka_config import client_config
from streams.settings import Settings
from streams.worker import WorkerProcess

MODELS = (("gpt-4o-mini", "openai"), ("claude-sonnet-4", "anthropic"), ("gemini-2.5-flash", "gcp"))
TOOLS = ("search_docs", "lookup_order", "send_email", "run_sql")
CATEGORIES = ("billing", "shipping", "returns", "technical")


def demo_sessions(
    sessions: int, seed: int = 7, start_us: int = 1_764_000_000_000_000
) -> Iterator[dict[str, Any]]:
    """Events of ``sessions`` sessions, each in per-session order with a gap-free ``seq``."""
    rng = random.Random(seed)
    clock = start_us
    for n in range(sessions):
        base = {
            "session_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "tenant_id": f"tenant-{n % 3}",
            "agent_id": f"support-bot-{n % 2}",
            "agent_version": "1.4.0",
            "prompt_version": "p7",
            "model_version": "2025-06",
            "tool_schema_version": "t3",
            "category": rng.choice(CATEGORIES),
        }
        for seq, (kind, duration_us, fields) in enumerate(_session_steps(rng), start=1):
            clock += rng.randint(1_000, 50_000)
            yield {
                **base,
                "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "seq": seq,
                "kind": kind,
                "start_time_us": clock,
                "duration_us": duration_us,
                "status": fields.pop("status", "OK"),
                **fields,
            }


def _session_steps(rng: random.Random) -> Iterator[tuple[str, int, dict[str, Any]]]:
    yield "SESSION_START", 0, {}
    for _ in range(rng.randint(1, 6)):
        model, provider = rng.choice(MODELS)
        yield (
            "LLM_CALL",
            rng.randint(200_000, 4_000_000),
            {
                "operation": "chat",
                "model": model,
                "provider": provider,
                "input_tokens": rng.randint(200, 8000),
                "output_tokens": rng.randint(20, 800),
            },
        )
        if rng.random() < 0.6:
            failed = rng.random() < 0.1
            yield (
                "TOOL_CALL",
                rng.randint(5_000, 900_000),
                {
                    "operation": "execute_tool",
                    "tool_name": rng.choice(TOOLS),
                    "status": "ERROR" if failed else "OK",
                    "error_type": "ToolTimeout" if failed else None,
                },
            )
    yield "EVALUATION", 0, {"evaluation_name": "helpfulness", "evaluation_score": rng.random()}
    yield "SESSION_END", 0, {}


def run_demo(
    settings: Settings, console: Console, sessions: int, corrupt: int, rate: float
) -> None:
    """The story: a fleet runs through the client, the worker enforces and answers."""
    from confluent_kafka import Producer

    from streams import cli
    from streams.simulator.params import FleetParams
    from streams.simulator.run import run_simulation

    worker = WorkerProcess(settings, settings.state_dir / "logs" / "worker.log")
    console.rule("[bold]Governor demo")
    with console.status("starting the worker: accounting, policies, PII scanner, read-model"):
        worker.start()
        _caught_up(worker)
    try:
        console.rule("1. a simulated fleet runs through the Governor client")
        console.print(
            "tenants and agents over a simulated week: heavy-tailed sessions, retries and "
            "failures, PII in prompts and tool calls, a prompt change, budget breakers and "
            "denied tools; the client obeys the worker's signed decisions"
        )
        report, _truth = run_simulation(
            settings, console, FleetParams(sessions=sessions, seed=int(time.time()) % 100_000),
            rate=rate, truth_path=settings.state_dir / "demo-truth.jsonl",
        )  # fmt: skip
        if corrupt:
            producer = Producer(client_config(settings))
            for n in range(corrupt):
                producer.produce(settings.topic("events"), b"not avro at all #%d" % n, b"bad")
            producer.flush(10)
        console.rule("2. what the worker did")
        with console.status("waiting for the worker and its read-model to catch up"):
            _caught_up(worker)
            time.sleep(2)
        _print_enforcement(console, worker)
        console.rule("3. the operational answers, on demand")
        cli.ask_latency(window="24h", as_json=False)
        cli.ask_outcomes(since="8d", as_json=False)
        cli.ask_cost(as_json=False)
        cli.ask_top_cost(pct=1.0, since="8d", as_json=False)
        cli.ask_pii(since="8d", fingerprint=None, as_json=False)
        # the simulated prompt change of acme/support-bot: before/after, layer and effect sizes
        cli.ask_drift(agent="support-bot", tenant="acme", since=None, as_json=False)
        console.print(
            f"[dim]events emitted {report.emitted:,}, delivered {report.delivered:,}; "
            "try: governor ask --help, governor audit verify, curl "
            f"{worker.url}/metrics[/]"
        )
    finally:
        with console.status("stopping the worker"):
            worker.stop()


def _caught_up(worker: WorkerProcess, quiet_s: float = 1.5, timeout_s: float = 120) -> Any:
    """The worker's counts once it owns its partitions and has gone quiet."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        view = worker.get_json("/ingest")
        if view is not None and view.get("ready"):
            view = {k: v for k, v in view.items() if k not in ("last_batch_at", "first_batch_at")}
            if view != last:
                last, since = view, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return view
        time.sleep(0.2)
    return last or {"by_kind": {}, "dead_letters": 0}


def _print_enforcement(console: Console, worker: WorkerProcess) -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    table = Table(title="decisions published (signed, on gov.control, audited)")
    for column in ("policy", "action", "decisions"):
        table.add_column(column)
    for sample in families["governor_decisions"].samples:
        if sample.name.endswith("_total"):
            table.add_row(sample.labels["policy"], sample.labels["action"], f"{sample.value:,.0f}")
    console.print(table)
    events = sum(s.value for s in families["governor_events"].samples
                 if s.name.endswith("_total"))  # fmt: skip
    dead = sum(s.value for s in families["governor_dlq_records"].samples
               if s.name.endswith("_total"))  # fmt: skip
    console.print(
        f"events accounted: {events:,.0f}; undecodable, sent to the dead-letter topic "
        f"with their reason: {dead:,.0f}"
    )
