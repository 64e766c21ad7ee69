"""Per-call overhead of the framework adapters, next to the same calls unwrapped, in one run.

    python -m bench.adapter_overhead [--calls 2000] [--json]

Uses the stack of GOVERNOR_BOOTSTRAP / GOVERNOR_REDIS_URL (starting the local one if needed),
on topics of its own, with client checks on and a policy set of prices only (the shipped
policies/governor.yaml throttles a session stepping this fast, which would time the throttle's
sleep, not the adapter). The provider is a fake answering in-process (an httpx2 MockTransport), so
what is timed is the SDK plus Governor, not a network:

- OpenAI SDK ``chat.completions.create``: raw and, timed in turn, ``governed(client,
  session)`` with client checks on (decision, ``guard_llm`` on the input, the record after),
  the median and p99 of ``--calls`` calls each;
- the OpenAI Agents SDK: one ``Runner.run`` (a model call, a tool call, a model call) without a
  Governor processor, then with ``GovernorTracingProcessor`` and ``GovernorRunHooks``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2
import openai
from agents import Agent, OpenAIResponsesModel, RunConfig, Runner
from agents.tracing import set_trace_processors

from bench.common import bench_stack, percentile
from streams.client import Governor
from streams.client.openai_agents import GovernorRunHooks, GovernorTracingProcessor
from streams.client.sdk_wrappers import governed
from tests.integration.client.adapters.test_openai_agents import FakeResponses, lookup_order
from tests.integration.client.adapters.test_sdk_wrappers import ASK, FakeProvider


def _times(call: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def _interleaved(a: Any, b: Any, n: int) -> tuple[list[float], list[float]]:
    """``a`` and ``b`` timed in turn, so a change of load on the machine hits both alike."""
    out_a: list[float] = []
    out_b: list[float] = []
    for _ in range(n):
        out_a += _times(a, 1)
        out_b += _times(b, 1)
    return out_a, out_b


def _summary(us: list[float]) -> dict[str, float]:
    return {"p50_us": round(percentile(us, 0.5), 1), "p99_us": round(percentile(us, 0.99), 1)}


async def _agent_runs(gov: Governor | None, n: int) -> list[float]:
    fake = FakeResponses()
    client = openai.AsyncOpenAI(
        base_url="http://fake/v1",
        api_key="k",
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(fake)),
    )
    agent: Agent[Any] = Agent(
        name="bench", tools=[lookup_order], model=OpenAIResponsesModel("gpt-4.1", client)
    )
    processor = GovernorTracingProcessor(gov) if gov is not None else None
    set_trace_processors([processor] if processor is not None else [])
    hooks = GovernorRunHooks(processor) if processor is not None else None
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await Runner.run(
            agent, "where is order 7?", hooks=hooks, run_config=RunConfig(group_id=f"b-{i}")
        )
        out.append((time.perf_counter() - t0) * 1e6)
    set_trace_processors([])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per measurement")
    parser.add_argument("--runs", type=int, default=200, help="agent runs per measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with bench_stack() as settings, tempfile.TemporaryDirectory() as folder:
        shutil.copy(settings.policies_dir / "prices.yaml", Path(folder) / "prices.yaml")
        gov = Governor(
            "bench",
            "adapter-bench",
            settings=settings.replace(policies_dir=Path(folder)),
            obey=False,
            checks=True,
        )
        try:
            http = httpx2.Client(transport=httpx2.MockTransport(FakeProvider()))
            raw = openai.OpenAI(base_url="http://fake/v1", api_key="k", http_client=http)
            session = gov.session()
            session.start()
            client = governed(raw, session)

            messages: Any = ASK

            def call_raw() -> None:
                raw.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=50)

            def call_governed() -> None:
                client.chat.completions.create(model="gpt-4o-mini", messages=ASK, max_tokens=50)

            _times(call_raw, 50), _times(call_governed, 50)  # warm up
            raw_us, governed_us = _interleaved(call_raw, call_governed, args.calls)
            results = {
                "openai_sdk_raw": _summary(raw_us),
                "openai_sdk_governed": _summary(governed_us),
                "agents_run_raw": _summary(asyncio.run(_agent_runs(None, args.runs))),
                "agents_run_governed": _summary(asyncio.run(_agent_runs(gov, args.runs))),
            }
            session.finish()
            gov.emitter.flush()
            stats = gov.stats()
            results["client"] = {"events_emitted": stats["emitted"], **stats["checks"]}
        finally:
            gov.close()
    if args.json:
        print(json.dumps(results))
        return
    for name, figures in results.items():
        print(f"{name:24} " + "  ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
