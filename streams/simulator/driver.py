"""Playing planned sessions through the real client, in event-time order, on a simulated clock.

One :class:`~streams.client.Governor` per (tenant, agent) shares a :class:`SimClock` the driver
sets to each step's planned start before it plays the step, so session start and end, outputs
and decision expiry all run on simulated time. Sessions interleave: the next action is always
the earliest pending one among the open sessions (at most ``concurrency`` of them), so each
session keeps its order and event time roughly increases across the run.

A plan says what the agent would do; the client decides what happens: a KILL raises
:class:`SessionKilled` before the next step and the session ends there as KILLED (PauseTimeout
and BudgetExhausted end it as ERROR). A tool call the client's PII guard refuses raises
:class:`ToolBlocked` instead of running; the simulated agent catches it and carries on with its
next step (the plan expects this: see :mod:`streams.simulator.plan`). Every event the client
emits is recorded, and the ground truth is folded from those events when the session is done.
"""

from __future__ import annotations

import contextlib
import heapq
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from streams.client import Governor, GovernorError, StepBlocked, ToolBlocked
from streams.control import KeyRing
from streams.pipeline.causes import killed_by
from streams.settings import Settings
from streams.simulator.plan import (
    ERROR,
    OK,
    EvaluationStep,
    LlmStep,
    OutputStep,
    PlannedStep,
    SessionPlan,
    ToolStep,
)
from streams.simulator.truth import session_outcome

EventRecord = dict[str, Any]
EventSink = Callable[[EventRecord], None]


class SimClock:
    """Simulated epoch seconds, moved by the driver (read by the client's threads too)."""

    def __init__(self, now_us: int = 0) -> None:
        self.now_us = now_us

    def set_us(self, now_us: int) -> None:
        self.now_us = now_us

    def __call__(self) -> float:
        return self.now_us / 1_000_000


# --- what the driver needs of the client ---------------------------------------------------


class SessionLike(Protocol):
    session_id: str

    def start(self) -> None: ...

    def finish(
        self,
        exc: BaseException | None = None,
        *,
        status: str | None = None,
        error_type: str | None = None,
    ) -> None: ...

    def llm_call(
        self,
        *,
        model: str,
        provider: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_input_tokens: int | None = None,
        cost_usd: float | None = None,
        duration_ms: float = 0.0,
        status: str = "OK",
        error_type: str | None = None,
        content: Iterable[tuple[str, str]] | None = None,
        start_us: int | None = None,
    ) -> dict[str, Any]: ...

    def tool_call(
        self,
        *,
        name: str,
        args: Any = None,
        result: Any = None,
        duration_ms: float = 0.0,
        status: str = "OK",
        error_type: str | None = None,
        call_id: str | None = None,
        cost_usd: float | None = None,
        start_us: int | None = None,
    ) -> dict[str, Any]: ...

    def evaluation(
        self, *, name: str, score: float, start_us: int | None = None
    ) -> dict[str, Any]: ...

    def output(self, text: str) -> dict[str, Any]: ...


class GovernorLike(Protocol):
    def session(
        self,
        session_id: str | None = None,
        *,
        category: str | None = None,
        prompt_version: str | None = None,
        model_version: str | None = None,
        tool_schema_version: str | None = None,
    ) -> SessionLike: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self, timeout_s: float = 10.0) -> None: ...


@dataclass(frozen=True)
class AgentKey:
    tenant_id: str
    agent_id: str
    agent_version: str


#: builds the governor of one (tenant, agent); every event it emits must reach ``sink``
Connect = Callable[[AgentKey, SimClock, EventSink], GovernorLike]


class RecordingGovernor(Governor):
    """The real Governor, also handing every event it emits to ``sink`` (for the truth)."""

    def __init__(self, *args: Any, sink: EventSink, **kwargs: Any) -> None:
        self._sink = sink
        super().__init__(*args, **kwargs)

    def emit(self, event: dict[str, Any]) -> None:
        super().emit(event)
        self._sink(event)


def real_governors(
    settings: Settings,
    *,
    public_keys: KeyRing | None = None,
    obey: bool = True,
    checks: bool = False,
) -> Connect:
    """Connect through the real client (a producer and a control subscriber per agent).

    By default the fleet checks nothing itself (the ground truth of ``governor simulate`` models
    a fleet that only obeys the worker's decisions); ``checks=True`` runs the client's own
    checks before every step (``governor demo``): a denied tool or a step past a session budget
    is refused before it runs, recorded as BLOCKED, and a KILL policy's refusal ends the session
    as KILLED naming the policy.
    """

    def connect(key: AgentKey, clock: SimClock, sink: EventSink) -> GovernorLike:
        return RecordingGovernor(
            tenant=key.tenant_id,
            agent=key.agent_id,
            agent_version=key.agent_version,
            settings=settings,
            public_keys=public_keys,
            clock=clock,
            obey=obey,
            # unless asked, the fleet obeys decisions and checks nothing itself
            checks=checks,
            sink=sink,
        )

    return connect


# --- driving -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriveReport:
    sessions: int
    outcomes: Mapping[str, int]
    emitted: int
    delivered: int
    dropped: int
    failed: int
    pending: int
    decisions_accepted: int
    elapsed_s: float


@dataclass
class _Open:
    plan: SessionPlan
    session: SessionLike
    events: list[EventRecord] = field(default_factory=list)
    #: 0 = start, 1..len(steps) = the steps, len(steps) + 1 = finish
    next_action: int = 0

    def action_time(self) -> int | None:
        """Event time of the next action, or None when the session has nothing left to do."""
        plan, n = self.plan, self.next_action
        if n == 0:
            return plan.start_us
        if n <= len(plan.steps):
            return plan.steps[n - 1].start_us
        if n == len(plan.steps) + 1 and plan.end_us is not None:
            return plan.end_us
        return None


SessionDone = Callable[[SessionPlan, Sequence[EventRecord]], None]


def drive(
    plans: Sequence[SessionPlan],
    connect: Connect,
    *,
    concurrency: int = 64,
    rate: float = 0.0,
    console: Console | None = None,
    on_session: SessionDone | None = None,
    close_timeout_s: float = 10.0,
) -> DriveReport:
    """Play ``plans`` (sorted by start) through governors from ``connect``; see the module doc.

    ``rate`` paces the run at that many events per wall-clock second (0: as fast as possible).
    ``on_session`` gets each session's plan and emitted events once it is done (finished,
    killed or abandoned after its last step).
    """
    clock = SimClock(plans[0].start_us if plans else 0)
    governors: dict[AgentKey, GovernorLike] = {}
    open_sessions: dict[str, _Open] = {}
    outcomes: Counter[str] = Counter()
    emitted = 0

    def sink(event: EventRecord) -> None:
        nonlocal emitted
        emitted += 1
        current = open_sessions.get(event["session_id"])
        if current is not None:
            current.events.append(event)

    def governor_of(plan: SessionPlan) -> GovernorLike:
        key = AgentKey(plan.tenant_id, plan.agent_id, plan.agent_version)
        if key not in governors:
            governors[key] = connect(key, clock, sink)
        return governors[key]

    def done(item: _Open) -> None:
        del open_sessions[item.plan.session_id]
        outcomes[session_outcome(item.events)] += 1
        if on_session is not None:
            on_session(item.plan, item.events)

    started = time.monotonic()
    queue: list[tuple[int, int, str]] = []  # (event time, plan index, session id)
    waiting = iter(plans)
    upcoming = next(waiting, None)
    progress = _progress(console, sum(p.planned_events for p in plans))
    try:
        while queue or upcoming is not None:
            # open the next session when there is room and nothing open is due before it
            while (
                upcoming is not None
                and len(open_sessions) < concurrency
                and (not queue or upcoming.start_us <= queue[0][0])
            ):
                session = governor_of(upcoming).session(
                    upcoming.session_id,
                    category=upcoming.category,
                    prompt_version=upcoming.prompt_version,
                    model_version=upcoming.model_version,
                    tool_schema_version=upcoming.tool_schema_version,
                )
                open_sessions[upcoming.session_id] = _Open(upcoming, session)
                heapq.heappush(queue, (upcoming.start_us, upcoming.index, upcoming.session_id))
                upcoming = next(waiting, None)
            at_us, _, session_id = heapq.heappop(queue)
            item = open_sessions[session_id]
            clock.set_us(at_us)
            _pace(rate, started, emitted)
            if _act(item):
                when = item.action_time()
                if when is None:
                    done(item)  # abandoned after its last step: never finished
                else:
                    heapq.heappush(queue, (when, item.plan.index, session_id))
            else:
                done(item)
            if progress is not None:
                progress.show(emitted, at_us)
    finally:
        if progress is not None:
            progress.stop(emitted)
        stats = [gov.stats() for gov in _closed(governors.values(), close_timeout_s)]
    return DriveReport(
        sessions=sum(outcomes.values()),
        outcomes=dict(outcomes),
        emitted=emitted,
        delivered=sum(int(s["delivered"]) for s in stats),
        dropped=sum(int(s["dropped"]) for s in stats),
        failed=sum(int(s["failed"]) for s in stats),
        pending=sum(int(s["pending"]) for s in stats),
        decisions_accepted=sum(int(s["decisions_accepted"]) for s in stats),
        elapsed_s=time.monotonic() - started,
    )


def _act(item: _Open) -> bool:
    """Play the next action of a session; False when the session has ended."""
    plan, session = item.plan, item.session
    n = item.next_action
    item.next_action += 1
    if n == 0:
        session.start()
        return True
    if n > len(plan.steps):
        session.finish(_planned_exception(plan))
        return False
    try:
        _play(session, plan.steps[n - 1])
    except StepBlocked as exc:
        if exc.action == "KILL":
            # the client's own check refused the step under a KILL policy (checks=True): the
            # session is stopped there, KILLED, and its end names the policy
            session.finish(status="KILLED", error_type=killed_by(exc.policy_id))
        else:
            session.finish(exc)
        return False
    except GovernorError as exc:
        # a decision stopped the agent before this step: it ends here, as the client says
        session.finish(exc)
        return False
    return True


def _play(session: SessionLike, step: PlannedStep) -> None:
    if isinstance(step, LlmStep):
        session.llm_call(
            model=step.model,
            provider=step.provider,
            input_tokens=step.input_tokens,
            output_tokens=step.output_tokens,
            cache_read_input_tokens=step.cache_read_input_tokens,
            cost_usd=step.cost_usd,
            duration_ms=step.duration_us / 1000,
            status=step.status,
            error_type=step.error_type,
            content=[(segment.role, segment.text) for segment in step.content],
            start_us=step.start_us,
        )
    elif isinstance(step, ToolStep):
        # the agent takes a refusal (ToolBlocked) and goes on with its next step
        with contextlib.suppress(ToolBlocked):
            session.tool_call(
                name=step.name,
                args=step.args.text,
                result=None if step.result is None else step.result.text,
                duration_ms=step.duration_us / 1000,
                # a call the plan expects refused is asked for like any other: BLOCKED is the
                # client's to record (a client that ran it would show OK in the events)
                status=OK if step.blocked else step.status,
                error_type=None if step.blocked else step.error_type,
                call_id=step.call_id,
                cost_usd=step.cost_usd,
                start_us=step.start_us,
            )
    elif isinstance(step, EvaluationStep):
        session.evaluation(name=step.name, score=step.score, start_us=step.start_us)
    elif isinstance(step, OutputStep):
        session.output(step.segment.text)  # at the clock's time, which is the step's start


_EXCEPTIONS: dict[str, type[Exception]] = {}


def _planned_exception(plan: SessionPlan) -> BaseException | None:
    """The exception an ERROR session ends with; its class name becomes the error type."""
    if plan.ending != ERROR:
        return None
    name = plan.error_type or "AgentError"
    if name not in _EXCEPTIONS:
        _EXCEPTIONS[name] = type(name, (Exception,), {"__module__": __name__})
    return _EXCEPTIONS[name](f"simulated: session {plan.session_id} fails")


def _pace(rate: float, started: float, emitted: int) -> None:
    if rate <= 0:
        return
    ahead = started + emitted / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)


def _closed(governors: Iterable[GovernorLike], timeout_s: float) -> list[GovernorLike]:
    closed = []
    for gov in governors:
        gov.close(timeout_s)
        closed.append(gov)
    return closed


class _ProgressBar:
    """Events emitted out of those planned, labelled with the simulated time."""

    def __init__(self, console: Console, total: int) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("events"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self._task = self._progress.add_task("simulating", total=total)
        self._progress.start()

    def show(self, emitted: int, at_us: int) -> None:
        when = datetime.fromtimestamp(at_us / 1_000_000, UTC).strftime("%a %Y-%m-%d %H:%M")
        self._progress.update(self._task, completed=emitted, description=when)

    def stop(self, emitted: int) -> None:
        # killed sessions emit less than planned: end the bar full at what was emitted
        self._progress.update(self._task, total=emitted, completed=emitted, description="done")
        self._progress.stop()


def _progress(console: Console | None, total: int) -> _ProgressBar | None:
    return None if console is None else _ProgressBar(console, total)
