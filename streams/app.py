"""The worker's topology: ``build_app(settings)`` returns a Faust app; nothing runs at import.

The app owns the lifecycle, the web server (``/metrics``, JSON views) and the policy reload
timer; the hot path is the accounting runner (:mod:`streams.agents.accounting`), started and
stopped with the app as a service.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import faust
from aiohttp import web as aiohttp_web
from cryptography.hazmat.primitives import serialization
from faust.web import Request, Response, View
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST

from streams.agents.accounting import AccountingRunner
from streams.agents.health import AgentHealth
from streams.agents.pii import PiiHandler, attach_pii
from streams.agents.sessions import attach_read_model
from streams.codec import Codecs
from streams.control import SigningKey, ensure_signing_key
from streams.engine import Engine
from streams.http_auth import OPEN_PATHS, check, is_mutating, parse_tokens
from streams.kafka_config import faust_credentials
from streams.metrics import WorkerMetrics, worker_metrics
from streams.pii.ledger import PiiLedger
from streams.pii.scanner import PiiScanner
from streams.pipeline.accounting import ACTIVE, summary
from streams.policy_files import PolicyBundle, PolicyError, PolicyWatch, load_bundle, log_warnings
from streams.policy_history import (
    PolicyHistory,
    Rollback,
    UnknownPolicyVersion,
    install_files,
    load_policy_versions,
    rollback_request,
    validate_version,
)
from streams.processor.health import (
    HealthBounds,
    HealthReport,
    LoopSnapshot,
    WorkerSnapshot,
    liveness,
    readiness,
)
from streams.processor.lag import LagMonitor
from streams.processor.scope_stage import ScopeRunner
from streams.publisher import DecisionPublisher
from streams.query.answers import Answers, Period
from streams.query.drift import DriftDetector, DriftStore
from streams.query.latency import histogram_counts, step_quantiles
from streams.query.pii import pii_answer
from streams.query.readmodel import SessionReadModel
from streams.redis_client import redis_client
from streams.settings import Settings
from streams.topics import admin_client, replication_for

log = logging.getLogger("governor.worker")

POLICY_POLL_S = 2.0


def faust_config(settings: Settings, brokers: int = 1) -> dict[str, Any]:
    replication, _ = replication_for(settings, brokers)
    return {
        "broker": ";".join(f"kafka://{b}" for b in settings.bootstrap.split(",")),
        "store": "memory://",
        "datadir": str(settings.state_dir / "worker" / settings.app_id),
        "web_enabled": True,
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        "web_bind": settings.web_host,
        "topic_partitions": settings.event_partitions,
        "topic_replication_factor": replication,
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,
        "stream_wait_empty": False,
        # Faust's own group gates the app's start: a worker killed without leaving must not
        # hold a restarted one back for the default 60 s
        "broker_session_timeout": 10.0,
        "broker_heartbeat_interval": 2.0,
        # SASL/TLS of the worker's Faust agents (aiokafka), from GOVERNOR_KAFKA_*
        "broker_credentials": faust_credentials(settings),
    }


@dataclass
class WorkerParts:
    """What ``build_app`` wired together, for views, the CLI and tests."""

    settings: Settings
    codecs: Codecs
    metrics: WorkerMetrics
    engine: Engine
    runner: AccountingRunner
    policies: PolicyWatch
    read_model: SessionReadModel
    #: every accepted policy set goes to gov.policies, for history and rollback
    history: PolicyHistory
    #: consumer lag measured from the broker, apart from the accounting loop
    lag: LagMonitor | None = None
    #: the PII agent's handler: a reloaded pii.yaml replaces its policy (and scanner)
    pii: PiiHandler | None = None
    #: liveness of the Faust agents (state, last progress), for the health views
    pii_health: AgentHealth | None = None
    read_model_health: AgentHealth | None = None
    #: stage 2: agent- and tenant-scoped policies and the audit chains
    scope: ScopeRunner | None = None


def build_app(settings: Settings, brokers: int = 1) -> faust.App:
    app = faust.App(settings.app_id, **faust_config(settings, brokers))
    codecs = Codecs.load(settings.schemas_dir)
    metrics = worker_metrics()
    watch = PolicyWatch(settings.policies_dir, settings.state_dir / "policies-last-good")
    try:
        bundle = watch.load_initial()
    except PolicyError as exc:
        # a worker enforcing nothing would look healthy: refuse to start, saying why
        raise SystemExit(f"policy files refused, the worker cannot start:\n{exc}") from exc
    if watch.last_error is not None:
        metrics.policy_reload_errors.inc()
        log.error(
            "policy files refused, enforcing the last good bundle (%s) from %s:\n%s",
            bundle.digest,
            watch.last_good_dir,
            watch.last_error,
        )
    log_warnings(bundle, log)
    metrics.policy_version.set(bundle.policies.version)
    engine = Engine(
        bundle.prices,
        bundle.policies,
        idle_timeout_s=settings.session_idle_timeout_s,
        finished_retention_s=settings.finished_retention_s,
        hourly_retention_s=settings.hourly_retention_s,
        daily_retention_s=settings.daily_retention_s,
        # agent and tenant scope is the scope stage's, over every worker's partitions
        local_scope=False,
    )
    signing_key = ensure_signing_key(settings.control_keys_dir)
    publisher = DecisionPublisher(
        settings, signing_key, codecs, on_redis_state=lambda ok: metrics.redis_up.set(int(ok))
    )
    runner = AccountingRunner(settings, engine, codecs, publisher, metrics)
    scope = ScopeRunner(
        settings, bundle.policies, codecs, publisher, metrics, source_partitions(settings)
    )
    runner.scope = scope
    runner.use_slos(bundle.slos)
    pii = PiiHandler(
        settings,
        codecs,
        PiiScanner(bundle.pii.entities, settings.pii_spacy_model or None),
        bundle.pii,
        fingerprint_key(settings, signing_key),
        PiiLedger(
            redis_client(settings),
            settings.redis_key_prefix,
            settings.pii_ledger_days,
        ),
        publisher,
        runner.audit,
        metrics,
    )
    pii_health = attach_pii(app, settings, pii)
    read_model = SessionReadModel(redis_client(settings), settings.redis_key_prefix)
    # issue 13: the bundle in force also goes to gov.policies signed, for the clients' checks
    history = PolicyHistory(settings, watch.last_good_dir, signing_key)
    lag = LagMonitor(settings, metrics)
    parts = WorkerParts(
        settings,
        codecs,
        metrics,
        engine,
        runner,
        watch,
        read_model,
        history=history,
        lag=lag,
        pii=pii,
        scope=scope,
    )
    app.governor = parts  # type: ignore[attr-defined]

    @app.service
    class Accounting(Service):
        async def on_start(self) -> None:
            await asyncio.to_thread(runner.start)
            await asyncio.to_thread(scope.start)
            lag.start()

        async def on_stop(self) -> None:
            lag.stop()
            # the session stage first: its last commit carries items for the scope stage
            await asyncio.to_thread(runner.stop)
            await asyncio.to_thread(scope.stop)

    @app.service
    class PolicyHistoryService(Service):
        """Records the set in force at start; apply_policies records every later one."""

        async def on_start(self) -> None:
            history.accepted(engine.policies)

        async def on_stop(self) -> None:
            await asyncio.to_thread(history.close)

    @app.timer(interval=POLICY_POLL_S)  # type: ignore[untyped-decorator]
    async def reload_policies() -> None:
        try:
            changed = watch.poll()
        except PolicyError as exc:
            metrics.policy_reload_errors.inc()
            log.error(
                "policy change refused, the bundle in force (policies v%s) stays:\n%s",
                engine.policies.version,
                exc,
            )
            return
        if changed is not None:
            apply_policies(parts, changed)

    drift = DriftDetector(DriftStore(redis_client(settings), settings.redis_key_prefix))
    parts.read_model_health = attach_read_model(
        app, settings, codecs, parts.read_model, drift, metrics
    )
    parts.pii_health = pii_health
    _views(app, parts)
    _health_views(app, parts)
    _guard(app, settings)
    _console(app, settings)
    return app


def _console(app: faust.App, settings: Settings) -> None:
    """The operations console on the worker's web port, under /console/ (streams/console;
    the guard above covers it too)."""
    from streams.console import mount_console

    mount_console(app.web.web_app, settings)  # type: ignore[attr-defined]


def _guard(app: faust.App, settings: Settings) -> None:
    """Bearer tokens on the web port (streams/http_auth.py): every mutating request (any
    method but GET/HEAD/OPTIONS: rollback and what later issues add; the alert webhook is
    guarded like a read) needs an admin token; reads need any role's token with
    GOVERNOR_API_AUTH_READS; /healthz, /readyz and /metrics stay open for probes and
    scrapers."""
    tokens = parse_tokens(settings.api_tokens)

    @aiohttp_web.middleware
    async def guard(
        request: aiohttp_web.Request,
        handler: Callable[[aiohttp_web.Request], Awaitable[aiohttp_web.StreamResponse]],
    ) -> aiohttp_web.StreamResponse:
        mutating = is_mutating(request.method, request.path)
        if mutating or request.path not in OPEN_PATHS:
            answer = check(
                request.headers.get("Authorization"),
                tokens,
                mutating=mutating,
                bound_host=settings.web_host,
                reads_need_token=settings.api_auth_reads,
            )
            if not answer.ok:
                # the method, the path and why: never the header
                log.warning(
                    "HTTP %s %s refused (%d): %s",
                    request.method,
                    request.path,
                    answer.status,
                    answer.error,
                )
                return aiohttp_web.json_response(
                    answer.body(), status=answer.status, headers=answer.headers
                )
        return await handler(request)

    app.web.web_app.middlewares.append(guard)  # type: ignore[attr-defined]


def source_partitions(settings: Settings) -> int:
    """Partitions of the topic stage 1 reads (a replay topic may have more than configured):
    the scope stage waits to hear from each of them."""
    metadata = admin_client(settings).list_topics(timeout=10)
    topic = metadata.topics.get(settings.events_source_topic)
    found = len(topic.partitions) if topic is not None and topic.partitions else 0
    return max(found, settings.event_partitions)


def fingerprint_key(settings: Settings, signing_key: SigningKey) -> bytes:
    """The PII fingerprint key: the configured secret, or one derived from the signing key."""
    if settings.pii_fingerprint_key:
        return settings.pii_fingerprint_key.encode()
    private = signing_key.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return hashlib.sha256(b"governor-pii-fingerprint\0" + private).digest()


def apply_policies(
    parts: WorkerParts, bundle: PolicyBundle, rollback: Rollback | None = None
) -> None:
    """Put ``bundle`` in force (the one path for reloads and rollbacks): policies, prices and
    SLOs under the runner's lock, the PII policy beside them; a new policy set is recorded in
    gov.policies and audited, as a ROLLBACK when an operator asked for one."""
    policy_set = bundle.policies
    with parts.runner.lock:
        previous = parts.engine.policies
        parts.engine.policies = policy_set
        parts.engine.prices = bundle.prices
        if bundle.slos != parts.runner.slos:
            # only on a change: use_slos starts a new fallback tracker, which forgets the
            # failures waiting for their fallback
            parts.runner.use_slos(bundle.slos)
    if parts.scope is not None:
        with parts.scope.lock:
            parts.scope.use_policies(policy_set)
    pii = parts.pii
    if pii is not None and bundle.pii != pii.policy:
        if bundle.pii.entities != pii.policy.entities:
            # presidio's setup blocks the event loop for a moment; the PII agent runs on this
            # loop too, so it never sees the scanner and the policy disagree
            pii.scanner = PiiScanner(bundle.pii.entities, parts.settings.pii_spacy_model or None)
        pii.policy = bundle.pii
    log_warnings(bundle, log)
    parts.metrics.policy_version.set(policy_set.version)
    if policy_set.digest == previous.digest and rollback is None:
        log.info(
            "policy bundle %s in force (prices, PII or SLOs changed), policies v%s (%s) unchanged",
            bundle.digest,
            policy_set.version,
            policy_set.digest,
        )
        parts.history.accepted(policy_set)  # issue 13: clients get the new prices/PII rules
        return
    log.info(
        "policies v%s (%s) in force, was v%s (%s): %s",
        policy_set.version,
        policy_set.digest,
        previous.version,
        previous.digest,
        ", ".join(p.id for p in policy_set.policies),
    )
    parts.history.accepted(policy_set)
    if rollback is None:
        parts.runner.audit_policy_change(previous, policy_set)
    else:
        parts.runner.audit_policy_change(
            previous,
            policy_set,
            kind="ROLLBACK",
            actor=rollback.by,
            summary_prefix=f"rollback by {rollback.by}: ",
            extra={"reason": rollback.reason, "by": rollback.by},
        )


def _views(app: faust.App, parts: WorkerParts) -> None:
    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(
                parts.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

    @app.page("/ingest")
    class IngestView(View):
        """Events handled so far, by kind, and dead letters (the demo's progress)."""

        async def get(self, request: Request) -> Response:
            return self.json(
                {
                    "by_kind": _counter_by_label(parts.metrics.events, "kind"),
                    "dead_letters": int(
                        sum(_counter_by_label(parts.metrics.dead_letters, "error_class").values())
                    ),
                    "ready": parts.runner.ready.is_set(),
                    "processed": parts.runner.processed,
                    "first_batch_at": parts.runner.first_batch_at,
                    "last_batch_at": parts.runner.last_batch_at,
                }
            )

    @app.page("/state/session/{session_id}")
    class SessionView(View):
        """One session's accounting state, as the worker holds it."""

        async def get(self, request: Request, session_id: str) -> Response:
            with parts.runner.lock:
                for part in parts.engine.partitions.values():
                    state = part.sessions.get(session_id)
                    if state is not None:
                        return self.json(summary(state) | {"status": state.status})
            return self.json({"error": f"no session {session_id}"}, status=404)

    @app.page("/state/sessions")
    class SessionsView(View):
        """Every session the worker holds (for tests and small fleets), as summaries;
        ``?open=1``: only the open ones, as id, tenant and status (the console's "open now")."""

        async def get(self, request: Request) -> Response:
            if request.query.get("open"):
                # the accounting loop waits on this lock: ids and tenants only, no summaries
                with parts.runner.lock:
                    open_now = [
                        (state.session_id, state.tenant_id)
                        for part in parts.engine.partitions.values()
                        for state in part.sessions.values()
                        if state.status == ACTIVE
                    ]
                rows = [{"session_id": sid, "tenant_id": tenant, "status": ACTIVE}
                        for sid, tenant in open_now]  # fmt: skip
                return self.json({"sessions": rows, "processed": parts.runner.processed})
            with parts.runner.lock:
                sessions = [
                    summary(state) | {"status": state.status}
                    for part in parts.engine.partitions.values()
                    for state in part.sessions.values()
                ]
            return self.json({"sessions": sessions, "processed": parts.runner.processed})

    @app.page("/ask/pii")
    class AskPiiView(View):
        """`governor ask pii` over HTTP: ?since=7d, or ?fingerprint=<hex> for one value."""

        async def get(self, request: Request) -> Response:
            since = request.query.get("since", "7d")
            fingerprint = request.query.get("fingerprint")
            answer = await asyncio.to_thread(pii_answer, parts.settings, since, fingerprint)
            return self.json(answer)

    @app.page("/ask/{question}")
    class AskView(View):
        """`governor ask <question>` over HTTP: cost, top-cost, outcomes, latency."""

        async def get(self, request: Request, question: str) -> Response:
            q = request.query
            answers = Answers(parts.read_model)
            calls = {
                "cost": lambda: answers.cost(),
                "top-cost": lambda: answers.top_cost(float(q.get("pct", "1")),
                                                     q.get("since", "24h")),
                "outcomes": lambda: answers.outcomes(q.get("since", "24h")),
                "latency": lambda: latency_answer(parts, answers, q.get("window", "1h")),
                "quality": lambda: answers.quality(parts.settings.quality_threshold,
                                                   q.get("since", "7d")),
                "slo": lambda: slo_answer(parts),
            }  # fmt: skip
            if question not in calls:
                return self.json({"error": f"unknown question {question!r}",
                                  "questions": [*calls, "pii"]}, status=404)  # fmt: skip
            return self.json(await asyncio.to_thread(calls[question]))

    @app.page("/alerts/webhook")
    class AlertWebhookView(View):
        """Alertmanager's webhook receiver: each notified alert is counted and logged, so the
        worker's log shows what Prometheus paged about next to what the worker decided."""

        async def post(self, request: Request) -> Response:
            payload = await request.json()
            alerts = payload.get("alerts", []) if isinstance(payload, dict) else []
            for alert in alerts:
                labels = alert.get("labels", {})
                parts.metrics.webhook_alerts.labels(
                    str(labels.get("alertname", "unknown")), str(alert.get("status", "unknown"))
                ).inc()
                log.warning(
                    "alertmanager: %s %s (%s)",
                    labels.get("alertname"),
                    alert.get("status"),
                    alert.get("annotations", {}).get("summary", ""),
                )
            return self.json({"received": len(alerts)})

    @app.page("/policies")
    class PoliciesView(View):
        async def get(self, request: Request) -> Response:
            current = parts.engine.policies
            error = parts.policies.last_error
            bundle = parts.policies.current
            return self.json(
                {
                    "version": current.version,
                    "digest": current.digest,
                    "policies": [p.id for p in current.policies],
                    "refused": None if error is None else error.problems,
                    "warnings": [] if bundle is None else list(bundle.warnings),
                }
            )

    @app.page("/policies/rollback")
    class PolicyRollbackView(View):
        """POST {"to_version": N, "reason": ..., "by": ...}: version N's files from gov.policies
        go into the policies folder and in force at once, audited as ROLLBACK."""

        async def post(self, request: Request) -> Response:
            try:
                rollback = rollback_request(await request.json())
            except ValueError as exc:
                return self.json({"error": str(exc)}, status=400)
            try:
                answer = await roll_back(parts, rollback)
            except UnknownPolicyVersion as exc:
                return self.json({"error": str(exc), "known_versions": exc.known}, status=404)
            except PolicyError as exc:
                return self.json({"error": str(exc), "problems": exc.problems}, status=422)
            return self.json(answer)


async def roll_back(parts: WorkerParts, rollback: Rollback) -> dict[str, Any]:
    """Install version N's files and apply them through the reload path (watch.poll, then
    apply_policies), so the timer finds nothing new to apply afterwards."""
    versions = await asyncio.to_thread(load_policy_versions, parts.settings)
    target = versions.get(rollback.to_version)
    if target is None:
        raise UnknownPolicyVersion(rollback.to_version, sorted(versions))
    await asyncio.to_thread(validate_version, target)
    # the bundle is accepted as a whole: with a broken prices, pii or slo file beside them the
    # old files would be installed but not in force, so refuse before writing anything
    await asyncio.to_thread(load_bundle, parts.settings.policies_dir, target.files)
    # no await from here on: the reload timer runs on this event loop, so it never sees the
    # folder half-written nor applies the files a second time
    previous = parts.engine.policies
    install_files(parts.settings.policies_dir, target.files)
    changed = parts.policies.poll()
    if changed is not None:
        apply_policies(parts, changed, rollback)
    current = parts.engine.policies
    return {
        "from_version": previous.version,
        "to_version": current.version,
        "digest": current.digest,
        "policies": [p.id for p in current.policies],
        "changed": changed is not None,
    }


def latency_answer(parts: WorkerParts, answers: Answers, window: str) -> dict[str, Any]:
    """Session latency from the read-model, plus step latency by kind from the worker's
    histograms (the step-level detail lives only in the worker)."""
    answer = answers.latency(window)
    since = Period.last(window, answers.now_us).since_us
    with parts.runner.lock:
        by_kind = parts.engine.step_latency(since)
        owned = sorted(parts.engine.partitions)
    answer["step_ms_by_kind"] = step_quantiles(by_kind)
    # the partitions' histograms, for `governor ask latency` to add up over the group
    answer["step_histograms"] = histogram_counts(by_kind)
    answer["partitions"] = owned
    return answer


def slo_answer(parts: WorkerParts) -> dict[str, Any]:
    """Each SLO's objective, SLI and remaining error budget over 3 days of event time, from
    the scope stage holding the fleet's SLO state (``held: false`` on the other workers)."""
    held = parts.scope.slo_state() if parts.scope is not None else None
    if held is None:
        return {"window": "3d", "held": False, "slos": []}
    alerting, now = held
    rows = []
    for slo in parts.runner.slos:
        ratio, events = alerting.counts.ratio(slo.name, now, 3 * 86400)
        budget = 1 - slo.objective
        rows.append({
            "name": slo.name, "objective": slo.objective, "events": events,
            "sli": 1 - ratio if events else None,
            "budget_remaining": 1 - ratio / budget if events else None,
            "firing": sorted(a.split(":")[2] for a in alerting.firing
                             if a.split(":")[1] == slo.name),
        })  # fmt: skip
    return {"window": "3d", "held": True, "slos": rows}


HEALTH_INTERVAL_S = 1.0


def worker_snapshot(parts: WorkerParts) -> WorkerSnapshot:
    """What the loops of this worker are doing now, for /healthz and /readyz."""
    now = time.monotonic()
    runner, mirror = parts.runner, parts.runner.publisher.mirror
    loops = [
        LoopSnapshot(
            "accounting",
            runner.alive,
            now - runner.loop_heartbeat,
            runner.loop_state,
            runner.last_fault if runner.loop_state == "recovering" else "",
        ),
        LoopSnapshot(
            "decision-mirror",
            mirror.alive,
            now - mirror.last_loop_monotonic,
            "running" if mirror.redis_ok else "retrying",
            f"{mirror.pending} decisions waiting for Redis" if not mirror.redis_ok else "",
        ),
    ]
    scope = parts.scope
    if scope is not None:
        loops.append(
            LoopSnapshot(
                "scope",
                scope.alive,
                now - scope.loop_heartbeat,
                scope.loop_state,
                scope.last_fault if scope.loop_state == "recovering" else "",
            )
        )
    for agent in (parts.pii_health, parts.read_model_health):
        if agent is not None:
            # an agent's death ends the process (faults.fatal): here it is alive or stuck
            loops.append(
                LoopSnapshot(
                    agent.name,
                    True,
                    agent.idle_s(now),
                    agent.state,
                    agent.last_fault if agent.retrying else "",
                )
            )
    lag_events: int | None = None
    lag_error = ""
    monitor = parts.lag
    if monitor is not None:
        lag = monitor.snapshot
        lag_error = lag.error or ""
        lag_events = lag.total if lag.measured else None
        # its failures are the lag check's (readiness); liveness only asks that it runs
        starting = runner.loop_state == "starting"  # it starts with the accounting loop
        loops.append(
            LoopSnapshot("lag-monitor", monitor.alive, 0.0, "starting" if starting else "running")
        )
    error = parts.policies.last_error
    return WorkerSnapshot(
        loops=tuple(loops),
        assigned_partitions=len(runner.assigned) if runner.loop_state == "running" else 0,
        lag_events=lag_events,
        lag_error=lag_error,
        redis_ok=mirror.redis_ok,
        redis_detail=mirror.last_error or "unreachable",
        policy_refused="" if error is None else "; ".join(error.problems)[:500],
    )


def health_bounds(settings: Settings) -> HealthBounds:
    return HealthBounds(settings.health_stall_s, settings.ready_max_lag_events)


def _health_views(app: faust.App, parts: WorkerParts) -> None:
    bounds = health_bounds(parts.settings)

    def reports() -> tuple[HealthReport, HealthReport]:
        snapshot = worker_snapshot(parts)
        live, ready = liveness(snapshot, bounds), readiness(snapshot, bounds)
        parts.metrics.healthy.set(int(live.ok))
        parts.metrics.ready.set(int(live.ok and ready.ok))
        return live, ready

    @app.timer(interval=HEALTH_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def report_health() -> None:
        reports()

    @app.page("/healthz")
    class HealthzView(View):
        """200 while every loop is alive and came round recently, else 503 with the reason."""

        async def get(self, request: Request) -> Response:
            live, _ = reports()
            return self.json(live.as_dict(), status=200 if live.ok else 503)

    @app.page("/readyz")
    class ReadyzView(View):
        """200 while the worker governs as configured (assigned, restored, caught up, Redis
        reachable, policies in force), else 503 with every failing check."""

        async def get(self, request: Request) -> Response:
            live, ready = reports()
            report = HealthReport(live.checks + ready.checks)
            return self.json(report.as_dict(), status=200 if report.ok else 503)


def _counter_by_label(counter: Any, label: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = sample.labels[label]
                values[key] = values.get(key, 0) + sample.value
    return values
