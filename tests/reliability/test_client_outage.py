"""The broker goes away for 30 s: the agent keeps running and every event is accounted for.

This test runs its own single-node stack (ports 30092/30379) because it stops the broker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams import stack
from streams.client import Governor
from streams.codec import Codecs
from streams.control import KeyRing
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.kafka_helpers import consume

OUTAGE_S = 30.0
#: the agents run this long before the broker is stopped, and this long after it is back
BEFORE_S = 1.0
AFTER_S = 2.0


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Settings]:
    settings = Settings.from_env(
        state_dir=tmp_path / "state",
        kafka_port=30092,
        bootstrap="127.0.0.1:30092",
        redis_url="redis://127.0.0.1:30379/0",
        topic_prefix="outage.",
        event_partitions=3,
    )
    stack.up(settings)
    ensure_topics(settings)
    try:
        yield settings
    finally:
        stack.down(settings)


def test_agents_run_through_a_broker_outage_and_loss_is_counted_exactly(
    own_stack: Settings,
) -> None:
    # one client buffers everything; the other has room for 200 events, so it must drop.
    # Checks off: 50 steps/s is over the shipped session step rate, which the client's own
    # checks would throttle; what is timed here is the emitter, not the policies
    roomy = Governor("acme", "roomy", settings=own_stack, public_keys=KeyRing({}), checks=False)
    tight = Governor(
        "acme",
        "tight",
        settings=own_stack.replace(client_buffer_events=200),
        public_keys=KeyRing({}),
        checks=False,
    )
    slowest_call = 0.0
    outage_started = outage_ended = 0.0
    started = time.monotonic()
    with roomy.session() as a, tight.session() as b:
        while not outage_ended or time.monotonic() - outage_ended < AFTER_S:
            elapsed = time.monotonic() - started
            if not outage_started and elapsed > BEFORE_S:
                stack.stop(own_stack, ["kafka-1"])
                outage_started = time.monotonic()
            if outage_started and not outage_ended and time.monotonic() - outage_started > OUTAGE_S:
                stack.up(own_stack)
                outage_ended = time.monotonic()
            for session in (a, b):
                t0 = time.perf_counter()
                session.llm_call(model="gpt-4o-mini", input_tokens=100, output_tokens=10)
                slowest_call = max(slowest_call, time.perf_counter() - t0)
            time.sleep(0.02)
    assert outage_ended - outage_started >= OUTAGE_S
    assert slowest_call < 0.25, f"a step waited {slowest_call:.3f}s on the broker"

    for gov in (roomy, tight):
        assert gov.emitter.flush(60) == 0
    roomy_stats, tight_stats = roomy.stats(), tight.stats()
    roomy.close()
    tight.close()
    print(
        f"outage {OUTAGE_S:.0f}s: roomy {roomy_stats}, tight {tight_stats}, "
        f"slowest step call {slowest_call * 1000:.1f} ms"
    )
    assert roomy_stats["dropped"] == roomy_stats["failed"] == 0
    assert roomy_stats["delivered"] == roomy_stats["emitted"]
    assert tight_stats["dropped"] > 0, "the small buffer should have overflowed"
    assert tight_stats["pending"] == 0
    assert tight_stats["emitted"] == (
        tight_stats["delivered"] + tight_stats["dropped"] + tight_stats["failed"]
    )

    delivered = roomy_stats["delivered"] + tight_stats["delivered"]
    codecs = Codecs.load(own_stack.schemas_dir)
    messages = consume(own_stack.bootstrap, own_stack.topic("events"), delivered, timeout_s=60)
    events = [codecs.step_event.decode(m.value() or b"") for m in messages]
    by_agent: dict[str, set[str]] = {"roomy": set(), "tight": set()}
    for event in events:
        by_agent[event["agent_id"]].add(event["event_id"])
    assert len(by_agent["roomy"]) == roomy_stats["delivered"], "duplicates or losses"
    assert len(by_agent["tight"]) == tight_stats["delivered"]
    roomy_seqs = sorted(e["seq"] for e in events if e["agent_id"] == "roomy")
    assert roomy_seqs == list(range(1, len(roomy_seqs) + 1)), "gap-free without drops"
