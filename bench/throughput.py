"""Worker throughput against a raw decode-only consumer, over the same pre-filled topic.

    python -m bench.throughput [--events 200000] [--stages]

``--stages`` also runs the session stage's steps in this process, without a broker, over the
same events (decode, validate, fold, decide, aggregates, scope items, metrics, summaries,
checkpoint records) and prints each one's cost in µs per event: where the worker's time goes.

Uses the stack of GOVERNOR_BOOTSTRAP (starting the local one if it is not running), fills a fresh
events topic with realistic simulator events, then measures in one run: a raw aiokafka consumer
that only decodes every record, and the Governor worker (decode, fold, aggregates, policies,
transactional checkpoints). Prints events/s for both and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import Producer

import streams.engine as engine_module
from bench.common import Stopwatch, bench_stack, realistic_events
from streams.agents.accounting import SCOPE_CHUNK, AccountingRunner
from streams.codec import Codecs
from streams.engine import Engine, checkpoint_records
from streams.kafka_config import aiokafka_kwargs, client_config
from streams.metrics import worker_metrics
from streams.pipeline.scope import ScopeDelta, SourceMark
from streams.pipeline.validate import IngestBounds, validate_event
from streams.policy_files import load_bundle
from streams.settings import Settings
from streams.topics import admin_client
from streams.worker import WorkerProcess


def fill(settings: Settings, codecs: Codecs, events: list[dict[str, object]]) -> None:
    producer = Producer(
        {
            **client_config(settings),
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    topic = settings.topic("events")
    for event in events:
        producer.produce(topic, codecs.step_event.encode(event), str(event["session_id"]).encode())
        producer.poll(0)
    producer.flush(120)


async def raw_decode(settings: Settings, codecs: Codecs, count: int) -> float:
    # partitions assigned, no group: a group member starved of CPU on a loaded machine misses
    # its heartbeats and stalls in a rejoin, which would make the reference look slow
    consumer = AIOKafkaConsumer(
        **aiokafka_kwargs(settings),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=5000,
    )
    await consumer.start()
    topic = settings.topic("events")
    partitions = admin_client(settings).list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
    await consumer.seek_to_beginning()
    seen = 0
    started = 0.0
    decode = codecs.step_event.decode
    try:
        while seen < count:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                if not started:
                    started = time.perf_counter()
                for record in records:
                    decode(record.value)
                seen += len(records)
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def worker_run(settings: Settings, count: int) -> float:
    """Seconds the worker took from its first batch to its last (it reports both)."""
    with WorkerProcess(settings, settings.state_dir / "logs" / "bench-worker.log") as worker:
        while True:
            view = worker.get_json("/ingest") or {"processed": 0}
            if view["processed"] >= count:
                return float(view["last_batch_at"] - view["first_batch_at"])
            time.sleep(0.5)  # polling often would steal the worker's CPU


@dataclass
class StageClock:
    """Seconds spent per stage; nested stages are subtracted from the one they run in."""

    spent: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    _open: list[list[Any]] = field(default_factory=list)

    def timed(self, stage: str) -> _Timed:
        return _Timed(self, stage)

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            with self.timed(stage):
                return fn(*args, **kwargs)

        return timed_call


class _Timed:
    def __init__(self, clock: StageClock, stage: str) -> None:
        self.clock, self.stage = clock, stage

    def __enter__(self) -> None:
        self.clock._open.append([self.stage, time.thread_time(), 0.0])

    def __exit__(self, *_: object) -> None:
        stage, started, inner = self.clock._open.pop()
        took = time.thread_time() - started
        self.clock.spent[stage] += took - inner
        if self.clock._open:
            self.clock._open[-1][2] += took


@contextlib.contextmanager
def instrumented(clock: StageClock) -> Iterator[None]:
    """The engine's steps timed: fold, decide, aggregates, scope items (restored after)."""
    patches = [
        (engine_module, "fold", "fold"),
        (engine_module, "decide_session", "decide"),
        (engine_module, "decide", "decide"),
        (Engine, "_escalate", "decide"),
        (Engine, "_aggregate", "aggregates"),
        (Engine, "_finish", "aggregates"),
        (Engine, "_scope_items", "scope items"),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, stage in patches:
            setattr(owner, name, clock.wrap(stage, getattr(owner, name)))
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def stage_costs(
    settings: Settings, codecs: Codecs, events: list[dict[str, Any]], checkpoint_every: int
) -> tuple[dict[str, float], float]:
    """The session stage's steps over ``events`` in this process, as the worker runs them
    (batches of 5,000 by partition, a checkpoint every ``checkpoint_every`` events): CPU µs
    per event by stage, and the total. Two passes on fresh engines: the first times the steps
    around the engine; the second times the engine's own steps (fold, decide, ...), whose
    shares split the first pass's engine time (their timers cost more than some steps)."""
    partitions = settings.event_partitions
    records = [
        (
            codecs.step_event.encode(e),
            str(e["session_id"]).encode(),
            int(e["start_time_us"]) // 1000,
            zlib.crc32(str(e["session_id"]).encode()) % partitions,
        )
        for e in events
    ]
    outer = StageClock()
    total = _stage_pass(settings, codecs, records, checkpoint_every, outer, instrument=False)
    inner = StageClock()
    _stage_pass(settings, codecs, records, checkpoint_every, inner, instrument=True)
    engine_s = outer.spent.pop("engine")
    split = {k: v for k, v in inner.spent.items() if k not in outer.spent}
    per_event = {stage: s / len(events) * 1e6 for stage, s in outer.spent.items()}
    split["engine (rest)"] = split.pop("engine")  # the engine's own code, and the timers'
    for stage, s in split.items():
        per_event[stage] = engine_s * s / sum(split.values()) / len(events) * 1e6
    return per_event, total / len(events) * 1e6


def _stage_pass(
    settings: Settings,
    codecs: Codecs,
    records: list[tuple[bytes, bytes, int, int]],
    checkpoint_every: int,
    clock: StageClock,
    instrument: bool,
) -> float:
    bundle = load_bundle(settings.policies_dir)
    engine = Engine(
        bundle.prices,
        bundle.policies,
        idle_timeout_s=settings.session_idle_timeout_s,
        finished_retention_s=settings.finished_retention_s,
        local_scope=False,
    )
    engine.use_slos(bundle.slos)
    metrics = worker_metrics()
    runner: Any = SimpleNamespace(metrics=metrics, _on_commit=[], settings=settings)
    observe = functools.partial(AccountingRunner._observe, runner)
    count_session = functools.partial(AccountingRunner._count_session, runner)
    bounds = IngestBounds.of(settings)
    decode, encode_summary = codecs.step_event.decode, codecs.session_summary.encode
    scope_items: dict[int, list[Any]] = defaultdict(list)
    since_checkpoint = 0
    started = time.thread_time()
    with instrumented(clock) if instrument else contextlib.nullcontext():
        for start in range(0, len(records), 5000):
            batch = records[start : start + 5000]
            by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
            offsets: dict[int, list[int]] = defaultdict(list)
            with clock.timed("decode"):
                decoded = [decode(value) for value, _, _, _ in batch]
            with clock.timed("validate"):
                for offset, (event, (_, key, stamp_ms, partition)) in enumerate(
                    zip(decoded, batch, strict=True), start
                ):
                    if validate_event(event, key, stamp_ms * 1000, bounds) is None:
                        by_partition[partition].append(event)
                        offsets[partition].append(offset)
            for partition, part_events in by_partition.items():
                with clock.timed("engine"):
                    result = engine.process(partition, part_events, offsets[partition])
                with clock.timed("metrics"):
                    observe(result, part_events, time.time())
                    for record in result.summaries:
                        count_session(record)
                with clock.timed("summaries"):
                    for record in result.summaries:
                        encode_summary(record)
                for item in result.scope_items:
                    scope_items[item.source].append(item)
            since_checkpoint += len(batch)
            if since_checkpoint >= checkpoint_every or start + 5000 >= len(records):
                since_checkpoint = 0
                with clock.timed("metrics"):
                    counts, runner._on_commit = runner._on_commit, []
                    for count in counts:
                        count()
                with clock.timed("checkpoint"):
                    for part in engine.partitions.values():
                        checkpoint_records(part)
                    for source, items in scope_items.items():
                        mark = SourceMark(engine.partitions[source].watermark_us, False)
                        for i in range(0, len(items), SCOPE_CHUNK):
                            ScopeDelta(source, mark, tuple(items[i : i + SCOPE_CHUNK])).encode()
                    scope_items.clear()
    return time.thread_time() - started


def print_stage_costs(per_event: dict[str, float], total_us: float) -> None:
    print(f"session stage in-process, CPU µs per event (load {_load()}):")
    order = ["decode", "validate", "fold", "decide", "aggregates", "scope items"]
    order += ["engine (rest)", "metrics", "summaries", "checkpoint"]
    decode = per_event.get("decode", 0.0) or 1.0
    for stage in order + sorted(set(per_event) - set(order)):
        cost = per_event.get(stage, 0.0)
        print(f"  {stage:<14} {cost:>7.2f}  ({cost / decode:4.2f} x decode)")
    print(
        f"  {'total':<14} {total_us:>7.2f}  ({total_us / decode:4.2f} x decode; "
        f"{1e6 / total_us:,.0f} events/s on one core)"
    )


def _load() -> str:
    return " ".join(f"{n:.1f}" for n in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument(
        "--stages",
        action="store_true",
        help="also time the session stage's steps in this process (no broker), µs per event",
    )
    parser.add_argument(
        "--stages-only", action="store_true", help="only the in-process stage costs"
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=40_000,
        help="events between checkpoints in the stage costs (the worker: one a second)",
    )
    args = parser.parse_args()
    if args.stages_only:
        settings = Settings.from_env()
        codecs = Codecs.load(settings.schemas_dir)
        events = realistic_events(args.events)
        print_stage_costs(*stage_costs(settings, codecs, events, args.checkpoint_every))
        return
    with bench_stack() as settings:
        codecs = Codecs.load(settings.schemas_dir)
        clock = Stopwatch()
        events = realistic_events(args.events)
        sessions = len({e["session_id"] for e in events})
        print(
            f"generated {len(events):,} events of {sessions:,} sessions in {clock.elapsed():.1f}s"
        )
        clock = Stopwatch()
        fill(settings, codecs, events)
        print(f"filled {settings.topic('events')} in {clock.elapsed():.1f}s")
        raw_s = asyncio.run(raw_decode(settings, codecs, len(events)))
        worker_s = worker_run(settings, len(events))
        raw_rate, worker_rate = len(events) / raw_s, len(events) / worker_s
        print(f"raw aiokafka consume+decode: {raw_rate:>10,.0f} events/s ({raw_s:.2f}s)")
        print(f"governor worker:             {worker_rate:>10,.0f} events/s ({worker_s:.2f}s)")
        print(f"worker / raw:                {worker_rate / raw_rate:>10.2f}  (load {_load()})")
        if args.stages:
            print_stage_costs(*stage_costs(settings, codecs, events, args.checkpoint_every))


if __name__ == "__main__":
    main()
