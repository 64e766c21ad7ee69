"""Kill latency: from a budget-breaking event to the client holding the KILL, under load.

    python -m bench.kill_latency [--kills 200] [--load 2000]

Uses the stack of GOVERNOR_BOOTSTRAP (starting the local one if needed) and a worker of its own.
While a background fleet sends ``--load`` events/s, one agent breaks its session budget
``--kills`` times; each time the clock runs from emitting the breaking LLM call to the client's
control subscriber accepting the signed KILL. The raw Kafka produce-to-consume round trip is
measured in the same run, under the same load, for comparison.
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from bench.common import bench_stack, percentile
from streams.client import Governor
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


def background_load(settings: Settings, rate: float, stop: threading.Event) -> int:
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


def kill_latencies(settings: Settings, kills: int) -> list[float]:
    gov = Governor("acme", "kill-bench", settings=settings)
    latencies = []
    try:
        for _ in range(kills):
            s = gov.session()
            s.start()
            target = session_target(s.session_id)
            with gov.changed:
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
    parser.add_argument("--load", type=float, default=2000.0, help="background events/s")
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
            stop = threading.Event()
            sent: list[int] = []
            loader = threading.Thread(
                target=lambda: sent.append(background_load(settings, args.load, stop))
            )
            loader.start()
            time.sleep(2)  # let the load settle
            try:
                rtts = kafka_round_trips(settings, 200)
                started = time.perf_counter()
                kills = kill_latencies(settings, args.kills)
                elapsed = time.perf_counter() - started
            finally:
                stop.set()
                loader.join()
        load_rate = sent[0] / (elapsed + 2 + sum(rtts) + 2.0) if sent else 0.0
        print(
            f"background load: {sent[0] if sent else 0:,} events (~{load_rate:,.0f}/s target "
            f"{args.load:,.0f}/s)"
        )
        report("raw Kafka produce->consume", rtts)
        report("KILL: breaking event -> client", kills)


if __name__ == "__main__":
    main()
