"""Kill latency: from a budget-breaking event to the client holding the KILL, under load.

    python -m bench.kill_latency [--kills 200] [--load 5000] [--loaders 2]

Uses the stack of GOVERNOR_BOOTSTRAP (starting the local one if needed) and a worker of its own.
While a background fleet sends ``--load`` events/s, one agent breaks its session budget
``--kills`` times; each time the clock runs from emitting the breaking LLM call to the client's
control subscriber accepting the signed KILL. The raw Kafka produce-to-consume round trip is
measured in the same run, under the same load, for comparison. The background fleet runs in
``--loaders`` processes of its own (as other agents would): a load thread in this process
would make the measuring client wait for the GIL, which no real agent does.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from bench.common import bench_stack, percentile
from streams.client import Governor
from streams.codec import Codecs
from streams.control import session_target
from streams.kafka_config import client_config
from streams.settings import Settings
from streams.topics import admin_client, create_topics, new_topic
from streams.worker import WorkerProcess

POLICY = """version: 1
policies:
  - id: bench-session-budget
    kind: budget
    scope: session
    limit_usd: 0.01
    warn_at: null
    action: kill
    match: {agents: ["kill-bench"]}
"""


def _load_process(settings: Settings, rate: float, stop: Any, sent: Any) -> None:
    sent.value = background_load(settings, rate, stop)


def background_load(settings: Settings, rate: float, stop: Any) -> int:
    """Sessions of cheap steps from another agent at ``rate`` events/s; returns events sent."""
    gov = Governor("load", "load-bot", settings=settings, obey=False)
    sent = 0
    started = time.perf_counter()
    try:
        while not stop.is_set():
            with gov.session(category="billing") as s:
                for _ in range(8):
                    s.llm_call(
                        model="gpt-4o-mini", input_tokens=300, output_tokens=40, duration_ms=400
                    )
                sent += 10
            ahead = sent / rate - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
    finally:
        gov.close()
    return sent


def kill_latencies(settings: Settings, kills: int) -> tuple[list[float], list[float]]:
    """Seconds from emitting each breaking call to the client holding its KILL, and from
    emitting it to the worker producing the KILL (the decision record's timestamp)."""
    control = Consumer(
        {**client_config(settings), "group.id": uuid.uuid4().hex, "enable.auto.commit": False}
    )
    partitions = admin_client(settings).list_topics(timeout=10).topics[settings.topic("control")]
    ends = [
        TopicPartition(settings.topic("control"), p, control.get_watermark_offsets(
            TopicPartition(settings.topic("control"), p), timeout=10)[1])
        for p in partitions.partitions
    ]  # fmt: skip
    control.assign(ends)
    emitted: dict[str, float] = {}
    held = _kills(settings, kills, emitted)
    codec = Codecs.load(settings.schemas_dir).decision
    produced: list[float] = []
    deadline = time.monotonic() + 30
    while emitted and time.monotonic() < deadline:
        msg = control.poll(1)
        value = None if msg is None or msg.error() is not None else msg.value()
        if msg is None or value is None:
            continue
        decision = codec.decode(value)
        sent = emitted.get(decision["target"])
        if sent is not None and decision["action"] == "KILL":
            del emitted[decision["target"]]
            produced.append(msg.timestamp()[1] / 1000 - sent)
    control.close()
    return held, produced


def _kills(settings: Settings, kills: int, emitted: dict[str, float]) -> list[float]:
    # the client's own checks would refuse the breaking call before it is sent (issue 13):
    # off, so the clock measures the worker's path (event -> worker -> KILL -> client)
    gov = Governor("acme", "kill-bench", settings=settings, checks=False)
    latencies = []
    try:
        for _ in range(kills):
            s = gov.session()
            s.start()
            target = session_target(s.session_id)
            with gov.changed:
                emitted[target] = time.time()
                t0 = time.perf_counter()
                s.llm_call(model="gpt-4o", input_tokens=1, output_tokens=1, cost_usd=0.02)
                while gov.book.latest(target) is None:
                    if not gov.changed.wait(5) and time.perf_counter() - t0 > 5:
                        raise TimeoutError("no KILL within 5 s")
                latencies.append(time.perf_counter() - t0)
            s.finish()
    finally:
        gov.close()
    return latencies


def kafka_round_trips(settings: Settings, samples: int) -> list[float]:
    topic = settings.topic("rtt")
    create_topics(admin_client(settings), [new_topic(topic, 1, 1, {})])
    producer = Producer({**client_config(settings), "linger.ms": 0, "acks": "all"})
    consumer = Consumer(
        {
            **client_config(settings),
            "group.id": uuid.uuid4().hex,
            "fetch.wait.max.ms": 10,
            "enable.auto.commit": False,
        }
    )
    _low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    consumer.assign([TopicPartition(topic, 0, high)])
    consumer.poll(0.5)
    rtts = []
    try:
        for n in range(samples):
            t0 = time.perf_counter()
            producer.produce(topic, str(n).encode())
            producer.poll(0)
            while True:
                msg = consumer.poll(5)
                if msg is not None and msg.error() is None and msg.value() == str(n).encode():
                    break
            rtts.append(time.perf_counter() - t0)
            time.sleep(0.01)
    finally:
        consumer.close()
        producer.flush(10)
    return rtts


def report(name: str, seconds: list[float]) -> None:
    ms = [s * 1000 for s in seconds]
    print(
        f"{name:<34} n={len(ms):<4} p50 {percentile(ms, 0.5):7.1f} ms   "
        f"p99 {percentile(ms, 0.99):7.1f} ms   max {max(ms):7.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--load", type=float, default=5000.0, help="background events/s")
    parser.add_argument(
        "--loaders", type=int, default=2, help="processes sending the background load"
    )
    args = parser.parse_args()
    with bench_stack() as base:
        policies = base.state_dir / f"bench-policies-{base.app_id}"
        policies.mkdir(parents=True, exist_ok=True)
        shutil.copy(base.policies_dir / "prices.yaml", policies)
        (policies / "governor.yaml").write_text(POLICY)
        settings = base.replace(policies_dir=policies)
        with WorkerProcess(settings, settings.state_dir / "logs" / "bench-kill-worker.log") as w:
            while not (w.get_json("/ingest") or {}).get("ready"):
                time.sleep(0.2)
            context = multiprocessing.get_context("spawn")
            stop = context.Event()
            counts = [context.Value("q", 0) for _ in range(args.loaders)]
            loaders = [
                context.Process(
                    target=_load_process,
                    args=(settings, args.load / args.loaders, stop, count),
                    daemon=True,
                )
                for count in counts
            ]
            for loader in loaders:
                loader.start()
            time.sleep(4)  # let the load settle (the loaders import and connect first)
            loaded_at = time.perf_counter()
            try:
                rtts = kafka_round_trips(settings, 200)
                kills, produced = kill_latencies(settings, args.kills)
            finally:
                stop.set()
                for loader in loaders:
                    loader.join(30)
                elapsed = time.perf_counter() - loaded_at + 4
        sent = sum(count.value for count in counts)
        print(
            f"background load: {sent:,} events in {args.loaders} processes (~{sent / elapsed:,.0f}"
            f"/s, target {args.load:,.0f}/s); load average {os.getloadavg()[0]:.1f}"
        )
        report("raw Kafka produce->consume", rtts)
        report("KILL: breaking event -> client", kills)
        # where the time goes: to the worker's KILL record, then on to the client
        report("  of which event -> worker's KILL", produced)


if __name__ == "__main__":
    main()
