"""Worker throughput against a raw decode-only consumer, over the same pre-filled topic.

    python -m bench.throughput [--events 200000]

Uses the stack of GOVERNOR_BOOTSTRAP (starting the local one if it is not running), fills a fresh
events topic with realistic simulator events, then measures in one run: a raw aiokafka consumer
that only decodes every record, and the Governor worker (decode, fold, aggregates, policies,
transactional checkpoints). Prints events/s for both and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aiokafka import AIOKafkaConsumer
from confluent_kafka import Producer

from bench.common import Stopwatch, bench_stack, realistic_events
from streams.codec import Codecs
from streams.kafka_config import aiokafka_kwargs, client_config
from streams.settings import Settings
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
    consumer = AIOKafkaConsumer(
        settings.topic("events"),
        **aiokafka_kwargs(settings),
        group_id=f"{settings.app_id}-raw",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=5000,
    )
    await consumer.start()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
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
        print(f"worker / raw:                {worker_rate / raw_rate:>10.2f}")


if __name__ == "__main__":
    main()
