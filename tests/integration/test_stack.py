"""`governor up` / `down` / `status` against real processes (own ports, own state folder)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streams import stack
from streams.settings import Settings
from streams.topics import admin_client, create_topics, describe_topics, new_topic


def _alive(pid: int) -> bool:
    return not stack._is_gone(pid)


@pytest.fixture
def own_stack(tmp_path: Path) -> Settings:
    return Settings.from_env(
        state_dir=tmp_path / "state",
        kafka_port=31092,
        bootstrap="127.0.0.1:31092",
        redis_url="redis://127.0.0.1:31379/0",
    )


def test_up_twice_starts_once_and_down_leaves_nothing(own_stack: Settings) -> None:
    try:
        started = stack.up(own_stack)
        assert started == ["kafka-1", "redis"]
        pids = [st.pid for st in stack.status(own_stack)]
        assert all(pids)
        assert stack.up(own_stack) == []
        assert [st.pid for st in stack.status(own_stack)] == pids
    finally:
        stopped = stack.down(own_stack)
    assert sorted(stopped) == ["kafka-1", "redis"]
    assert not any(_alive(pid) for pid in pids if pid)
    assert not any(st.running for st in stack.status(own_stack))
    assert stack.down(own_stack) == []


def test_stale_pid_files_do_not_stop_a_start(own_stack: Settings) -> None:
    run = stack.run_dir(own_stack)
    run.mkdir(parents=True)
    (run / "kafka-1.pid").write_text("999999999 7\n")
    (run / "redis.pid").write_text("1 3\n")  # alive, but not ours
    try:
        assert stack.up(own_stack) == ["kafka-1", "redis"]
    finally:
        stack.down(own_stack)


def test_a_service_that_cannot_start_reports_its_log(own_stack: Settings, tmp_path: Path) -> None:
    broken = own_stack.replace(kafka_heap_mb=1, start_timeout_s=30)  # the JVM refuses a 1 MB heap
    with pytest.raises(stack.StackError, match=r"kafka-1 exited during start-up; last lines"):
        stack.up(broken)
    assert not any(st.running for st in stack.status(broken))


def test_three_brokers_take_acks_all_writes_with_min_isr_two(tmp_path: Path) -> None:
    settings = Settings.from_env(
        state_dir=tmp_path / "state3",
        kafka_port=32092,
        bootstrap="127.0.0.1:32092",
        redis_url="redis://127.0.0.1:32379/0",
        # three JVMs starting at once on two cores: the quick JIT starts them in less CPU
        kafka_jvm_options="-XX:TieredStopAtLevel=1",
    )
    try:
        stack.up(settings, brokers=3)
        assert [st.service.name for st in stack.status(settings) if st.running] == [
            "kafka-1",
            "kafka-2",
            "kafka-3",
            "redis",
        ]
        bootstrap = stack.bootstrap_servers(settings, 3)
        admin = admin_client(settings.replace(bootstrap=bootstrap))
        assert len(admin.list_topics(timeout=10).brokers) == 3
        create_topics(admin, [new_topic("replicated", 3, 3, {"min.insync.replicas": "2"})])
        # each broker answers metadata from its own view, which may lag a moment behind
        deadline = time.monotonic() + 15
        while True:
            [info] = describe_topics(admin, ["replicated"])
            if info.exists or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert (info.replication, info.min_insync_replicas) == (3, "2")

        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        delivered: list[object] = []
        for n in range(30):
            producer.produce(
                "replicated",
                f"v{n}".encode(),
                f"k{n}".encode(),
                on_delivery=lambda err, msg: delivered.append(err or msg.offset()),
            )
        assert producer.flush(30) == 0
        assert len(delivered) == 30
        assert all(isinstance(d, int) for d in delivered), delivered

        # explicit offsets: no group coordinator (and no __consumer_offsets creation) involved
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused"})
        consumer.assign([TopicPartition("replicated", p, OFFSET_BEGINNING) for p in range(3)])
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(got) < 30 and time.monotonic() < deadline:
            msg = consumer.poll(1)
            if msg is not None and msg.error() is None:
                got.append(msg.value() or b"")
        consumer.close()
        producer.flush(5)
        assert sorted(got) == sorted(f"v{n}".encode() for n in range(30))
    finally:
        stopped = stack.down(settings)
    assert sorted(stopped) == ["kafka-1", "kafka-2", "kafka-3", "redis"]
    assert not any(st.running for st in stack.status(settings))
