"""The pure parts of replay: time bounds, offset ranges, ids, partition mapping, the filter."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.codec import Codecs
from streams.engine import Engine
from streams.pipeline.policy import PolicyFile, PolicySet
from streams.pipeline.pricing import load_prices
from streams.replay import (
    COPY,
    SKIP,
    UNDECODABLE,
    ReplayFilter,
    ReplaySpec,
    check_target,
    ms_bounds,
    new_replay_id,
    offset_range,
    replay_id,
    replay_worker_env,
    target_partition,
    verdict,
)
from streams.settings import Settings

CODECS = Codecs.load(Settings().schemas_dir)


def event(session: str = "s1", tenant: str = "acme", agent: str = "support-bot") -> bytes:
    value: dict[str, Any] = {
        "event_id": f"{session}-1",
        "seq": 1,
        "session_id": session,
        "tenant_id": tenant,
        "agent_id": agent,
        "kind": "SESSION_START",
        "start_time_us": 1_700_000_000_000_000,
        "status": "OK",
    }
    return CODECS.step_event.encode(value)


def decide(rule: ReplayFilter, key: bytes | None, value: bytes | None) -> str:
    return verdict(rule, key, value, CODECS.step_event.decode)


# --- time and offsets ----------------------------------------------------------------------


def test_bounds_cover_every_millisecond_inside_the_microsecond_range() -> None:
    assert ms_bounds(1_000_000, 2_000_000) == (1000, 2001)
    # a start inside a millisecond excludes that millisecond's records (they are earlier)
    assert ms_bounds(1_000_001, 1_999_999) == (1001, 2000)
    with pytest.raises(ValueError, match="before it starts"):
        ms_bounds(2, 1)


@given(st.integers(0, 10**15), st.integers(0, 10**9), st.integers(0, 10**12))
def test_a_timestamp_is_read_exactly_when_it_lies_in_the_range(
    from_us: int, span: int, t_ms: int
) -> None:
    start, end = ms_bounds(from_us, from_us + span)
    assert (start <= t_ms < end) == (from_us <= t_ms * 1000 <= from_us + span)


def test_offset_range_from_the_time_index() -> None:
    # both lookups found a record
    assert offset_range(2, 10, 20, low=0, high=30).size == 10
    # nothing after the end time: read to the high watermark
    r = offset_range(0, 10, -1, low=0, high=30)
    assert (r.start, r.end) == (10, 30)
    # nothing at or after the start time: nothing to read
    assert offset_range(0, -1, -1, low=0, high=30).size == 0
    # retention deleted the start: begin at the low watermark
    assert offset_range(0, 3, 8, low=5, high=30).start == 5


# --- ids and partitions --------------------------------------------------------------------


def test_replay_ids_say_when_they_were_made() -> None:
    assert replay_id(1_795_606_200_000_000, "ab12") == "20261125-113000-ab12"
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", new_replay_id())


def test_copies_keep_their_partition_number() -> None:
    assert [target_partition(p, 6) for p in range(6)] == list(range(6))
    with pytest.raises(ValueError, match="no counterpart"):
        target_partition(6, 6)


def test_a_target_is_created_when_missing_and_must_hold_every_partition() -> None:
    assert check_target(6, None) is True
    assert check_target(6, 6) is False
    assert check_target(6, 12) is False
    with pytest.raises(ValueError, match="3 partitions, the source 6"):
        check_target(6, 3)


def test_the_worker_environment_of_a_replay_keeps_it_apart_from_the_live_worker() -> None:
    settings = Settings(topic_prefix="gov.", app_id="governor", web_port=6066)
    env = replay_worker_env(settings, "gov.replay.20261125-113000-ab12")
    assert env == {
        "GOVERNOR_EVENTS_TOPIC": "gov.replay.20261125-113000-ab12",
        "GOVERNOR_TOPIC_PREFIX": "gov.replay.20261125-113000-ab12.",
        "GOVERNOR_APP_ID": "replay-20261125-113000-ab12",
        "GOVERNOR_WEB_PORT": "6067",
    }
    worker = Settings.from_env(env)
    assert worker.events_source_topic == "gov.replay.20261125-113000-ab12"
    assert worker.topic("control") == "gov.replay.20261125-113000-ab12.control"
    assert worker.redis_key_prefix != settings.redis_key_prefix


def test_a_replay_worker_of_a_deployment_on_free_ports_takes_a_free_port_too() -> None:
    env = replay_worker_env(Settings(web_port=0), "gov.replay.20261125-113000-ab12")
    assert env["GOVERNOR_WEB_PORT"] == "0"


def test_the_events_topic_setting() -> None:
    assert Settings().events_source_topic == "gov.events"
    assert Settings(topic_prefix="x.").events_source_topic == "x.events"
    assert Settings.from_env({"GOVERNOR_EVENTS_TOPIC": "elsewhere"}).events_source_topic == (
        "elsewhere"
    )
    assert "GOVERNOR_EVENTS_TOPIC" not in Settings().to_env()


# --- the filter ----------------------------------------------------------------------------


def test_no_filter_copies_everything_even_what_does_not_decode() -> None:
    rule = ReplaySpec(0, 1).rule
    assert decide(rule, b"s1", event()) == COPY
    assert decide(rule, b"junk", b"not avro") == COPY
    assert decide(rule, None, None) == COPY


def test_the_session_filter_looks_at_the_key_only() -> None:
    rule = ReplayFilter(session_id="s1")
    assert not rule.needs_event
    assert decide(rule, b"s1", event("s1")) == COPY
    assert decide(rule, b"s1", b"not avro") == COPY
    assert decide(rule, b"s2", event("s1")) == SKIP
    assert decide(rule, None, event("s1")) == SKIP


def test_agent_and_tenant_filters_decode_and_skip_what_does_not_decode() -> None:
    by_agent = ReplayFilter(agent_id="support-bot")
    by_tenant = ReplayFilter(tenant_id="acme")
    assert decide(by_agent, b"s1", event(agent="support-bot")) == COPY
    assert decide(by_agent, b"s1", event(agent="billing-agent")) == SKIP
    assert decide(by_tenant, b"s1", event(tenant="acme")) == COPY
    assert decide(by_tenant, b"s1", event(tenant="globex")) == SKIP
    assert decide(by_agent, b"s1", b"not avro") == UNDECODABLE
    assert decide(by_tenant, b"s1", None) == UNDECODABLE


def test_filters_combine() -> None:
    rule = ReplayFilter(session_id="s1", agent_id="support-bot", tenant_id="acme")
    assert decide(rule, b"s1", event("s1")) == COPY
    assert decide(rule, b"s1", event("s1", tenant="globex")) == SKIP
    # filtered out by its key before anyone looks at its bytes
    assert decide(rule, b"s2", b"not avro") == SKIP


# --- what a replay feeds the engine --------------------------------------------------------


def session_events(session: str, start_us: int, steps: int) -> list[dict[str, Any]]:
    """A session making ``steps`` tool calls within one minute."""
    base = {"session_id": session, "tenant_id": "acme", "agent_id": "bot", "status": "OK"}
    return [
        {**base, "event_id": f"{session}-1", "seq": 1, "kind": "SESSION_START",
         "start_time_us": start_us},
        *({**base, "event_id": f"{session}-{n}", "seq": n, "kind": "TOOL_CALL",
           "tool_name": "search_kb", "start_time_us": start_us + n * 1_000_000}
          for n in range(2, steps + 2)),
    ]  # fmt: skip


def decided(partitions: list[tuple[int, list[dict[str, Any]]]]) -> set[tuple[str, str, int]]:
    policy = {"id": "rate", "kind": "step_rate", "scope": "session", "max_steps": 3,
              "window": "1m", "action": "throttle"}  # fmt: skip
    policies = PolicySet.build([PolicyFile.model_validate({"version": 1, "policies": [policy]})])
    engine = Engine(load_prices(Settings().policies_dir / "prices.yaml"), policies)
    return {
        (d.outcome.policy_id, d.outcome.target, d.epoch)
        for partition, events in partitions
        for d in engine.process(partition, events).decisions
    }


def test_a_partition_read_behind_the_others_decides_its_step_rates_as_live() -> None:
    """A replay reads one partition's whole range before the next: the watermark is then days
    ahead of the later partitions' events, and their rate windows must still be their own."""
    early = session_events("early", 1_764_000_000_000_000, 5)
    late = session_events("late", 1_764_000_000_000_000 + 86_400_000_000, 5)
    interleaved = decided([(0, early), (1, late)])
    assert {target for _, target, _ in interleaved} == {"session:early", "session:late"}
    assert decided([(1, late), (0, early)]) == interleaved


def test_the_command_refuses_a_range_that_ends_before_it_starts() -> None:
    from typer.testing import CliRunner

    from streams.cli import app

    result = CliRunner().invoke(app, ["replay", "--from", "now", "--to", "2h", "--json"])
    assert result.exit_code == 1
    assert "before --from" in result.output
