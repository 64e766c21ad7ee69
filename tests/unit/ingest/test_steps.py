"""Stateless span/log → StepEvent drafts: sessions, fallbacks, lifecycle, refusals, ids."""

from __future__ import annotations

from typing import Any

from streams.codec import Codecs
from streams.ingest.mapping import SpanEvent, SpanFacts, SpanKind
from streams.ingest.otlp import OtlpLog, OtlpSpan
from streams.ingest.seq import ordered
from streams.ingest.steps import (
    Draft,
    PendingEnd,
    Turn,
    apply_turns,
    ending_turns,
    map_logs,
    map_spans,
    settle_pending,
    turns_of,
)
from streams.settings import Settings

T0 = 1_760_000_000_000_000_000
TRACE = "5b8efff798038103d269b633813fc60c"
RESOURCE = {"service.name": "go-agent", "service.version": "2.1", "governor.tenant": "acme"}


def span(
    span_id: str,
    attrs: dict[str, Any],
    *,
    parent: str = "",
    start_ms: int = 0,
    ms: int = 10,
    error: bool = False,
    trace: str = TRACE,
    kind: SpanKind = SpanKind.INTERNAL,
    events: tuple[SpanEvent, ...] = (),
) -> OtlpSpan:
    start = T0 + start_ms * 1_000_000
    facts = SpanFacts(
        attrs,
        start,
        start + ms * 1_000_000,
        error=error,
        events=events,
        trace_id=trace,
        span_id=span_id,
        parent_span_id=parent,
        kind=kind,
        name=str(attrs.get("gen_ai.operation.name", "http")),
    )
    return OtlpSpan(facts, RESOURCE)


AGENT = "a" * 16
CHAT = "b" * 16
TOOL = "c" * 16


def agent_trace(
    conversation: str | None, *, error: bool = False, trace: str = TRACE
) -> list[OtlpSpan]:
    agent_attrs: dict[str, Any] = {"gen_ai.operation.name": "invoke_agent"}
    if conversation is not None:
        agent_attrs["gen_ai.conversation.id"] = conversation
    agent_attrs["governor.category"] = "billing"
    return [
        span(
            CHAT,
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.usage.input_tokens": 900,
                "gen_ai.usage.output_tokens": 100,
            },
            parent=AGENT,
            start_ms=1,
            trace=trace,
        ),
        span(
            TOOL,
            {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup"},
            parent=AGENT,
            start_ms=20,
            trace=trace,
        ),
        span(AGENT, agent_attrs, ms=100, error=error, trace=trace),
    ]


def kinds(drafts: list[Draft]) -> list[str]:
    return [d.event["kind"] for d in ordered(drafts)]


def test_a_trace_without_conversation_id_is_its_own_session_and_ends_with_its_root() -> None:
    mapped = map_spans(agent_trace(None), default_tenant=None)
    assert kinds(mapped.drafts) == ["SESSION_START", "LLM_CALL", "TOOL_CALL", "SESSION_END"]
    assert {d.session_id for d in mapped.drafts} == {TRACE}
    # all three spans fell back to the trace id, each counted
    assert mapped.fallbacks == {"trace_id": 3}
    assert (mapped.accepted, mapped.refused, mapped.ignored) == (3, [], {})
    start = next(d.event for d in mapped.drafts if d.event["kind"] == "SESSION_START")
    assert (start["tenant_id"], start["agent_id"], start["agent_version"]) == (
        "acme",
        "go-agent",
        "2.1",
    )
    assert start["category"] == "billing"
    end = next(d.event for d in mapped.drafts if d.event["kind"] == "SESSION_END")
    assert (end["status"], end["duration_us"]) == ("OK", 100_000)


def test_children_inherit_the_conversation_of_their_ancestor_in_the_request() -> None:
    mapped = map_spans(agent_trace("conv-9", error=True), default_tenant=None)
    assert {d.session_id for d in mapped.drafts} == {"conv-9"}
    assert mapped.fallbacks == {"parent_span": 2}
    # the root agent span ends the turn, with its failure
    assert kinds(mapped.drafts) == ["SESSION_START", "LLM_CALL", "TOOL_CALL", "SESSION_END"]
    end = next(d.event for d in mapped.drafts if d.event["kind"] == "SESSION_END")
    assert (end["status"], end["error_type"]) == ("ERROR", "_OTHER")
    assert {d.turn for d in mapped.drafts} == {Turn("conv-9", TRACE)}


def test_session_and_mcp_session_ids_are_fallbacks() -> None:
    spans = [
        span(CHAT, {"gen_ai.operation.name": "chat", "session.id": "oi-1"}),
        span(
            TOOL,
            {
                "mcp.method.name": "tools/call",
                "mcp.session.id": "mcp-1",
                "gen_ai.tool.name": "get_weather",
                "server.address": "weather.mcp",
            },
            kind=SpanKind.CLIENT,
        ),
        span(
            "d" * 16,
            {"mcp.method.name": "tools/call", "mcp.session.id": "mcp-1"},
            kind=SpanKind.SERVER,
        ),
    ]
    mapped = map_spans(spans, default_tenant=None)
    assert sorted(d.session_id for d in mapped.drafts) == ["mcp-1", "oi-1"]
    assert mapped.fallbacks == {"session.id": 1, "mcp.session.id": 1}
    assert mapped.ignored == {"mcp_server_span": 1}
    tool = next(d.event for d in mapped.drafts if d.event["kind"] == "TOOL_CALL")
    assert tool["tool_name"] == "get_weather"
    assert tool["attributes"]["mcp.server"] == "weather.mcp"


def test_event_ids_are_deterministic_so_a_resent_request_is_the_same_events() -> None:
    first = map_spans(agent_trace("conv-1"), default_tenant=None)
    again = map_spans(agent_trace("conv-1"), default_tenant=None)
    assert [d.event_id for d in first.drafts] == [d.event_id for d in again.drafts]
    assert len({d.event_id for d in first.drafts}) == len(first.drafts)
    other = map_spans(agent_trace("conv-1")[:1], default_tenant=None)
    # the same span alone (another batch) is still the same event
    assert other.drafts[0].event_id == first.drafts[0].event_id


def test_refusals_name_the_span_and_the_fix() -> None:
    no_tenant = OtlpSpan(agent_trace(None)[0].facts, {"service.name": "x"})
    bad_id = span("", {"gen_ai.operation.name": "chat"})
    unknown = span(TOOL, {"gen_ai.operation.name": "summon"})
    mapped = map_spans([no_tenant, bad_id, unknown], default_tenant=None)
    assert [r.reason for r in mapped.refused] == ["no_tenant", "invalid_id", "unknown_operation"]
    message = mapped.refusal_message()
    assert f"span {CHAT} (chat): no tenant: set the resource attribute governor.tenant" in message
    assert "unknown gen_ai.operation.name 'summon'" in message
    assert mapped.drafts == []
    # a default tenant takes the unnamed ones
    assert map_spans([no_tenant], default_tenant="acme").drafts[0].event["tenant_id"] == "acme"


def test_non_genai_and_create_agent_spans_are_ignored_and_counted() -> None:
    spans = [
        span(CHAT, {"http.method": "GET"}),
        span(TOOL, {"gen_ai.operation.name": "create_agent"}),
    ]
    mapped = map_spans(spans, default_tenant=None)
    assert (mapped.drafts, mapped.ignored) == ([], {"not_genai": 1, "create_agent": 1})


def test_evaluation_events_on_any_span_and_cache_writes_counted() -> None:
    evaluation = SpanEvent(
        "gen_ai.evaluation.result",
        T0 + 50_000_000,
        {"gen_ai.evaluation.name": "relevance", "gen_ai.evaluation.score.value": 0.9},
    )
    spans = [
        span(
            CHAT,
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.conversation.id": "c",
                "gen_ai.request.model": "claude-sonnet-4",
                "gen_ai.usage.input_tokens": 2000,
                "gen_ai.usage.cache_creation.input_tokens": 1500,
            },
        ),
        span(TOOL, {"gen_ai.conversation.id": "c"}, events=(evaluation,)),
    ]
    mapped = map_spans(spans, default_tenant=None)
    assert kinds(mapped.drafts) == ["LLM_CALL", "EVALUATION"]
    llm, ev = (d.event for d in ordered(mapped.drafts))
    assert llm["cache_write_input_tokens"] == 1500
    assert (ev["evaluation_name"], ev["evaluation_score"]) == ("relevance", 0.9)


def test_every_draft_encodes_as_a_step_event() -> None:
    codec = Codecs.load(Settings().schemas_dir).step_event
    for d in map_spans(agent_trace(None), default_tenant=None).drafts:
        decoded = codec.decode(codec.encode({**d.event, "seq": 1}))
        assert decoded["event_id"] == d.event_id


def log(
    index: int, attrs: dict[str, Any], *, trace: str = TRACE, name: str = "gen_ai.evaluation.result"
) -> OtlpLog:
    return OtlpLog(T0, trace, AGENT, name, attrs, None, RESOURCE, index)


def test_evaluation_log_records() -> None:
    scored = {"gen_ai.evaluation.name": "relevance", "gen_ai.evaluation.score.value": 0.5}
    mapped = map_logs(
        [
            log(0, {**scored, "gen_ai.conversation.id": "conv-1"}),
            log(1, scored),  # the trace id
            log(2, {"gen_ai.evaluation.name": "tone"}),  # no score
            log(3, scored, trace=""),  # nowhere to put it
            log(4, {"message": "hello"}, name=""),
        ],
        default_tenant=None,
    )
    assert [d.session_id for d in mapped.drafts] == ["conv-1", TRACE]
    assert [r.reason for r in mapped.refused] == ["evaluation_without_score", "no_conversation"]
    assert (mapped.fallbacks, mapped.ignored) == ({"trace_id": 1}, {"not_genai": 1})
    again = map_logs([log(0, {**scored, "gen_ai.conversation.id": "conv-1"})], None)
    assert again.drafts[0].event_id == mapped.drafts[0].event_id


def test_ordered_puts_each_session_in_time_order_with_its_end_last() -> None:
    drafts = map_spans(agent_trace(None), default_tenant=None).drafts
    doubled = [*drafts, *reversed(drafts)]
    result = ordered(doubled)
    assert len(result) == len(drafts)
    assert [d.event["kind"] for d in result][-1] == "SESSION_END"
    times = [d.event["start_time_us"] for d in result[:-1]]
    assert times == sorted(times)


def test_an_mcp_call_inside_an_execute_tool_span_is_one_tool_call() -> None:
    spans = [
        span(
            TOOL,
            {
                "mcp.method.name": "tools/call",
                "gen_ai.tool.name": "refund",
                "gen_ai.conversation.id": "c",
            },
            parent=CHAT,
            kind=SpanKind.CLIENT,
        ),
        span(
            CHAT,
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "refund",
                "gen_ai.conversation.id": "c",
            },
        ),
    ]
    mapped = map_spans(spans, default_tenant=None)
    assert kinds(mapped.drafts) == ["TOOL_CALL"]
    assert mapped.ignored == {"mcp_inside_execute_tool": 1}


def test_a_sub_agent_in_its_own_conversation_records_its_parent_session() -> None:
    child_agent = span(
        "e" * 16,
        {"gen_ai.operation.name": "invoke_agent", "gen_ai.conversation.id": "child-conv"},
        parent=TOOL,
        start_ms=21,
    )
    mapped = map_spans([*agent_trace("parent-conv"), child_agent], default_tenant=None)
    starts = {d.session_id: d.event for d in mapped.drafts if d.event["kind"] == "SESSION_START"}
    assert starts["child-conv"]["attributes"] == {"governor.parent_session_id": "parent-conv"}
    assert starts["parent-conv"]["attributes"] == {}


TRACE_2 = "6c9f" + "1" * 28


def started(drafts: list[Draft]) -> dict[str, dict[str, Any]]:
    return {d.session_id: d.event for d in drafts if d.event["kind"] == "SESSION_START"}


def test_each_trace_of_a_conversation_is_a_turn_a_session_of_its_own() -> None:
    second = agent_trace("conv-7", trace=TRACE_2)
    mapped = map_spans([*agent_trace("conv-7"), *second], default_tenant=None)
    turns = turns_of(mapped.drafts)
    assert turns == [Turn("conv-7", TRACE), Turn("conv-7", TRACE_2)]
    drafts = apply_turns(mapped.drafts, {turns[0]: 1, turns[1]: 2})
    sessions = {d.session_id for d in drafts}
    assert sessions == {"conv-7", "conv-7#2"}
    assert all(d.event["session_id"] == d.session_id for d in drafts)
    # each turn ends at its root agent span; a later turn's parent is the first turn
    assert [d.session_id for d in drafts if d.event["kind"] == "SESSION_END"] == [
        "conv-7",
        "conv-7#2",
    ]
    assert started(drafts)["conv-7"]["attributes"] == {}
    assert started(drafts)["conv-7#2"]["attributes"] == {"governor.parent_session_id": "conv-7"}
    assert mapped.open_turns == 0


def test_a_sub_agent_in_the_same_conversation_does_not_end_the_turn() -> None:
    sub = span(
        "e" * 16,
        {"gen_ai.operation.name": "invoke_agent", "gen_ai.conversation.id": "conv-1"},
        parent=TOOL,
        start_ms=21,
    )
    mapped = map_spans([*agent_trace("conv-1"), sub], default_tenant=None)
    assert kinds(mapped.drafts).count("SESSION_END") == 1
    end = next(d for d in mapped.drafts if d.event["kind"] == "SESSION_END")
    assert end.event["start_time_us"] == T0 // 1000 + 100_000  # the root's end
    # the sub-agent alone (its ancestors in a later request): the turn is left open, counted
    alone = map_spans([sub], default_tenant=None)
    assert "SESSION_END" not in kinds(alone.drafts)
    assert alone.open_turns == 1
    (pending,) = alone.pending
    assert (pending.awaiting, pending.end.event["kind"]) == (TOOL, "SESSION_END")
    # its ancestors come: the tool's parent is the turn's root agent, so this end is dropped
    # (the root ends the turn itself)
    assert settle_pending(agent_trace("conv-1"), alone.pending) == ([], [])


def test_an_end_waits_for_its_missing_ancestor_and_comes_with_it() -> None:
    http = "f" * 16
    agent = span(
        AGENT,
        {"gen_ai.operation.name": "invoke_agent", "gen_ai.conversation.id": "conv-h"},
        parent=http,
        ms=50,
    )
    first = map_spans([agent], default_tenant=None)
    (pending,) = first.pending
    assert kinds(first.drafts) == ["SESSION_START"]
    assert PendingEnd.from_json(pending.to_json()) == pending
    # the HTTP server span above it comes in a later request, its own parent still missing
    middle = span(http, {}, parent="9" * 16, ms=60)
    assert settle_pending([middle], [pending]) == ([], [PendingEnd(TRACE, "9" * 16, pending.end)])
    # then the trace's root: the turn ends, with the end the agent span gave
    ended, again = settle_pending(
        [span("9" * 16, {}, ms=70)], [PendingEnd(TRACE, "9" * 16, pending.end)]
    )
    assert (ended, again) == ([pending.end], [])
    assert ended[0].turn == Turn("conv-h", TRACE)


def test_an_agent_span_with_a_remote_parent_ends_its_turn() -> None:
    remote = SpanFacts(
        {"gen_ai.operation.name": "invoke_agent", "gen_ai.conversation.id": "conv-r"},
        T0,
        T0 + 5_000_000,
        trace_id=TRACE,
        span_id=AGENT,
        parent_span_id="9" * 16,
        parent_remote=True,
    )
    mapped = map_spans([OtlpSpan(remote, RESOURCE)], default_tenant=None)
    assert kinds(mapped.drafts) == ["SESSION_START", "SESSION_END"]
    assert mapped.open_turns == 0


def test_a_sub_agent_of_another_conversation_names_its_callers_turn() -> None:
    child_agent = span(
        "e" * 16,
        {"gen_ai.operation.name": "invoke_agent", "gen_ai.conversation.id": "child-conv"},
        parent=TOOL,
        start_ms=21,
    )
    mapped = map_spans([*agent_trace("parent-conv"), child_agent], default_tenant=None)
    numbers = {Turn("parent-conv", TRACE): 3, Turn("child-conv", TRACE): 1}
    assert set(turns_of(mapped.drafts)) == set(numbers)
    drafts = apply_turns(mapped.drafts, numbers)
    # the child's parent is the turn of the caller, not the caller's first turn
    assert started(drafts)["child-conv"]["attributes"] == {
        "governor.parent_session_id": "parent-conv#3"
    }
    assert started(drafts)["parent-conv#3"]["attributes"] == {
        "governor.parent_session_id": "parent-conv"
    }
    # both turns end: the child at its own root agent span (its caller is another session)
    ends = sorted(d.session_id for d in drafts if d.event["kind"] == "SESSION_END")
    assert ends == ["child-conv", "parent-conv#3"]


def test_a_trace_session_has_no_turn_and_is_left_as_it_is() -> None:
    mapped = map_spans(agent_trace(None), default_tenant=None)
    assert turns_of(mapped.drafts) == []
    assert apply_turns(mapped.drafts, {}) == mapped.drafts


def test_a_log_record_without_a_trace_goes_to_the_latest_turn() -> None:
    record = OtlpLog(
        time_ns=T0,
        trace_id="",
        span_id="",
        event_name="gen_ai.evaluation.result",
        attributes={
            "gen_ai.conversation.id": "conv-l",
            "gen_ai.evaluation.name": "helpfulness",
            "gen_ai.evaluation.score.value": 0.5,
        },
        body=None,
        resource=RESOURCE,
        index=0,
    )
    mapped = map_logs([record], default_tenant=None)
    (turn,) = turns_of(mapped.drafts)
    assert (turn.conversation, turn.trace_id, turn.record) == (
        "conv-l",
        "",
        mapped.drafts[0].event_id,
    )
    (draft,) = apply_turns(mapped.drafts, {turn: 4})
    assert draft.session_id == "conv-l#4"


def test_the_turns_a_request_ends() -> None:
    mapped = map_spans([*agent_trace("conv-e"), *agent_trace(None, trace=TRACE_2)], None)
    assert ending_turns(mapped.drafts) == {Turn("conv-e", TRACE)}
