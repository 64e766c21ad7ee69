"""SessionSummary and PiiFinding records for tests, complete enough to encode and apply."""

from __future__ import annotations

from typing import Any

HOUR_US = 3_600_000_000
T0 = 1_764_000_000_000_000  # 2025-11-24, an hour boundary


def summary(n: int, **changes: Any) -> dict[str, Any]:
    """Session ``n``: ends n seconds after T0, costs 100·(n+1) µUSD; ``changes`` override."""
    start = T0 + n * 1_000_000
    record: dict[str, Any] = {
        "session_id": f"s{n:05d}",
        "tenant_id": "acme",
        "agent_id": "support",
        "agent_version": "1",
        "category": "billing",
        "prompt_version": "p1",
        "model_version": "m1",
        "tool_schema_version": "t1",
        "policy_version": 1,
        "status": "OK",
        "error_type": None,
        "failure_step_kind": None,
        "failure_tool": None,
        "start_time_us": start,
        "end_time_us": start + 2_000_000 + n * 1000,
        "cost_micros": 100 * (n + 1),
        "input_tokens": 1000 + n,
        "output_tokens": 200 + n,
        "cache_read_input_tokens": 0,
        "reasoning_output_tokens": 0,
        "steps_by_kind": {"LLM_CALL": 2, "TOOL_CALL": 1},
        "tool_calls": {"search": 1},
        "errors_by_type": {},
        "tokens_by_model": {"m-small": 1200 + 2 * n},
        "cost_by_model": {"m-small": 100 * (n + 1)},
        "retries": 0,
        "max_context_tokens": 1000 + n,
        "unpriced_calls": 0,
        "violations": 0,
        "evaluations": {"helpfulness": 0.9},
        "slowest_step": None,
        "last_seq": 3,
    }
    record.update(changes)
    return record


def finding(n: int, handling: str = "LOG", **changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "finding_id": f"f{n}",
        "event_id": f"e{n}",
        "session_id": f"s{n % 3}",
        "tenant_id": "acme",
        "agent_id": "support",
        "seq": n,
        "time_us": T0 + n * 1_000_000,
        "entity_type": "EMAIL_ADDRESS",
        "hop": "CONTEXT",
        "tool_name": None,
        "destination": "model",
        "handling": handling,
        "start": 0,
        "end": 10,
        "score": 1.0,
        "fingerprint": f"fp{n % 2}",
        "key_id": "pii1",
        "recognizer": "EmailRecognizer",
    }
    record.update(changes)
    return record
