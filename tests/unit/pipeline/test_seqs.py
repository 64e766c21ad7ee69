"""streams.pipeline.seqs: each seq applied once, in any order within the window."""

from __future__ import annotations

from typing import NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.engine import Engine
from streams.pipeline.accounting import SessionState, fold
from streams.pipeline.policy import PolicySet
from streams.pipeline.pricing import PriceTable
from streams.pipeline.seqs import WINDOW, admit
from tests.unit.pipeline.test_accounting import ev


class SeqOrder(NamedTuple):
    last_seq: int
    open_below: int
    first_seq: int
    missing_events: int


EMPTY = SeqOrder(0, 0, 0, 0)


def feed(seqs: list[int]) -> tuple[list[int], SeqOrder]:
    """The seqs applied, in the order applied, and the final order."""
    order, applied = EMPTY, list[int]()
    for seq in seqs:
        after = admit(*order, seq, first_event=not applied)
        if after is not None:
            applied.append(seq)
            order = SeqOrder(*after)
    return applied, order


def test_in_order_is_the_old_behaviour() -> None:
    applied, order = feed([1, 2, 3, 3, 2])
    assert applied == [1, 2, 3]
    assert order == SeqOrder(3, 0, 1, 0)


def test_a_gap_is_missing_until_it_comes() -> None:
    applied, order = feed([1, 4])
    assert order.missing_events == 2
    applied, order = feed([1, 4, 3])
    assert applied == [1, 4, 3]
    assert order.missing_events == 1
    applied, order = feed([1, 4, 3, 2, 2, 3, 4])
    assert applied == [1, 4, 3, 2]
    assert order.missing_events == 0
    assert order.open_below == 0


def test_seqs_below_the_first_are_open_but_not_missing() -> None:
    # another receiver's SESSION_START (seq 1) after its steps (seq 3): applied, and 2 is
    # then missing until it comes
    applied, order = feed([3])
    assert order.missing_events == 0
    applied, order = feed([3, 1])
    assert applied == [3, 1]
    assert order.missing_events == 1
    assert order.first_seq == 1
    applied, order = feed([3, 1, 2])
    assert order.missing_events == 0


def test_a_resumed_session_starting_high_counts_nothing_missing() -> None:
    _, order = feed([1_700_000_000_000, 1_700_000_000_001])
    assert order.missing_events == 0
    assert order.open_below < 1 << WINDOW


def test_older_than_the_window_is_a_duplicate() -> None:
    applied, order = feed([1, WINDOW + 3, 2])
    assert applied == [1, WINDOW + 3]
    assert order.missing_events == WINDOW + 1
    applied, _ = feed([1, WINDOW + 3, 3])
    assert applied == [1, WINDOW + 3, 3]


def test_a_checkpoint_from_before_the_window_restores_and_opens_nothing_below() -> None:
    old = {**SessionState("s", "t", "a", last_seq=5, events=5).to_dict()}
    del old["seq_open_below"], old["first_seq"]
    state = SessionState.from_dict(old)
    assert (state.seq_open_below, state.first_seq) == (0, 0)
    prices = PriceTable({})
    event = {"seq": 4, "kind": "TOOL_CALL", "start_time_us": 1, "tool_name": "x", "status": "OK"}
    assert fold(state, event, prices) is None
    assert fold(state, {**event, "seq": 7}, prices) is not None
    assert state.missing_events == 1
    assert fold(state, {**event, "seq": 6}, prices) is not None  # a new gap is open
    assert state.missing_events == 0
    assert SessionState.from_dict(state.to_dict()) == state


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[set[int], list[int]]:
    """A set of seqs, delivered with duplicates and out of order by less than the window."""
    sent = draw(st.sets(st.integers(1, 200), min_size=1, max_size=60))
    copies = [s for s in sent for _ in range(draw(st.integers(1, 3)))]
    # each delivery lands at its seq plus a jitter smaller than the window
    jitter = draw(st.lists(st.integers(0, WINDOW // 2 - 1), min_size=len(copies)))
    keyed = sorted(zip((s + j for s, j in zip(copies, jitter, strict=False)), copies, strict=False))
    return sent, [s for _, s in keyed]


@settings(max_examples=300, deadline=None)
@given(deliveries())
def test_every_seq_applies_exactly_once_and_missing_is_the_gaps(
    case: tuple[set[int], list[int]],
) -> None:
    sent, arrivals = case
    applied, order = feed(arrivals)
    assert sorted(applied) == sorted(sent)
    assert order.last_seq == max(sent)
    gaps = set(range(min(sent), max(sent) + 1)) - sent
    assert order.missing_events == len(gaps)
    assert order.first_seq == min(sent)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 500), max_size=80))
def test_never_twice_whatever_the_order(arrivals: list[int]) -> None:
    applied, order = feed(arrivals)
    assert len(applied) == len(set(applied))
    assert set(applied) <= set(arrivals)
    assert 0 <= order.open_below < 1 << WINDOW
    assert order.missing_events >= 0


def test_the_engine_applies_late_seqs_once_and_a_reused_event_id_not_at_all() -> None:
    """Through the worker's own path (Engine.process): out of order across a batch boundary,
    after the session's end, and a late seq carrying an event id already applied."""
    engine = Engine(PriceTable({}), PolicySet.build([]))
    start, end = ev(1, "SESSION_START"), ev(5, "SESSION_END")
    steps = [ev(n, "TOOL_CALL", tool_name=f"t{n}") for n in (2, 3, 4)]
    first = engine.process(0, [start, steps[2], end])
    assert (first.applied, first.duplicates, len(first.summaries)) == (3, 0, 1)
    reused = {**steps[2], "seq": 2}  # seq 2 open, but this event id was applied as seq 4
    later = engine.process(0, [steps[1], reused, steps[0], steps[1], end])
    assert (later.applied, later.duplicates, later.rejected) == (2, 3, [])
    state = engine.partitions[0].sessions["s1"]
    assert (state.events, state.missing_events, state.status) == (5, 0, "OK")
    assert state.tool_calls == {"t2": 1, "t3": 1, "t4": 1}
