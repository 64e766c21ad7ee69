"""A fleet through the gateway gets the same ``governor ask`` answers as the same fleet through
the Python client (real worker, broker and Redis; the provider faked): the gateway records
what the client records."""

from __future__ import annotations

import time
from typing import Any

import openai

from streams.client import Governor
from streams.worker import WorkerProcess
from tests.integration.gateway.conftest import AGENT, PARITY_KEY, PARITY_TENANT, Harness
from tests.integration.gateway.fake_upstream import INPUT_TOKENS, OUTPUT_TOKENS
from tests.kafka_helpers import ask

CLIENT_TENANT = "parity-cl"
#: LLM calls per session: sessions of different cost, so p50 and p99 differ
CALLS = [1, 2, 3, 4, 2, 1]


def through_the_gateway(h: Harness) -> None:
    client = openai.OpenAI(base_url=h.openai_url, api_key=PARITY_KEY, max_retries=0)
    for n, calls in enumerate(CALLS):
        for i in range(calls):
            headers = {"X-Governor-Session": f"gw-parity-{n}"}
            if i == calls - 1:  # a proxy sees no end: the agent says it
                headers["X-Governor-Session-End"] = "true"
            client.chat.completions.create(
                model="gpt-4o",
                messages=[{"role": "user", "content": f"question {i}"}],
                max_tokens=400,
                extra_headers=headers,
            )


def through_the_client(h: Harness) -> None:
    gov = Governor(CLIENT_TENANT, AGENT, settings=h.settings, public_keys=h.keyring, checks=True)
    try:
        for n, calls in enumerate(CALLS):
            with gov.session(f"cl-parity-{n}") as s:
                for i in range(calls):
                    content = [("USER", f"question {i}")]
                    with s.llm(model="gpt-4o", content=content, max_output_tokens=400) as step:
                        step.usage(input_tokens=INPUT_TOKENS, output_tokens=OUTPUT_TOKENS)
    finally:
        gov.close()


def scope(answer: dict[str, Any], tenant: str) -> dict[str, Any] | None:
    rows = [row for name, row in answer["scopes"].items() if tenant in name]
    return rows[0]["today"] if rows else None


def test_ask_answers_the_same_for_a_fleet_through_the_gateway_and_through_the_client(
    harness: Harness, tmp_path: Any
) -> None:
    h = harness
    settings = h.settings.replace(keys_dir=h.keys_dir)
    with WorkerProcess(settings, tmp_path / "worker.log"):
        through_the_gateway(h)
        through_the_client(h)
        deadline = time.monotonic() + 30
        while True:
            answer = ask(settings, "cost")
            gateway, client = scope(answer, PARITY_TENANT), scope(answer, CLIENT_TENANT)
            if gateway and client and gateway["sessions"] == client["sessions"] == len(CALLS):
                break
            assert time.monotonic() < deadline, f"the read-model did not catch up: {answer}"
            time.sleep(0.25)
    assert gateway == client
    assert round(gateway["cost_usd"], 6) == round(sum(CALLS) * 0.008, 6)
