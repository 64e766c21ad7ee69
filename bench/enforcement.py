"""Prevention in the client: denied tools, session budgets, the checks' cost, policy changes.

    python -m bench.enforcement [--sessions 20] [--steps 2000] [--changes 5]

Uses the stack of GOVERNOR_BOOTSTRAP (starting the local one if needed) and a worker of its own,
which publishes its signed policy set on gov.policies; every client loads it from there. Each
figure is printed next to a raw reference measured in the same run:

- executions of a denied tool: agents calling ``drop_table`` in a tight loop, with client checks
  (goal 0) and without (the worker's KILL arrives after the fact);
- session-budget overshoot, in steps that ran past the limit and in dollars: sessions spending
  with ``s.llm(max_output_tokens=...)`` until stopped, with checks (goal 0) and without;
- an agent's budget shared by 20 concurrent sessions: overshoot with the Redis reservations
  the client derives from the policy (goal: at most one estimated call) and without;
- time added per step by the checks (no Redis, PII rules off the path), p50/p99, next to the
  time to record the step itself; with a Redis reservation; the PII scan of a tool's
  arguments, apart;
- time for a policy change to reach a running client: from the file written to the worker's
  folder to the client enforcing the new set (the worker polls its folder every 2 s).
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import bench_stack, percentile
from streams.client import Governor, SessionKilled, StepBlocked
from streams.client.governor import Session
from streams.control import KeyRing
from streams.settings import Settings
from streams.worker import WorkerProcess

LIMIT_USD = 0.05
#: an agent's budget shared by 20 concurrent sessions of 5 calls: 100 calls, room for 62
AGENT_LIMIT_USD = 0.50
POLICY = f"""version: 1
policies:
  - id: bench-session-budget
    kind: budget
    scope: session
    limit_usd: {LIMIT_USD}
    warn_at: null
    action: kill
  - id: bench-denied-tools
    kind: tools
    deny: ["drop_*"]
    action: kill
  - id: bench-loop
    kind: loop
    max_repeats: 1000000
  - id: bench-duration
    kind: max_duration
    max_duration: 2h
  - id: bench-step-rate
    kind: step_rate
    max_steps: 1000000
  - id: bench-agent-budget
    kind: budget
    scope: agent
    window: 1d
    limit_usd: {AGENT_LIMIT_USD}
    warn_at: null
    action: kill
    match: {{agents: ["bench-fleet-*", "bench-reserve"]}}
"""
#: gpt-4o: 2000 input tokens at $2.50 and 300 output at $10 per 1M: $0.008 a call
CALL_USD = 0.008


def governor(settings: Settings, checks: bool, agent: str) -> Governor:
    keys = KeyRing.from_dir(settings.control_keys_dir)
    return Governor("bench", agent, settings=settings, public_keys=keys, checks=checks)


def denied_tool_runs(gov: Governor, sessions: int, tries: int) -> int:
    """How often a denied tool's body ran, over ``sessions`` sessions trying it ``tries`` times."""
    ran = 0
    for _ in range(sessions):
        with gov.session() as s:
            try:
                for _ in range(tries):
                    with s.tool(name="drop_table", args=None):
                        ran += 1  # the side effect that must never happen
                    time.sleep(0.005)  # a fast agent loop: 5 ms between tool calls
            except (StepBlocked, SessionKilled):
                pass
    return ran


def budget_overshoot(gov: Governor, sessions: int) -> tuple[int, float]:
    """(steps that ran with the session past its limit, dollars past it), over the sessions."""
    steps_over, dollars_over = 0, 0.0
    for _ in range(sessions):
        spent = 0.0
        with gov.session() as s:
            try:
                for _ in range(200):
                    with s.llm(model="gpt-4o", input_tokens=2000, max_output_tokens=400) as step:
                        step.usage(input_tokens=2000, output_tokens=300, cost_usd=CALL_USD)
                    spent += CALL_USD
                    if spent > LIMIT_USD + 1e-12:
                        steps_over += 1
                    time.sleep(0.005)
            except (StepBlocked, SessionKilled):
                pass
        dollars_over += max(0.0, spent - LIMIT_USD)
    return steps_over, dollars_over


def fleet_overshoot(gov: Governor, sessions: int) -> tuple[int, float]:
    """(calls past the agent's budget, dollars past it) of ``sessions`` concurrent sessions of
    one agent, each making up to 5 calls."""
    calls: list[float] = []
    lock = threading.Lock()

    def run() -> None:
        with gov.session() as s:
            try:
                for _ in range(5):
                    with s.llm(model="gpt-4o", input_tokens=2000, max_output_tokens=400) as step:
                        step.usage(input_tokens=2000, output_tokens=300, cost_usd=CALL_USD)
                    with lock:
                        calls.append(CALL_USD)
                    time.sleep(0.02)
            except (StepBlocked, SessionKilled):
                pass

    threads = [threading.Thread(target=run) for _ in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    over = max(0.0, sum(calls) - AGENT_LIMIT_USD)
    return round(over / CALL_USD), over


def reservation_costs(settings: Settings, steps: int) -> list[float]:
    """Microseconds of the checks of an LLM step holding a Redis reservation (settled apart)."""
    with governor(settings, True, "bench-reserve") as gov:
        s: Session = gov.session()
        s.start()
        llm = {"model": "gpt-4o-mini", "input_tokens": 10, "output_tokens": 10, "content": []}
        times = []
        for _ in range(steps):
            started = time.perf_counter_ns()
            s._gate("LLM_CALL", dict(llm))
            times.append((time.perf_counter_ns() - started) / 1000)
            gov.reservations.settle(s._held, 0, gov.now_us())
            s._held = None
        s.finish()
    return times


def timed(steps: int, step: Callable[[], object]) -> list[float]:
    """Microseconds per call of ``step``."""
    times = []
    for _ in range(steps):
        started = time.perf_counter_ns()
        step()
        times.append((time.perf_counter_ns() - started) / 1000)
    return times


def check_costs(settings: Settings, steps: int) -> dict[str, list[float]]:
    """Per step: the checks alone (tool, LLM), recording a step (the raw reference), and the
    PII scan of a tool's arguments."""
    with governor(settings, True, "bench-cost") as gov:
        s: Session = gov.session()
        s.start()
        # steps without content: the policy checks alone (the PII scan is measured apart below)
        tool = {"tool_name": "lookup_order", "operation": "execute_tool", "content": []}
        llm = {"model": "gpt-4o", "input_tokens": 2000, "output_tokens": 400, "content": []}
        for _ in range(200):  # a session with history: the state the checks fold into
            s.tool_call(name="lookup_order", duration_ms=1.0, obey=False)
        times = {
            "checks, tool step": timed(steps, lambda: s._gate("TOOL_CALL", dict(tool))),
            "checks, LLM step": timed(steps, lambda: s._gate("LLM_CALL", dict(llm))),
            "raw: recording a step": timed(
                steps, lambda: s.tool_call(name="lookup_order", duration_ms=1.0, obey=False)
            ),
        }
        s.finish()
    with governor(settings, True, "bench-pii") as gov:
        s = gov.session()
        s.start()
        # an address: the scanner's prefilter lets it through, presidio analyses it (no block)
        args = {"order": 4242, "notify": "desk@example.org"}
        s.guard_tool(name="lookup_order", args=args)  # presidio loads once
        times["PII scan of tool args (full)"] = timed(
            max(50, steps // 20), lambda: s.guard_tool(name="lookup_order", args=args)
        )
        s.finish()
    return times


def policy_change_latency(settings: Settings, folder: Path, changes: int) -> list[float]:
    """Seconds from a changed file in the worker's folder to a running client enforcing it."""
    latencies = []
    with governor(settings, True, "bench-change") as gov:
        for n in range(2, changes + 2):
            text = POLICY.replace("version: 1", f"version: {n}")
            started = time.monotonic()
            (folder / "governor.yaml").write_text(text)
            deadline = started + 30
            while gov.policy_set.version != n and time.monotonic() < deadline:
                time.sleep(0.005)
            if gov.policy_set.version != n:
                raise SystemExit(f"policy v{n} did not reach the client within 30 s")
            latencies.append(time.monotonic() - started)
    return latencies


def report_us(name: str, values: list[float]) -> None:
    print(
        f"  {name:<30} n={len(values):<6} p50 {percentile(values, 0.5):9.1f} us   "
        f"p99 {percentile(values, 0.99):9.1f} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--steps", type=int, default=2000, help="steps timed per measurement")
    parser.add_argument("--changes", type=int, default=5, help="policy changes timed")
    args = parser.parse_args()
    with bench_stack() as base:
        folder = base.state_dir / f"bench-policies-{base.app_id}"
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("prices.yaml", "pii.yaml"):
            shutil.copy(base.policies_dir / name, folder)
        (folder / "governor.yaml").write_text(POLICY)
        settings = base.replace(policies_dir=folder)
        log = settings.state_dir / "logs" / "bench-enforcement-worker.log"
        with WorkerProcess(settings, log) as worker:
            while not (worker.get_json("/ingest") or {}).get("ready"):
                time.sleep(0.2)
            with governor(settings, True, "bench-probe") as probe:
                deadline = time.monotonic() + 30
                while probe.policy_set.source != "gov.policies" and time.monotonic() < deadline:
                    time.sleep(0.1)  # the worker publishes its signed set at start
                if probe.policy_set.source != "gov.policies":
                    raise SystemExit("the worker's signed policy set did not reach a client")
            tools: dict[bool, int] = {}
            budgets: dict[bool, tuple[int, float]] = {}
            fleet: dict[bool, tuple[int, float]] = {}
            for checks in (False, True):
                with governor(settings, checks, f"bench-tools-{checks}") as gov:
                    tools[checks] = denied_tool_runs(gov, args.sessions, 20)
                with governor(settings, checks, f"bench-budget-{checks}") as gov:
                    budgets[checks] = budget_overshoot(gov, args.sessions)
                with governor(settings, checks, f"bench-fleet-{checks}") as gov:
                    fleet[checks] = fleet_overshoot(gov, 20)
            changes = policy_change_latency(settings, folder, args.changes)
        # timed with the worker stopped: on this 2-core machine it would take the CPU the
        # agent process has (in production it runs elsewhere)
        costs = check_costs(settings, args.steps)
        costs["checks + reservation, LLM"] = reservation_costs(settings, args.steps // 2)
    sessions = args.sessions
    print(f"denied tool 'drop_table', {sessions} sessions trying it 20 times each (5 ms apart):")
    print(f"  executions with client checks    {tools[True]:>6}   (goal 0)")
    print(f"  raw: worker KILL only            {tools[False]:>6}")
    steps_on, usd_on = budgets[True]
    steps_off, usd_off = budgets[False]
    print(f"session budget ${LIMIT_USD} over {sessions} sessions, ${CALL_USD} calls (5 ms apart):")
    print(f"  overshoot with client checks     {steps_on:>6} steps  ${usd_on:.4f}   (goal 0)")
    print(f"  raw: worker KILL only            {steps_off:>6} steps  ${usd_off:.4f}")
    calls_on, fleet_on = fleet[True]
    calls_off, fleet_off = fleet[False]
    print(f"agent budget ${AGENT_LIMIT_USD} shared by 20 concurrent sessions (5 calls each):")
    print(f"  overshoot with reservations      {calls_on:>6} calls  ${fleet_on:.4f}   (goal <= 1)")
    print(f"  raw: worker decision only        {calls_off:>6} calls  ${fleet_off:.4f}")
    print("time per step (PII apart; Redis only where named):")
    for name, values in costs.items():
        report_us(name, values)
    ms = [s * 1000 for s in changes]
    print(
        f"policy change -> running client: n={len(ms)} p50 {percentile(ms, 0.5):.0f} ms   "
        f"p99 {percentile(ms, 0.99):.0f} ms (the worker polls its folder every 2 s)"
    )


if __name__ == "__main__":
    main()
