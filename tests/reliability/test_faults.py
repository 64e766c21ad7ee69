"""The fault suite (issue 11): Redis stopped and killed, the worker paused past its group's
session timeout, a poison corpus and refused policy files, each during a fleet on the real stack.

For each: nothing lost (the worker's totals, its summaries and the Redis read-model equal the
truth of exactly the events produced), decisions keep reaching the control topic, ``/readyz``
is red while degraded and green after, and the recovery time is printed (``pytest -s``). The
long variants are in ``bench/faults.py``; the helpers in :mod:`tests.reliability.faults`.

The faults mostly wait (the Redis SIGSTOP for 60 s): they run on three lanes side by side,
each with a worker, topics and fleet of its own (:data:`LANES`).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from streams.codec import Codecs
from streams.pipeline.pricing import load_prices
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.conftest import isolated_settings
from tests.reliability.faults import (
    REPO,
    FaultRun,
    HealthSample,
    PoisonKind,
    PolicyChange,
    Scenario,
    check_corpus,
    describe_run,
    metric_values,
    now_us,
    poison,
    poison_corpus,
    policy_files,
    redis_kill,
    redis_stop,
    run_fault,
    worker_stop,
)

#: a decision may take this long while a dependency is away (the issue: "within a few seconds")
KILL_DEADLINE_S = 5.0
#: readiness must turn red within this long of a fault starting
DETECT_S = 8.0
RECOVERY_BOUND_S = 30.0


def report(run: FaultRun, name: str) -> None:
    """The figures of one fault, on stdout (pytest -s) for the record."""
    ctx = run.ctx
    during = [p.latency_s for p in run.probes_between(ctx.fault_start, ctx.fault_end)]
    before = [p.latency_s for p in run.probes_between(0.0, ctx.fault_start)]
    worst = max((x for x in during if x is not None), default=float("nan"))
    ref = max((x for x in before if x is not None), default=float("nan"))
    print(
        f"\n[{name}] events {run.produced}, lost {run.lost()}, KILL max before "
        f"{ref * 1000:.0f} ms / during {worst * 1000:.0f} ms ({len(during)} probes), "
        f"/readyz red {run.seconds_red():.1f}s, recovery {run.recovery_s}s, "
        f"totals settled {run.totals_s:.1f}s after the fleet"
    )


def since_ready(run: FaultRun) -> list[HealthSample]:
    """The health samples from the fleet's start (the worker was ready) to the end."""
    return run.ctx.poller.between(run.ctx.started_at, float("inf"))


def assert_nothing_lost(run: FaultRun) -> None:
    info = describe_run(run)
    assert run.worker_exit is None, f"the worker exited ({run.worker_exit})\n{info}"
    assert "FATAL in" not in run.log_text, info
    problems = run.total_problems()
    assert not problems, f"{len(problems)} totals differ: {problems[:10]}\n{info}"
    summaries = run.summary_problems()
    assert not summaries, f"{len(summaries)} summaries differ: {summaries[:10]}\n{info}"
    # the truth of the events produced is the truth of the raw topic
    assert run.raw_records == run.produced, (run.raw_records, run.produced)
    assert run.raw_truths == run.truths


def assert_green_after(run: FaultRun) -> None:
    info = describe_run(run)
    assert run.recovery_s is not None, f"/readyz never green and caught up after the fault\n{info}"
    assert run.recovery_s < RECOVERY_BOUND_S, info
    tail = run.ctx.poller.samples[-8:]
    assert all(s.readyz == 200 and s.healthz == 200 for s in tail), (tail, info)


def assert_probes_killed(run: FaultRun, start: float, end: float, deadline_s: float) -> None:
    probes = run.probes_between(start, end)
    assert probes, "no probe was sent in the window"
    missing = [p.session_id for p in probes if p.latency_s is None]
    assert not missing, f"probes never killed: {missing}\n{describe_run(run)}"
    slowest = max(p.latency_s or 0.0 for p in probes)
    assert slowest < deadline_s, f"a KILL took {slowest:.2f}s\n{describe_run(run)}"


def assert_read_model_and_mirror(run: FaultRun) -> None:
    assert run.read_model_problems is not None
    assert not run.read_model_problems, run.read_model_problems[:10]
    assert run.mirror_problems is not None
    assert not run.mirror_problems, sorted(run.mirror_problems.items())[:10]


def corpus() -> list[PoisonKind]:
    """The poison corpus, built the same each time."""
    codecs = Codecs.load(Settings().schemas_dir)
    return poison_corpus(codecs, load_prices(REPO / "policies" / "prices.yaml"))


def redis_stop_run(settings: Settings, folder: Path) -> FaultRun:
    # the fleet runs through the whole outage and 4 s past it
    scenario = Scenario("redis-sigstop", sessions=300, fleet_s=67, fault_at_s=3,
                        private_redis=True)  # fmt: skip
    return run_fault(settings, folder, scenario, redis_stop(60.0))


def poison_run(settings: Settings, folder: Path) -> FaultRun:
    scenario = Scenario("poison", sessions=200, fleet_s=13, fault_at_s=3)
    return run_fault(settings, folder, scenario, poison(corpus(), 0.1))


def policies_run(settings: Settings, folder: Path) -> FaultRun:
    # a probe every 0.5 s: each refused file meets several while it is held
    fault, changes = policy_files(folder / "scratch", hold_s=1.0)
    scenario = Scenario("policies", sessions=200, fleet_s=19, fault_at_s=3, probe_every_s=0.5)
    run = run_fault(settings, folder, scenario, fault)
    run.ctx.notes["changes"] = changes
    return run


Lane = dict[str, Callable[[Settings, Path], FaultRun]]

#: faults that run from the module's start on lanes of their own (a thread each, one fault
#: after the other, the first after a delay) while the first tests run in the main thread, a
#: third lane: the faults mostly wait (the SIGSTOP for 60 s), and the three lanes take about
#: as long. The delays keep the workers' start-ups apart. The tests that check these faults
#: come last in the module.
LANES: tuple[tuple[float, Lane], ...] = (
    (0.0, {"test_redis_stopped_for_60s_during_a_fleet": redis_stop_run}),
    (
        12.0,
        {
            "test_refused_policy_files_leave_enforcement_on": policies_run,
            "test_a_poison_corpus_mixed_into_a_fleet": poison_run,
        },
    ),
)


@pytest.fixture(scope="module", autouse=True)
def lanes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[FaultRun]]]:
    """The LANES faults whose tests are selected, started with the module: each has its
    worker, topics, Redis and fleet of its own, as every test here has. Their tests wait for
    them."""
    selected = {
        i.name for i in request.session.items if getattr(i, "module", None) is request.module
    }
    wanted = [
        (delay_s, {name: run for name, run in lane.items() if name in selected})
        for delay_s, lane in LANES
    ]
    if not any(lane for _delay_s, lane in wanted):
        yield {}
        return
    stack_settings: Settings = request.getfixturevalue("stack_settings")
    runs: dict[str, Future[FaultRun]] = {}
    with contextlib.ExitStack() as stack:
        for delay_s, lane in wanted:
            if not lane:
                continue
            pool = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="fault-lane"))
            pool.submit(time.sleep, delay_s)
            for name, run in lane.items():
                folder = tmp_path_factory.mktemp(name.removeprefix("test_")[:30])
                settings = isolated_settings(stack_settings, folder)
                ensure_topics(settings)
                runs[name] = pool.submit(run, settings, folder)
        yield runs


def lane_run(runs: dict[str, Future[FaultRun]], name: str) -> FaultRun:
    # the fixture started it (its test is selected); a lane takes under two minutes
    return runs[name].result(timeout=280)


def test_the_poison_corpus_is_what_it_claims() -> None:
    """Without a stack: 60 named kinds (at least 40), the DECODE ones do not decode, the
    VALIDATE ones do (so the worker must refuse them for their values)."""
    settings = Settings()
    codecs = Codecs.load(settings.schemas_dir)
    kinds = poison_corpus(codecs, load_prices(REPO / "policies" / "prices.yaml"))
    assert len(kinds) >= 40
    assert len({k.name for k in kinds}) == len(kinds)
    check_corpus(codecs, kinds, now_us() - 3600 * 1_000_000, now_us())
    reasons = {k.reason for k in kinds if k.stage == "VALIDATE"}
    assert {"after_session_end", "event_id_reused", "time_in_future", "null_key"} <= reasons


def test_redis_killed_and_restarted_empty_during_a_fleet(topics: Settings, tmp_path: Path) -> None:
    """SIGKILL on Redis (no persistence) and a restart 5 s later: it comes back empty; the
    read-model is rebuilt from <prefix>sessions and the totals equal the truth."""
    scenario = Scenario("redis-kill", sessions=200, fleet_s=17, fault_at_s=5, private_redis=True)
    run = run_fault(topics, tmp_path, scenario, redis_kill(5.0))
    report(run, "redis SIGKILL + restart")
    ctx = run.ctx
    assert_nothing_lost(run)
    assert_probes_killed(run, ctx.fault_start, ctx.fault_end, KILL_DEADLINE_S)
    assert any(s.readyz != 200 for s in ctx.poller.between(ctx.fault_start, ctx.fault_end + 2))
    assert all(s.healthz == 200 for s in since_ready(run)), describe_run(run)
    assert_green_after(run)
    assert "read-model rebuilt" in run.log_text, describe_run(run)
    assert run.read_model_problems is not None
    assert not run.read_model_problems, run.read_model_problems[:10]
    assert run.mirror_problems is not None
    latest = ctx.watcher.latest_by_target()
    issued_after = {t: p for t, p in run.mirror_problems.items() if latest[t].at >= ctx.fault_end}
    assert not issued_after, issued_after
    # the decisions issued before the kill come back too: the mirror rebuilds itself from the
    # control topic when Redis returns empty, since a restarted client reads it to remember
    # its kills (streams/client/governor.py _load_decisions)
    lost = {t: p for t, p in run.mirror_problems.items() if t not in issued_after}
    assert not lost, f"{len(lost)} targets' decisions gone from Redis: {sorted(lost.items())[:3]}"


def test_worker_paused_past_the_group_session_timeout(topics: Settings, tmp_path: Path) -> None:
    """SIGSTOP on the worker for 15 s (its group's session timeout is 10 s), then SIGCONT: the
    same process rejoins and goes on; totals exact, one summary per ended session."""
    # 11 s of fleet after the fault, for the probes sent once it has recovered
    scenario = Scenario("worker-sigstop", sessions=200, fleet_s=30, fault_at_s=4)
    run = run_fault(topics, tmp_path, scenario, worker_stop(15.0))
    report(run, "worker SIGSTOP 15s")
    ctx = run.ctx
    assert ctx.worker.proc is not None
    assert ctx.worker.proc.pid == ctx.notes["pid"]  # the same process: nothing restarted it
    assert_nothing_lost(run)
    # the probes sent while it was stopped are killed once it is back, the later ones at once
    assert_probes_killed(run, ctx.fault_start, ctx.fault_end, 15 + RECOVERY_BOUND_S)
    assert_probes_killed(run, ctx.fault_end + (run.recovery_s or 0) + 1, 1e12, KILL_DEADLINE_S)
    assert all(s.readyz != 200 for s in ctx.poller.between(ctx.fault_start + 1, ctx.fault_end))
    assert_green_after(run)
    log = run.log_text
    assert "lost to the group" in log or "transient fault" in log, describe_run(run)


def test_refused_policy_files_leave_enforcement_on(lanes: dict[str, Future[FaultRun]]) -> None:
    """A policy with ``limit_usd: .inf``, then prices.yaml that is not YAML, then one with a
    NaN price, each written while a fleet runs: refused (/readyz policies check red, the reload
    error counter up by one), the last good set enforces on (probes still killed), green once
    the file is restored; the worker never exits and the totals are priced as before. (On a
    lane of its own: :func:`policies_run`.)"""
    run = lane_run(lanes, "test_refused_policy_files_leave_enforcement_on")
    changes: list[PolicyChange] = run.ctx.notes["changes"]
    report(run, "refused policy files")
    info = describe_run(run)
    assert len(changes) == 3
    for change in changes:
        print(f"  {change.name}: refused after {_since(change.refused, change.written)}s, "
              f"green {_since(change.green, change.restored)}s after the restore")  # fmt: skip
        assert change.refused is not None, (change, info)
        assert change.reload_errors == 1, (change, info)
        assert change.green is not None, (change, info)
        assert_probes_killed(run, change.refused, change.restored, KILL_DEADLINE_S)
    assert_nothing_lost(run)
    assert_probes_killed(run, 0.0, 1e12, KILL_DEADLINE_S)
    assert all(s.healthz == 200 for s in since_ready(run)), info
    assert_green_after(run)


def test_a_poison_corpus_mixed_into_a_fleet(lanes: dict[str, Future[FaultRun]]) -> None:
    """60 kinds of bad record among a fleet's events: each is dead-lettered once with its
    stage and reason, counted by reason, the worker never stalls, the good events add up
    exactly and the watermark stays put (no session times out early after a year-9999
    event). (On a lane of its own: :func:`poison_run`.)"""
    kinds = corpus()
    run = lane_run(lanes, "test_a_poison_corpus_mixed_into_a_fleet")
    report(run, "poison corpus")
    assert_nothing_lost(run)
    info = describe_run(run)
    assert all(s.healthz == 200 for s in since_ready(run)), info
    letters = Counter(d.kind for d in run.dead_letters)
    assert letters == Counter({k.name: 1 for k in kinds}), (letters, info)
    by_name = {d.kind: d for d in run.dead_letters}
    for kind in kinds:
        letter = by_name[kind.name]
        assert letter.stage == kind.stage, (kind.name, letter)
        assert letter.message, kind.name
        if kind.stage == "VALIDATE":
            assert letter.reason == kind.reason, (kind.name, letter)
            assert letter.message.startswith(f"{kind.reason}: "), (kind.name, letter)
    rejected = metric_values(run.metrics, "governor_rejected_events")
    by_reason = {dict(labels)["reason"]: int(n) for labels, n in rejected.items() if n}
    assert by_reason == dict(Counter(k.reason for k in kinds if k.stage == "VALIDATE"))
    dead = sum(metric_values(run.metrics, "governor_dlq_records").values())
    assert dead == len(kinds) == len(run.dead_letters)
    timeouts = sum(s["status"] == "TIMEOUT" for s in run.sessions.values())
    assert timeouts == sum(t["outcome"] == "TIMEOUT" and t["tenant_id"] != "clock"
                           for t in run.truths.values())  # fmt: skip
    assert_green_after(run)


def test_redis_stopped_for_60s_during_a_fleet(lanes: dict[str, Future[FaultRun]]) -> None:
    """SIGSTOP on Redis for 60 s: kills keep coming through Kafka, /readyz red; after SIGCONT
    the totals, summaries, read-model and decision mirror equal the truth. (On a lane of its
    own: :func:`redis_stop_run`.)"""
    run = lane_run(lanes, "test_redis_stopped_for_60s_during_a_fleet")
    report(run, "redis SIGSTOP 60s")
    ctx = run.ctx
    assert_nothing_lost(run)
    assert_probes_killed(run, ctx.fault_start, ctx.fault_end - 1, KILL_DEADLINE_S)
    breakers = [lat for sent, lat in run.fleet_kills if ctx.fault_start <= sent <= ctx.fault_end]
    assert breakers, "no budget breaker of the fleet broke during the outage"
    assert max(breakers) < KILL_DEADLINE_S, breakers
    degraded = ctx.poller.between(ctx.fault_start + DETECT_S, ctx.fault_end)
    assert degraded
    assert all(s.readyz != 200 for s in degraded), describe_run(run)
    assert all(any(f.startswith("redis") for f in s.failing) for s in degraded if s.readyz)
    # liveness is not readiness: a Redis outage must not make the process look dead
    assert all(s.healthz == 200 for s in since_ready(run)), describe_run(run)
    assert_green_after(run)
    assert_read_model_and_mirror(run)


def _since(at: float | None, start: float) -> str:
    return "never" if at is None else f"{at - start:.1f}"


pytestmark = pytest.mark.timeout(300)
