"""Prometheus metrics of the worker. Labels have fixed, bounded value sets: never session ids."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, generate_latest


@dataclass(frozen=True)
class WorkerMetrics:
    registry: CollectorRegistry
    events: Counter
    dead_letters: Counter

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def worker_metrics() -> WorkerMetrics:
    """A fresh registry per app, so several apps in one process (tests) do not collide."""
    registry = CollectorRegistry()
    return WorkerMetrics(
        registry=registry,
        events=Counter(
            "governor_events", "StepEvents decoded, by kind", ["kind"], registry=registry
        ),
        dead_letters=Counter(
            "governor_dlq_records",
            "Records sent to the dead-letter topic, by error class",
            ["error_class"],
            registry=registry,
        ),
    )
