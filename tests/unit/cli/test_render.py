"""The renderers on real answers: a read-model and a PII ledger in a private redis-server,
read by the same Answers the CLI uses, drawn on a 100-column console."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from rich.console import Console

from streams.cli import render
from streams.pii.ledger import PiiLedger
from streams.pipeline.causes import killed_by
from streams.query.answers import Answers
from streams.query.readmodel import SessionReadModel
from tests.summaries import HOUR_US, T0, finding, summary

WIDTH = 100
ANSWERS = Path(__file__).parent / "answers"

TENANTS = ("initech-international", "acme", "globex")
AGENTS = ("research-agent-with-a-long-name", "support-bot", "billing-agent")
MODELS = ("claude-sonnet-4-20250514", "gpt-4.1", "gpt-4o-mini")


def fleet() -> list[dict[str, Any]]:
    """Sessions with long scope names, several models each, and every way to fail."""
    out = []
    for n in range(120):
        changes: dict[str, Any] = {
            "session_id": f"{n:08x}-a1f3-4c2e-9d7b-5e6f7a8b9c0d",
            "tenant_id": TENANTS[n % 3],
            "agent_id": AGENTS[n % 3],
            "tokens_by_model": {m: 10_000 * (n + 1) * (i + 1) for i, m in enumerate(MODELS)},
            "cost_by_model": {MODELS[0]: 1000 * (n + 1)},
            "cost_micros": 1000 * (n + 1),
            "max_context_tokens": 1_000 * n,
        }
        if n % 10 == 1:
            changes.update(status="KILLED", error_type=killed_by("session-budget"))
        elif n % 10 == 2:
            changes.update(status="TIMEOUT")
        elif n % 10 == 3:
            changes.update(
                status="ERROR",
                error_type="ProviderOverloadedWithAVeryLongExceptionName",
                failure_step_kind="TOOL_CALL",
                failure_tool="search_knowledge_base_with_filters",
            )
        elif n % 10 == 4:
            changes.update(status="KILLED")  # a summary from before the cause was recorded
        out.append(summary(n, **changes))
    return out


@pytest.fixture
def answers(client: redis.Redis) -> Answers:
    model = SessionReadModel(client, "t.")
    model.apply(fleet(), 0.7)
    return Answers(model, clock_us=T0 + 3 * HOUR_US)


def drawn(rendered: render.Rendered, wide: bool = False) -> list[str]:
    console = Console(width=250 if wide else WIDTH, record=True, color_system=None)
    for item in rendered:
        console.print(item)
    return console.export_text().splitlines()


def assert_fits(lines: list[str], rows: int) -> None:
    """Every line fits 100 columns and every row is one line: no cell wrapped."""
    assert max(len(line) for line in lines) <= WIDTH, "\n".join(lines)
    body = [line for line in lines if line.startswith("│")]
    assert len(body) == rows, "\n".join(lines)


def test_cost_is_one_line_per_scope_within_100_columns(answers: Answers) -> None:
    answer = answers.cost()
    scopes = len(answer["scopes"])
    assert scopes == 1 + 3 + 3  # the fleet, three tenants, three agents
    for quantiles in (False, True):
        lines = drawn(render.cost(answer, quantiles=quantiles))
        assert_fits(lines, scopes)
    assert "avg" in "\n".join(drawn(render.cost(answer)))
    assert "p99" in "\n".join(drawn(render.cost(answer, quantiles=True)))
    wide = drawn(render.cost(answer, wide=True), wide=True)
    assert max(len(line) for line in wide) > WIDTH  # avg, p50, p99, max and n of 3 periods
    assert "agent:initech-international/research-agent-with-a-long-name" in "\n".join(wide)


def test_top_cost_keeps_what_made_it_expensive_on_one_line(answers: Answers) -> None:
    answer = answers.top_cost(pct=5.0, since="30d")
    lines = drawn(render.top_cost(answer))
    assert_fits(lines, len(answer["top"]) + 1)  # and the median
    text = "\n".join(lines)
    assert "(3) " in text  # how many models (then the one that used most)
    assert "median" in text
    # the whole ids and every model's tokens with --wide
    wide = "\n".join(drawn(render.top_cost(answer, wide=True), wide=True))
    assert answer["top"][0]["session_id"] in wide
    assert MODELS[0] in wide
    assert MODELS[2] in wide


def test_outcomes_name_the_killing_policy_and_the_idle_time(answers: Answers) -> None:
    answer = answers.outcomes(since="30d", idle_timeout_s=900)
    causes = {m["cause"]: m for m in answer["failure_modes"]}
    assert causes["KILL by policy session-budget"]["statuses"] == {"KILLED": 12}
    assert causes["idle for 15m"]["statuses"] == {"TIMEOUT": 12}
    assert "KILL (policy not recorded" in " ".join(causes)  # an older summary: no policy recorded
    lines = drawn(render.outcomes(answer))
    assert_fits(lines, 4 + len(answer["failure_modes"]))
    text = "\n".join(lines)
    assert "KILL by policy session-budget" in text
    assert "idle for 15m" in text
    # --json is the same answer: the cause is in it
    assert "session-budget" in json.dumps(answer)


def test_quality_and_tree_fit(answers: Answers) -> None:
    answer = answers.quality(0.95, since="30d")
    assert_fits(drawn(render.quality({"since": "30d", **answer})), len(answer["categories"]))
    top = answers.top_cost(pct=1.0, since="30d")["top"][0]["session_id"]
    tree = answers.session_tree(top, since="30d")
    assert_fits(drawn(render.tree(tree)), 1)


def test_pii_is_entity_by_hop_and_destinations_on_request(client: redis.Redis) -> None:
    ledger = PiiLedger(client, "t.")
    entities = ("EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN")
    hops = (("TOOL_ARGUMENTS", "BLOCK"), ("TOOL_RESULT", "LOG"), ("OUTPUT", "REDACT"))
    ledger.record(
        finding(
            n,
            entity_type=entities[n % 3],
            hop=hops[(n // 3) % 3][0],
            handling=hops[(n // 3) % 3][1] if n % 7 else "LOG",
            destination=f"tool:some_tool_number_{n % 11}",
            tool_name=f"some_tool_number_{n % 11}",
        )
        for n in range(200)
    )
    answer = {"since": "30d", **ledger.counts(T0 - HOUR_US, T0 + 300 * 1_000_000).as_dict()}
    by_hop = render.pii_by_hop(answer["rows"])
    assert len(by_hop) == 9  # 3 entities x 3 hops
    assert sum(r["count"] for r in by_hop) == answer["total"] == 200
    lines = drawn(render.pii(answer))
    assert_fits(lines, 9)
    assert "BLOCK" in "\n".join(lines)
    assert "LOG" in "\n".join(lines)
    destination = drawn(render.pii(answer, by="destination"))
    assert_fits(destination, len(answer["rows"]))
    assert len(answer["rows"]) > 9


@pytest.mark.parametrize("name", ["drift", "latency"])
def test_answers_captured_from_a_demo_run_fit(name: str) -> None:
    """``ask drift`` and ``ask latency`` as a demo run answered them (--json, saved)."""
    answer = json.loads((ANSWERS / f"{name}.json").read_text())
    if name == "drift":
        lines = drawn(render.drift(answer))
        rows = sum(len(s["rows"]) for s in answer["scopes"])
        assert "SHIFT" in "\n".join(lines)
        assert "layer prompt" in "\n".join(lines)
    else:
        lines = drawn(render.latency(answer, "24h"))
        rows = len(answer.get("step_ms_by_kind", {})) + len(answer["slowest_today"])
    assert_fits(lines, rows)


def test_formatting() -> None:
    assert render.compact(812) == "812"
    assert render.compact(61_066) == "61.1k"
    assert render.compact(1_237_211) == "1.24M"
    assert render.short_id("62c89b17-a1f3-4c2e", wide=False) == "62c89b17…"
    assert render.short_id("62c89b17-a1f3-4c2e", wide=True) == "62c89b17-a1f3-4c2e"
    assert render.p_value(0.00089) == "<0.001"
    assert render.p_value(0.17) == "0.17"
