"""``governor demo``: the story on a local stack, and a small seeded event stream for tests.

:func:`run_demo` starts the worker, drives a simulated fleet through the real client with its
own checks on (so a denied tool or a step past a session budget is refused before it runs),
waits for the read-models, and prints the answers with the CLI's renderers
(:mod:`streams.cli.render`: the same tables as ``governor ask``, never the commands
themselves). :func:`demo_sessions` is a small, seeded stream of plausible StepEvents for tests.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from streams.kafka_config import client_config
from streams.settings import Settings
from streams.simulator.params import FleetParams
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


#: the demo's fleet: the prompt change half way through the week, and a change large enough
#: for the drift detector to see in ~100 sessions a side (the default fleet's 1.3x more tool
#: calls needs several hundred)
DEMO_CHANGE_AT = 0.5
DEMO_TOOL_CALL_FACTOR = 1.8
#: how long the demo waits for the read-model to hold every session that ended
READ_MODEL_WAIT_S = 45.0


def demo_params(sessions: int, seed: int) -> FleetParams:
    """The simulated fleet of the demo (see :data:`DEMO_CHANGE_AT`)."""
    return FleetParams(
        sessions=sessions,
        seed=seed,
        change_at=DEMO_CHANGE_AT,
        changed_tool_call_factor=DEMO_TOOL_CALL_FACTOR,
    )


@dataclass(frozen=True)
class Kept:
    """What ``governor demo --keep`` leaves running, for the closing lines."""

    worker_url: str
    worker_pid: int
    console_url: str | None
    console_pid: int | None


def run_demo(
    settings: Settings,
    console: Console,
    sessions: int,
    corrupt: int,
    rate: float,
    *,
    keep: bool = False,
    console_port: int = 6070,
) -> Kept | None:
    """The story: a fleet runs through the client, which refuses what the policies forbid; the
    worker enforces and answers. With ``keep`` the worker and a console stay up (returned)."""
    from confluent_kafka import Producer

    from streams.simulator.run import run_simulation

    # the story is told by the tables: not by presidio's language warnings, nor by the
    # clients' log line per WARN (an unpriced model) that would break the progress bar
    # (a filter: the scanner sets that logger's level itself when it loads)
    logging.getLogger("presidio-analyzer").addFilter(_quiet_presidio)
    logging.getLogger("governor.client").setLevel(logging.WARNING)
    worker = WorkerProcess(settings, settings.state_dir / "logs" / "worker.log")
    console.rule("[bold]Governor demo")
    with console.status("starting the worker: accounting, policies, PII scanner, read-model"):
        worker.start()
        _caught_up(worker)
    kept: Kept | None = None
    try:
        params = demo_params(sessions, seed=int(time.time()) % 100_000)
        console.rule("1. a simulated fleet runs through the Governor client")
        console.print(
            "tenants and agents over a simulated week: heavy-tailed sessions, retries and "
            "failures, PII in prompts and tool calls, budget breakers and denied tools, and a "
            f"prompt change of {params.changed_tenant}/{params.changed_agent} half way. The "
            "client checks every step against the signed policies before it runs and obeys "
            "the worker's decisions.",
            highlight=False,
        )
        report, truth = run_simulation(
            settings, console, params, rate=rate,
            truth_path=settings.state_dir / "demo-truth.jsonl", checks=True,
        )  # fmt: skip
        if corrupt:
            producer = Producer(client_config(settings))
            for n in range(corrupt):
                producer.produce(settings.topic("events"), b"not avro at all #%d" % n, b"bad")
            producer.flush(10)
        console.rule("2. what the policies did, and what reached the agents")
        ended = truth.sessions - truth.by_outcome.get("TIMEOUT", 0)
        with console.status("waiting for the worker and its read-model to catch up"):
            _caught_up(worker)
            in_model = _read_model_caught_up(settings, ended)
        _print_enforcement(console, worker)
        killed = truth.by_outcome.get("KILLED", 0)
        console.print(
            f"the agents' clients accepted {report.decisions_accepted:,} signed decisions and "
            f"refused {truth.blocked_tool_calls:,} tool calls before they ran (BLOCKED: denied "
            f"tools and PII); {killed:,} sessions were stopped (KILLED) by a policy, out of "
            f"{truth.budget_breakers:,} budget breakers and {truth.denied_tool_sessions:,} "
            "sessions calling a denied tool: the failure modes below name each policy.",
            highlight=False,
        )
        if in_model < ended:
            console.print(
                f"[yellow]the read-model holds {in_model:,} of the {ended:,} sessions that "
                f"ended (still catching up after {READ_MODEL_WAIT_S:.0f}s)[/]"
            )
        console.rule("3. the operational answers, on demand (governor ask ...)")
        _print_answers(settings, console, worker)
        if keep:
            kept = _keep(settings, worker, console_port)
        _print_next(console, report.emitted, report.delivered, worker.url, kept)
    finally:
        if kept is None:
            with console.status("stopping the worker"):
                worker.stop()
    return kept


def _quiet_presidio(record: logging.LogRecord) -> bool:
    """Drop presidio's warnings about recognizers of other languages (not ours to fix)."""
    return record.levelno > logging.WARNING or "language is not supported" not in (
        record.getMessage()
    )


def _print_answers(settings: Settings, console: Console, worker: WorkerProcess) -> None:
    """The answers a person asks first, rendered as ``governor ask`` renders them."""
    from streams.cli import render
    from streams.query.answers import Answers
    from streams.query.drift import DriftStore, drift_report
    from streams.query.pii import pii_answer
    from streams.query.readmodel import SessionReadModel
    from streams.redis_client import redis_client

    client = redis_client(settings)
    answers = Answers(SessionReadModel(client, settings.redis_key_prefix))
    shown: list[tuple[str, list[Any]]] = []
    latency = worker.get_json("/ask/latency?window=24h") or answers.latency(window="24h")
    shown.append(("governor ask latency --window 24h", render.latency(latency, "24h")))
    outcomes = answers.outcomes(since="8d", idle_timeout_s=settings.session_idle_timeout_s)
    shown.append(("governor ask outcomes --since 8d", render.outcomes(outcomes)))
    shown.append(("governor ask cost", render.cost(answers.cost())))
    top = answers.top_cost(pct=1.0, since="8d")
    shown.append(("governor ask top-cost --since 8d", render.top_cost(top)))
    pii = pii_answer(settings, since="8d", fingerprint=None)
    shown.append(("governor ask pii --since 8d", render.pii(pii)))
    # the simulated prompt change of acme/support-bot: before/after, layer and effect sizes
    drift = drift_report(DriftStore(client, settings.redis_key_prefix), "support-bot",
                         tenant="acme")  # fmt: skip
    shown.append(("governor ask drift --agent support-bot --tenant acme", render.drift(drift)))
    for command, rendered in shown:
        console.print(f"[dim]$ {command}[/]", highlight=False)
        for item in rendered:
            console.print(item, highlight=False)


def _print_next(
    console: Console, emitted: int, delivered: int, worker_url: str, kept: Kept | None
) -> None:
    console.rule("4. next")
    console.print(f"events emitted {emitted:,}, delivered {delivered:,}", highlight=False)
    lines = [
        "governor ask outcomes --since 8d --wide    every failure mode with its cause",
        "governor ask cost --quantiles             p50 / p99 per scope",
        "governor ask pii --since 8d --by destination",
        "governor ask top-cost --since 8d --wide   whole session ids",
        "governor incident timeline --session ID   one session step by step",
        "governor audit verify                     the signed, hash-chained audit trail",
        "governor policy check                     the policies the clients enforce",
    ]
    if kept is not None:
        lines.append(f"the console: {kept.console_url}" if kept.console_url else "")
        lines.append(f"the worker: {kept.worker_url}/metrics, /ask/slo, /healthz")
        lines.append("stop what the demo left running: governor demo --stop")
    else:
        lines.append(
            "keep the stack, the worker and a console up after the demo: governor demo --keep"
        )
    console.print("try next (same shell: the GOVERNOR_* settings of this run):", highlight=False)
    for text in lines:
        if text:
            console.print(f"  {text}", highlight=False, markup=False)


def kept_services(settings: Settings) -> list[Any]:
    """The demo's worker and console as :class:`streams.stack.Service` (pid files, logs)."""
    from streams.stack import Service, run_dir

    logs = settings.state_dir / "logs"
    return [
        Service("demo-worker", "", run_dir(settings) / "demo-worker.pid", logs / "worker.log"),
        Service("demo-console", "", run_dir(settings) / "demo-console.pid", logs / "console.log"),
    ]


def _keep(settings: Settings, worker: WorkerProcess, console_port: int) -> Kept:
    """Leave the worker running and start a console next to it (pid files under the state
    folder: ``governor demo --stop`` ends both)."""
    import sys

    from streams import stack
    from streams.worker import read_port_file

    worker_service, console_service = kept_services(settings)
    assert worker.proc is not None
    stack._write_pid(worker_service.pid_file, worker.proc.pid)
    port_file = console_service.pid_file.with_suffix(".port")
    port_file.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "streams.cli", "console", "--port", str(console_port),
            "--port-file", str(port_file)]  # fmt: skip
    pid = stack._spawn(console_service, argv, Path.cwd())
    deadline = time.monotonic() + 20
    port = None
    while port is None and time.monotonic() < deadline and stack.live_pid(console_service):
        port = read_port_file(port_file)
        time.sleep(0.2)
    url = None if port is None else f"http://127.0.0.1:{port}"
    return Kept(worker.url, worker.proc.pid, url, pid if url else None)


def stop_kept(settings: Settings) -> list[str]:
    """Stop the worker and console ``--keep`` left running; the names of those that ran."""
    from streams import stack

    services = kept_services(settings)
    running = [s.name for s in services if stack.live_pid(s) is not None]
    stack._stop_all(services)
    return running


def _read_model_caught_up(settings: Settings, ended: int) -> int:
    """Wait until the read-model holds the ``ended`` sessions (at most READ_MODEL_WAIT_S);
    how many it holds then."""
    from streams.query.answers import Answers
    from streams.query.readmodel import SessionReadModel
    from streams.redis_client import redis_client

    client = redis_client(settings)
    deadline = time.monotonic() + READ_MODEL_WAIT_S
    held = 0
    while time.monotonic() < deadline:
        held = Answers(SessionReadModel(client, settings.redis_key_prefix)).outcomes("8d")[
            "sessions"
        ]
        if held >= ended:
            break
        time.sleep(0.5)
    return int(held)


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

    from streams.cli import render

    with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    rows = [
        (s.labels["policy"], s.labels["action"], s.value)
        for s in families["governor_decisions"].samples
        if s.name.endswith("_total")
    ]
    for item in render.decisions(rows):
        console.print(item)
    events = sum(s.value for s in families["governor_events"].samples
                 if s.name.endswith("_total"))  # fmt: skip
    dead = sum(s.value for s in families["governor_dlq_records"].samples
               if s.name.endswith("_total"))  # fmt: skip
    console.print(
        f"events accounted: {events:,.0f}; undecodable, sent to the dead-letter topic "
        f"with their reason: {dead:,.0f}",
        highlight=False,
    )
