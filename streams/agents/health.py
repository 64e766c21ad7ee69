"""Liveness of the Faust agents, and the retry rule they share.

An exception inside a Faust agent acks the message and the agent stops without a word, so the
agents never let one out: a transient fault (Redis unreachable, slow or refusing; Kafka
retriable) is retried with backoff until the same batch is applied, and anything else ends the
process through :func:`streams.processor.faults.fatal`. Retrying is safe because each step of a
batch is idempotent or remembers how far it got (see the agents).

Each agent has one :class:`AgentHealth`, which the worker's ``/healthz`` reads: an agent that is
waiting for events is idle, not stalled; one inside a batch must make progress.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, TypeVar

from aiokafka.errors import KafkaError as AioKafkaError
from confluent_kafka import KafkaException

from streams.metrics import WorkerMetrics
from streams.processor.faults import Backoff, Fault, classify, describe, fatal
from streams.query.rebuild import SourceUnavailable
from streams.settings import Settings

log = logging.getLogger("governor.agents")

T = TypeVar("T")

AgentState = Literal["running", "retrying"]
FaultSource = Literal["redis", "kafka"]

#: first words of Redis error replies that mean "Redis cannot serve right now", not "this
#: command is wrong": out of memory, a replica or a failover, a long script, a cold start


@dataclass
class AgentHealth:
    """What one agent reports about itself (written by the agent, read by the web views)."""

    name: str
    #: the parts of the agent retrying after a transient fault (the batch, the ledger writer)
    retrying: set[str] = field(default_factory=set)
    #: monotonic time of the last batch begun or done, retry attempt or rebuild progress
    last_progress_monotonic: float = field(default_factory=time.monotonic)
    #: inside a batch (or retrying one); False while waiting for events
    busy: bool = False
    batches: int = 0
    #: transient faults met (each failed attempt)
    faults: int = 0
    last_fault: str = ""
    #: rebuilds of the agent's read-model from Kafka (Redis came back empty)
    rebuilds: int = 0
    #: values left out of the read-model, by reason (non-finite scores, undecodable records)
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def state(self) -> AgentState:
        return "retrying" if self.retrying else "running"

    def progress(self) -> None:
        self.last_progress_monotonic = time.monotonic()

    def idle_s(self, now: float | None = None) -> float:
        """Seconds without progress inside a batch; 0 while waiting for events (an agent with
        nothing to do is not stuck, and Faust yields it nothing to come round with)."""
        now = time.monotonic() if now is None else now
        return max(0.0, now - self.last_progress_monotonic) if self.busy else 0.0

    def stalled(self, stall_s: float, now: float | None = None) -> bool:
        """Inside a batch and no progress for ``stall_s``."""
        return self.idle_s(now) > stall_s

    def count_dropped(self, reason: str, n: int) -> None:
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        return {
            "name": self.name,
            "state": self.state,
            "retrying": sorted(self.retrying),
            "busy": self.busy,
            "seconds_since_progress": round(now - self.last_progress_monotonic, 3),
            "batches": self.batches,
            "faults": self.faults,
            "last_fault": self.last_fault,
            "rebuilds": self.rebuilds,
            "dropped": dict(self.dropped),
        }


def fault_of(exc: BaseException) -> tuple[Fault, FaultSource]:
    """Transient or fatal (:func:`classify`), and whether Kafka or Redis failed."""
    # Kafka is the rebuild reader's or a producer's; a bare socket error is Redis's (the only
    # other thing the agents dial)
    kafka = isinstance(exc, KafkaException | SourceUnavailable | AioKafkaError | BufferError)
    source: FaultSource = "kafka" if kafka else "redis"
    return classify(exc), source


class Retrier:
    """Runs one step of a batch until it succeeds: a transient fault is counted
    (``recoveries{loop, fault}``), logged once per outage, and retried after a backoff; any
    other ends the process."""

    def __init__(
        self,
        health: AgentHealth,
        metrics: WorkerMetrics,
        settings: Settings,
        *,
        part: str = "batch",
        on_fatal: Callable[[str, BaseException], NoReturn] = fatal,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.health = health
        self.part = part
        self.metrics = metrics
        self.backoff = Backoff(settings.retry_backoff_s, settings.retry_backoff_max_s)
        self.on_fatal = on_fatal
        self.sleep = sleep

    async def run(self, step: Callable[[], Awaitable[T]]) -> T:
        health = self.health
        outage_since: float | None = None
        while True:
            health.progress()
            try:
                result = await step()
            except asyncio.CancelledError:
                raise  # the worker is stopping: Faust cancels its agents
            except Exception as exc:  # every fault is classed: none may end the agent silently
                kind, source = fault_of(exc)
                if kind is Fault.FATAL:
                    self.on_fatal(f"agent {health.name}", exc)
                health.faults += 1
                health.last_fault = describe(exc)
                health.retrying.add(self.part)
                self.metrics.recoveries.labels(health.name, source).inc()
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.warning(
                        "agent %s: %s unavailable (%s); retrying the %s until it is back",
                        health.name,
                        "Redis" if source == "redis" else "Kafka",
                        health.last_fault,
                        self.part,
                    )
                await self.sleep(self.backoff.next_delay())
                continue
            if outage_since is not None:
                log.warning(
                    "agent %s: recovered after %.1fs, the %s is applied",
                    health.name,
                    time.monotonic() - outage_since,
                    self.part,
                )
            self.backoff.reset()
            health.retrying.discard(self.part)
            health.progress()
            return result


async def guarded(
    health: AgentHealth,
    body: Callable[[], Awaitable[None]],
    on_fatal: Callable[[str, BaseException], NoReturn] = fatal,
) -> None:
    """An agent's whole body: whatever escapes the retries (a bug) ends the process, loudly,
    instead of stopping the agent in silence."""
    try:
        await body()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        on_fatal(f"agent {health.name}", exc)
