"""Prometheus metrics of the worker. Labels have bounded value sets: never session ids."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Prometheus buckets (seconds) for step and session latency: coarse on purpose, the worker's
#: own histograms (pipeline.aggregates) are the fine-grained ones
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800)
DELAY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


@dataclass(frozen=True)
class WorkerMetrics:
    registry: CollectorRegistry
    events: Counter
    dead_letters: Counter
    duplicates: Counter
    sessions: Counter
    session_latency: Histogram
    step_latency: Histogram
    cost: Counter
    tokens: Counter
    unpriced_calls: Counter
    decisions: Counter
    client_bypass: Counter
    consumer_lag: Gauge
    processing_delay: Histogram
    policy_version: Gauge
    policy_reload_errors: Counter
    active_sessions: Gauge
    pii_findings: Counter
    pii_skip_rate: Gauge
    pii_lag: Gauge
    pii_delay: Gauge
    session_quality: Counter
    session_compliance: Counter
    tool_calls: Counter
    redis_up: Gauge
    webhook_alerts: Counter
    rejected_events: Counter
    last_batch_timestamp: Gauge
    recoveries: Counter
    healthy: Gauge
    ready: Gauge
    mirror_pending: Gauge
    scope_pending: Gauge
    scope_forced: Counter
    scope_items: Counter

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def worker_metrics() -> WorkerMetrics:
    """A fresh registry per app, so several apps in one process (tests) do not collide."""
    r = CollectorRegistry()
    return WorkerMetrics(
        registry=r,
        events=Counter("governor_events", "StepEvents decoded, by kind", ["kind"], registry=r),
        dead_letters=Counter(
            "governor_dlq_records",
            "Records sent to the dead-letter topic, by error class",
            ["error_class"],
            registry=r,
        ),
        duplicates=Counter(
            "governor_duplicate_events",
            "Redelivered events ignored (seq already applied)",
            registry=r,
        ),
        sessions=Counter(
            "governor_sessions",
            "Finished sessions by outcome and error type",
            ["tenant", "agent", "outcome", "error_type"],
            registry=r,
        ),
        session_latency=Histogram(
            "governor_session_duration_seconds",
            "Session duration (event time)",
            ["tenant", "agent"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        ),
        step_latency=Histogram(
            "governor_step_duration_seconds",
            "Step duration by kind",
            ["agent", "kind"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        ),
        cost=Counter("governor_cost_usd", "Spend in USD", ["tenant", "agent", "model"], registry=r),
        tokens=Counter(
            "governor_tokens",
            "Tokens by direction",
            ["tenant", "agent", "model", "direction"],
            registry=r,
        ),
        unpriced_calls=Counter(
            "governor_unpriced_calls", "LLM calls whose model has no price", ["model"], registry=r
        ),
        decisions=Counter(
            "governor_decisions",
            "Decisions published, by action and policy",
            ["action", "policy"],
            registry=r,
        ),
        client_bypass=Counter(
            "governor_client_bypass",
            "Steps a client let run although its checks should have refused them (audited as "
            "CLIENT_BYPASS), by why (none: no client checks, stale: another policy version, "
            "same: a modified client or an estimate the actual exceeded) and policy",
            ["why", "policy"],
            registry=r,
        ),
        consumer_lag=Gauge(
            "governor_consumer_lag",
            "Events not yet consumed, by partition",
            ["partition"],
            registry=r,
        ),
        processing_delay=Histogram(
            "governor_processing_delay_seconds",
            "From an event's time to its processing",
            buckets=DELAY_BUCKETS_S,
            registry=r,
        ),
        policy_version=Gauge(
            "governor_policy_version", "Version of the policy set in force", registry=r
        ),
        policy_reload_errors=Counter(
            "governor_policy_reload_errors", "Policy files refused on reload", registry=r
        ),
        active_sessions=Gauge(
            "governor_active_sessions", "Open sessions", ["tenant", "agent"], registry=r
        ),
        pii_findings=Counter(
            "governor_pii_findings",
            "PII found in agent content, by entity, hop and handling",
            ["entity", "hop", "handling"],
            registry=r,
        ),
        session_quality=Counter(
            "governor_session_quality",
            "Evaluated sessions, good when every score >= the quality threshold",
            ["tenant", "agent", "result"],
            registry=r,
        ),
        session_compliance=Counter(
            "governor_session_compliance",
            "Finished sessions, compliant when no policy acted",
            ["tenant", "agent", "result"],
            registry=r,
        ),
        tool_calls=Counter(
            "governor_tool_calls",
            "Tool calls by outcome (ok, error, retried_ok)",
            ["agent", "outcome"],
            registry=r,
        ),
        redis_up=Gauge("governor_redis_up", "1 when the worker reaches Redis", registry=r),
        webhook_alerts=Counter(
            "governor_alertmanager_notifications",
            "Alerts Alertmanager sent to the worker",
            ["alertname", "status"],
            registry=r,
        ),
        rejected_events=Counter(
            "governor_rejected_events",
            "Events that decoded but carry impossible values, dead-lettered, by reason",
            ["reason"],
            registry=r,
        ),
        last_batch_timestamp=Gauge(
            "governor_last_batch_timestamp_seconds",
            "Wall time the accounting loop last came round (a batch, or an empty poll)",
            registry=r,
        ),
        recoveries=Counter(
            "governor_recoveries",
            "Transient faults the worker recovered from (abort, rewind, restore, retry), by loop",
            ["loop", "fault"],
            registry=r,
        ),
        healthy=Gauge(
            "governor_worker_healthy", "1 while every loop of the worker is alive", registry=r
        ),
        ready=Gauge(
            "governor_worker_ready",
            "1 while the worker governs as configured (assigned, restored, caught up, Redis up)",
            registry=r,
        ),
        mirror_pending=Gauge(
            "governor_redis_mirror_pending",
            "Decisions on Kafka not yet mirrored to Redis (it catches up when Redis is back)",
            registry=r,
        ),
        scope_pending=Gauge(
            "governor_scope_pending_items",
            "Items the scope stage holds until every source partition has caught up",
            registry=r,
        ),
        scope_forced=Counter(
            "governor_scope_forced_releases",
            "Items the scope stage released without waiting for a silent source partition",
            registry=r,
        ),
        scope_items=Counter(
            "governor_scope_items",
            "Items the scope stage applied (steps, session ends, audit records)",
            registry=r,
        ),
        pii_skip_rate=Gauge(
            "governor_pii_prefilter_skip_ratio",
            "Share of texts the PII prefilter kept from Presidio (no trigger, or no window "
            "past the phone gate)",
            registry=r,
        ),
        pii_lag=Gauge(
            "governor_pii_lag",
            "Events the PII stage has yet to scan, by partition of the events topic",
            ["partition"],
            registry=r,
        ),
        pii_delay=Gauge(
            "governor_pii_delay_seconds",
            "How far the PII stage is behind: while events wait, the age of the newest event "
            "it scanned; 0 when it is caught up",
            registry=r,
        ),
    )
