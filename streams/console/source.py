"""Where the console's figures come from: the same calls as ``governor ask ... --json`` (I/O
at this edge; the rest of the console is pure)."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypedDict

from streams.console.live import SessionsNow
from streams.pipeline.aggregates import DAY_US
from streams.query.answers import Answers
from streams.query.readmodel import SessionReadModel
from streams.query.session_records import session_timeline
from streams.query.session_search import SessionQuery
from streams.query.timeline import Timeline
from streams.query.trend import DayCost, DayPii
from streams.redis_client import redis_client
from streams.settings import Settings


class Overview(TypedDict):
    """The overview's JSON twin: each part is what ``governor ask <part> --json`` prints
    (``slo`` None when no worker answers, as ``ask slo`` then fails)."""

    outcomes: dict[str, Any]
    latency: dict[str, Any]
    cost: dict[str, Any]
    slo: dict[str, Any] | None


class NotFound(LookupError):
    """What a page asks for is not there (an incident id): a 404 saying where to look."""


class CostPage(TypedDict):
    """The cost page's JSON twin: ``ask cost``, ``ask top-cost`` and the 7-day trend."""

    cost: dict[str, Any]
    top_cost: dict[str, Any]
    days: list[DayCost]


class PoliciesPage(TypedDict):
    """``policy history --json`` (``history``) and each version's files, by version."""

    history: dict[str, Any]
    files: dict[int, dict[str, str]]


class RollbackReply(TypedDict):
    """The worker's answer to a rollback: its HTTP status and JSON."""

    status: int
    answer: dict[str, Any]


@dataclass(frozen=True)
class IncidentForm:
    """What the "open an incident" form sends (checked by :func:`incident_form`)."""

    title: str
    severity: str | None
    layer: str
    from_us: int | None
    tenants: tuple[str, ...]
    agents: tuple[str, ...]
    sessions: tuple[str, ...]


def incident_form(fields: Mapping[str, str]) -> IncidentForm:
    """The form's fields as :class:`IncidentForm`; ValueError naming the field to fix."""
    from streams.incidents import parse_layer

    title = (fields.get("title") or "").strip()
    if not title:
        raise ValueError("title: say what is happening, in one line")
    raw_from = (fields.get("from_us") or "").strip()
    try:
        from_us = int(raw_from) if raw_from else None
    except ValueError:
        raise ValueError(f"from_us: {raw_from!r} is not a time in microseconds") from None

    def listed(name: str) -> tuple[str, ...]:
        return tuple(v.strip() for v in (fields.get(name) or "").split(",") if v.strip())

    return IncidentForm(
        title=title,
        severity=(fields.get("severity") or "").strip() or None,
        layer=parse_layer(fields.get("layer") or "unknown").lower(),
        from_us=from_us,
        tenants=listed("tenants"),
        agents=listed("agents"),
        sessions=listed("sessions"),
    )


@dataclass
class Source:
    """The console's one door to the read-model, the workers and Kafka."""

    settings: Settings
    #: one client (connection pool) for every request; connects on first use
    model: SessionReadModel = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.model = SessionReadModel(redis_client(self.settings), self.settings.redis_key_prefix)

    def answers(self) -> Answers:
        """Answers as of now (each request asks its own)."""
        return Answers(self.model)

    def outcomes(self, since: str = "24h") -> dict[str, Any]:
        """``governor ask outcomes --since S --json`` (causes named with the worker's idle
        timeout, as the CLI does)."""
        idle = self.settings.session_idle_timeout_s
        return self.answers().outcomes(since=since, idle_timeout_s=idle)

    def cost(self) -> dict[str, Any]:
        """``governor ask cost --json``."""
        return self.answers().cost()

    def top_cost(self, pct: float = 1.0, since: str = "24h") -> dict[str, Any]:
        """``governor ask top-cost --pct P --since S --json``."""
        return self.answers().top_cost(pct=pct, since=since)

    def latency(self, window: str = "1h") -> dict[str, Any]:
        """``governor ask latency --window W --json``: the workers' answer (step latency
        added up over the group) or, with no worker, the read-model's."""
        from streams.query.latency import merge_step_latency
        from streams.worker import fetch_json
        from streams.workers import group_answers

        s = self.settings
        path = f"/ask/latency?window={window}"
        answer = fetch_json(f"http://{s.web_host}:{s.web_port}{path}", timeout_s=3)
        if answer is None:
            return self.answers().latency(window=window)
        group = [
            a for a in group_answers(s, path) if a.get("partitions") != answer.get("partitions")
        ]
        merged: dict[str, Any] = merge_step_latency([answer, *group])
        return merged

    def slo(self) -> dict[str, Any] | None:
        """``governor ask slo --json``; None when no worker answers."""
        from streams.worker import fetch_json
        from streams.workers import slo_from_group

        s = self.settings
        answer = fetch_json(f"http://{s.web_host}:{s.web_port}/ask/slo", timeout_s=3)
        if answer is not None and answer.get("held") is False:
            answer = slo_from_group(s) or answer
        return answer if isinstance(answer, dict) else None

    def overview(self, since: str = "24h", window: str = "1h") -> Overview:
        """The four answers, asked at once (the workers' latency answer is the slow one)."""
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="console-overview") as pool:
            outcomes = pool.submit(self.outcomes, since)
            latency = pool.submit(self.latency, window)
            cost = pool.submit(self.cost)
            slo = pool.submit(self.slo)
            return {
                "outcomes": outcomes.result(),
                "latency": latency.result(),
                "cost": cost.result(),
                "slo": slo.result(),
            }

    def sessions(
        self,
        query: SessionQuery,
        since: str = "24h",
        from_: str | None = None,
        to: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        """The sessions that ended in the last ``since`` (or from ``from_`` to ``to``, instants
        as ``governor`` takes them) that ``query`` keeps, most expensive first
        (:func:`streams.query.session_search.find_sessions`)."""
        from streams.query.answers import Period
        from streams.query.session_search import find_sessions
        from streams.times import parse_instant

        answers = self.answers()
        now = answers.now_us
        if from_ is None and to is None:
            period = Period.last(since, now)
        else:
            start = parse_instant(from_, now) if from_ else now - DAY_US
            end = parse_instant(to, now) if to else now
            if end < start:
                raise ValueError("to: the end is before the start (from)")
            period = Period(start, end)
        answer = find_sessions(answers, period, query, limit, offset)
        return {"since": since if from_ is None and to is None else None, **answer}

    def timeline(self, session_id: str) -> Timeline:
        """``governor incident timeline --session ID``: raises SessionNotFound."""
        return session_timeline(self.settings, session_id)

    def session_tree(self, session_id: str, since: str = "7d") -> dict[str, Any]:
        """``governor ask tree SESSION --since S --json``: the session and every sub-agent
        session below it that ended in the period; NotFound when it did not end in it."""
        try:
            return self.answers().session_tree(session_id, since=since)
        except LookupError as exc:
            raise NotFound(str(exc)) from None

    # --- the second slice: cost, PII, drift, policies, incidents, health, live decisions ----

    def cost_page(self, pct: float = 10.0, since: str = "24h") -> CostPage:
        """``ask cost --json``, ``ask top-cost --pct P --since S --json`` and the fleet's cost
        per day over the last 7 days (:func:`streams.query.trend.daily_cost`)."""
        from streams.query.trend import daily_cost

        answers = self.answers()
        with ThreadPoolExecutor(max_workers=3, thread_name_prefix="console-cost") as pool:
            cost = pool.submit(answers.cost)
            top = pool.submit(answers.top_cost, pct, since)
            days = pool.submit(daily_cost, answers, 7)
            return {"cost": cost.result(), "top_cost": top.result(), "days": days.result()}

    def cost_days(self, days: int = 7) -> list[DayCost]:
        """The fleet's cost per day over the last ``days`` days (the cost chart)."""
        from streams.query.trend import daily_cost

        return daily_cost(self.answers(), days)

    def pii(self, since: str = "7d", fingerprint: str | None = None) -> dict[str, Any]:
        """``governor ask pii --since S [--fingerprint F] --json``."""
        from streams.query.pii import pii_answer

        answer: dict[str, Any] = pii_answer(self.settings, since=since, fingerprint=fingerprint)
        return answer

    def pii_days(self, days: int = 7) -> list[DayPii]:
        """PII findings per day over the last ``days`` days (the PII page's "over time")."""
        from streams.pii.ledger import PiiLedger
        from streams.query.answers import now_us
        from streams.query.trend import daily_pii

        s = self.settings
        ledger = PiiLedger(self.model.redis, s.redis_key_prefix, s.pii_ledger_days)
        return daily_pii(ledger, now_us(), days)

    def drift_agents(self) -> list[str]:
        """The agents with drift samples (``tenant/agent`` scopes), for the drift page's menu."""
        from streams.query.drift import DriftStore

        store = DriftStore(self.model.redis, self.settings.redis_key_prefix)
        return sorted({scope.split("/", 1)[1] for scope in store.scopes()})

    def drift(self, agent: str, tenant: str | None = None) -> dict[str, Any]:
        """``governor ask drift --agent A [--tenant T] --json``."""
        from streams.query.drift import DriftStore, drift_report

        store = DriftStore(self.model.redis, self.settings.redis_key_prefix)
        return drift_report(store, agent, tenant=tenant)

    def policies(self, events: int = 2000) -> PoliciesPage:
        """``governor policy history --json`` (the same calls: gov.policies, the worker's
        ``/policies`` and the clients' reports on the latest events), and each version's
        enforcement files (name -> YAML) for the history's diffs. The three reads run at once."""
        from streams.policy_history import (
            client_reports,
            clients_answer,
            history_answer,
            load_policy_versions,
            read_event_tail,
        )
        from streams.worker import fetch_json

        s = self.settings
        with ThreadPoolExecutor(max_workers=3, thread_name_prefix="console-policies") as pool:
            versions_f = pool.submit(load_policy_versions, s)
            tail_f = pool.submit(read_event_tail, s, events) if events else None
            in_force = pool.submit(fetch_json, f"{self._worker_url()}/policies", timeout_s=3)
            versions = versions_f.result()
            tail = tail_f.result() if tail_f is not None else []
            answer = history_answer(versions, in_force.result())
        answer["clients"] = clients_answer(client_reports(tail), len(tail))
        files = {v: dict(pv.files) for v, pv in versions.items()}
        return {"history": answer, "files": files}

    def rollback(self, to_version: int, reason: str, by: str, token: str) -> RollbackReply:
        """What ``governor policy rollback --to-version N`` does: the running worker's
        ``POST /policies/rollback`` with the caller's token."""
        from streams.worker import auth_fix, post_json

        url = f"{self._worker_url()}/policies/rollback"
        payload = {"to_version": to_version, "reason": reason, "by": by}
        reply = post_json(url, payload, token=token or None)
        if reply is None:
            s = self.settings
            fix = (
                f"no worker answers on {s.web_host}:{s.web_port}; a rollback needs the running "
                "worker (start: governor worker)"
            )
            return {"status": 503, "answer": {"error": fix}}
        status, answer = reply
        if status in (401, 403):
            answer = {"error": auth_fix(status, url)}
        return {"status": status, "answer": answer}

    def incidents(self, include_closed: bool = True) -> dict[str, Any]:
        """``governor incident list [--all] --json``."""
        from streams import incidents as inc

        chosen = inc.listed(inc.load_incidents(self.settings), include_closed)
        return {"incidents": [inc.to_record(i) for i in chosen]}

    def incident(self, incident_id: str) -> dict[str, Any]:
        """``governor incident show ID --json``; raises NotFound for an unknown id."""
        from streams import incidents as inc

        try:
            found = inc.find_incident(inc.load_incidents(self.settings), incident_id)
        except ValueError as exc:
            raise NotFound(str(exc)) from exc
        return inc.to_record(found)

    def open_incident(self, form: IncidentForm, by: str) -> dict[str, Any]:
        """What ``governor incident open`` does (an id, the record, gov.incidents)."""
        from streams import incidents as inc
        from streams.times import now_us

        now = now_us()
        taken = inc.load_incidents(self.settings)
        incident = inc.open_incident(
            incident_id=inc.choose_incident_id(now, taken),
            title=form.title,
            opened_at_us=now,
            opened_by=by,
            from_us=form.from_us,
            severity=form.severity,
            suspected_layer=form.layer,
            tenants=form.tenants,
            agents=form.agents,
            sessions=form.sessions,
        )
        inc.publish_incident(self.settings, incident)
        return inc.to_record(incident)

    def health(self) -> dict[str, Any]:
        """The worker's ``/readyz`` (its checks: lag, Redis, policies ...), as ``governor
        status`` asks it; ``answered`` False when nothing listens on the web port."""
        from streams.worker import get_json_status

        reply = get_json_status(f"{self._worker_url()}/readyz", timeout_s=3)
        if reply is None:
            return {"answered": False, "http_status": None, "status": None, "checks": []}
        status, body = reply
        body = body if isinstance(body, dict) else {}
        return {
            "answered": True,
            "http_status": status,
            "status": body.get("status") or body.get("error") or f"HTTP {status}",
            "checks": list(body.get("checks") or []),
        }

    def decisions(self, minutes: int = 15, limit: int = 20) -> dict[str, Any]:
        """The latest ``limit`` decisions the workers published on gov.control in the last
        ``minutes`` (Kafka time), newest first: the overview's live feed."""
        from streams.console.feed import latest_decisions

        return latest_decisions(self.settings, minutes, limit)

    def sessions_now(self) -> SessionsNow:
        """Sessions open now: ACTIVE in the workers' ``/state/sessions`` (this host's worker,
        then the rest of its group), each counted once; ``answered`` False with no worker."""
        from streams.console.live import sessions_now
        from streams.worker import ApiAuthError, fetch_json
        from streams.workers import GroupLookupError, group_workers

        path = "/state/sessions?open=1"  # ids and tenants of the open ones, not summaries
        own = self._worker_url()
        try:
            answer = fetch_json(f"{own}{path}", timeout_s=3)
            if not isinstance(answer, dict):
                return sessions_now([])
            try:
                # the rest of the group (the worker asked first is in it too: not twice)
                others = [m.url for m in group_workers(self.settings) if m.url not in (None, own)]
            except GroupLookupError:
                others = []
            group = [fetch_json(f"{url}{path}", timeout_s=3) for url in others]
            return sessions_now([answer, *(a for a in group if isinstance(a, dict))])
        except ApiAuthError as exc:
            return sessions_now([], error=str(exc))

    def _worker_url(self) -> str:
        from streams.workers import web_url

        return web_url(self.settings.web_host, self.settings.web_port)

    def close(self) -> None:
        self.model.redis.close()
