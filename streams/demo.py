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
from rich.progress import Progress
from rich.table import Table

from streams.codec import Codecs
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


def run_demo(settings: Settings, console: Console, sessions: int, corrupt: int) -> None:
    """Send sessions and corrupt payloads; show what the worker made of them."""
    from confluent_kafka import Producer

    codecs = Codecs.load(settings.schemas_dir)
    events = list(demo_sessions(sessions, start_us=int(time.time() * 1e6)))
    worker = WorkerProcess(settings, settings.state_dir / "logs" / "worker.log")
    console.rule("[bold]Governor demo")
    with console.status("starting the worker and catching up with earlier events"):
        worker.start()
        before = _caught_up(worker)
    try:
        producer = Producer(
            {"bootstrap.servers": settings.bootstrap, "acks": "all", "enable.idempotence": True}
        )
        topic = settings.topic("events")
        with Progress(console=console) as progress:
            task = progress.add_task("producing StepEvents", total=len(events) + corrupt)
            for event in events:
                producer.produce(topic, codecs.step_event.encode(event), event["session_id"])
                producer.poll(0)
                progress.advance(task)
            for n in range(corrupt):
                producer.produce(topic, b"not avro at all #%d" % n, b"corrupt-%d" % n)
                progress.advance(task)
            producer.flush(30)
            expected = len(events) + corrupt
            wait = progress.add_task("worker consuming", total=expected)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                seen = _ingested(worker.get_json("/ingest"), before)
                progress.update(wait, completed=seen)
                if seen >= expected:
                    break
                time.sleep(0.2)
        after = worker.get_json("/ingest")
    finally:
        worker.stop()
    _print_counts(console, before, after, expected)


def _caught_up(worker: WorkerProcess, quiet_s: float = 1.5, timeout_s: float = 120) -> Any:
    """The worker's counts once it owns its partitions and has gone quiet (earlier runs' events
    are consumed first), so this run's events can be told apart."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        view = worker.get_json("/ingest")
        if view is not None and view.get("ready"):
            if view != last:
                last, since = view, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return view
        time.sleep(0.2)
    return last or {"by_kind": {}, "dead_letters": 0}


def _ingested(now: Any, before: dict[str, Any]) -> int:
    """Records the worker handled (decoded or dead-lettered) since ``before``."""

    def total(view: dict[str, Any]) -> int:
        return sum(int(n) for n in view["by_kind"].values()) + int(view["dead_letters"])

    return 0 if now is None else total(now) - total(before)


def _print_counts(console: Console, before: dict[str, Any], after: Any, expected: int) -> None:
    if after is None:
        console.print("[red]the worker did not answer[/]")
        return
    table = Table(title="events decoded by the worker in this run, by kind")
    table.add_column("kind")
    table.add_column("events", justify="right")
    for kind, total in sorted(after["by_kind"].items()):
        table.add_row(kind, f"{int(total - before['by_kind'].get(kind, 0)):,}")
    dead = int(after["dead_letters"] - before["dead_letters"])
    table.add_row("[red]dead-lettered[/]", f"{dead:,}")
    console.print(table)
    seen = _ingested(after, before)
    verdict = "[green]all accounted for[/]" if seen == expected else "[red]missing events[/]"
    console.print(f"sent {expected:,}, worker saw {int(seen):,}: {verdict}")
