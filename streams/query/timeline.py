"""One session's incident timeline, built from what Kafka holds (pure: no I/O here).

:func:`build_timeline` takes the session's StepEvents (any order; a repeated ``seq`` is a
redelivery and only its first copy counts), and any superset of the Decisions of gov.control, the
PiiFindings of gov.pii and the Alerts of gov.alerts: it keeps what concerns the session.

- **steps**: every event, with its offset from the session start; calls are priced as the
  worker prices them (:func:`streams.pipeline.session_facts.call_cost_micros`), an LLM call
  nobody can price is flagged, never $0.
- **decisions**: of the session's tenant, targeting the session (``session:<id>``), its agent
  (``agent:<tenant>/<agent>``, or the older ``agent:<agent>``) or its tenant
  (``tenant:<tenant_id>``), and in force at some point of
  the session: from ``issued_at`` until it expires or a newer one (higher epoch) for the same
  target replaces it, as the client's decision book sees it. When the session applied one, the
  event after carries the report (:func:`streams.control.acted_attributes`): the decision row
  says when, and an ``acted`` row stands at that time.
- **PII findings** of the session: entity type, hop, handling, tool and destination, keyed
  fingerprint. A finding never holds the value, and nothing here reads event content.
- **alerts** of the session's tenant and agent, or fleet-wide ones (no tenant: an SLO burns for
  everyone), that were firing at some point of the session: their records up to its end.
- **totals** by the definitions of :mod:`streams.pipeline.session_facts`, the ones the
  simulator's ground truth uses: cost, tokens, steps by kind, retries and the slowest call (the
  bottleneck).

Times are event time (what the client stamped), in µs since the epoch; a TIMEOUT session (no
SESSION_END) ends at its last activity.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text

from streams.control import SEVERITY, ActedOn, acted_reports, session_target, tenant_target
from streams.pipeline.pricing import PriceTable
from streams.pipeline.session_facts import (
    CALL_KINDS,
    activity_end_us,
    call_cost_micros,
    call_name,
    is_retry,
    session_outcome,
    slowest_call,
)
from streams.times import format_instant

Record = Mapping[str, Any]


# --- the timeline --------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionHeader:
    session_id: str
    tenant_id: str
    agent_id: str
    agent_version: str | None
    category: str | None
    prompt_version: str | None
    model_version: str | None
    tool_schema_version: str | None
    start_us: int
    #: the SESSION_END's time; None when the session never ended (TIMEOUT)
    end_us: int | None
    #: the latest end of any step (SESSION_END counts at its start)
    last_event_us: int
    duration_us: int
    outcome: str
    error_type: str | None

    @property
    def until_us(self) -> int:
        """When the session was over: its end, or its last activity when it timed out."""
        return self.end_us if self.end_us is not None else self.last_event_us


@dataclass(frozen=True)
class StepRow:
    row_type: ClassVar[str] = "step"
    time_us: int
    offset_us: int
    seq: int
    kind: str
    #: the model of an LLM call, the tool of a tool call, the name of an evaluation
    name: str | None
    duration_us: int
    status: str
    error_type: str | None
    input_tokens: int | None
    output_tokens: int | None
    #: calls only: what the call cost (reported or priced), None when nobody can price it
    cost_micros: int | None
    unpriced: bool
    retry: bool
    evaluation_score: float | None


@dataclass(frozen=True)
class DecisionRow:
    row_type: ClassVar[str] = "decision"
    #: issued_at
    time_us: int
    offset_us: int
    decision_id: str
    target: str
    action: str
    policy_id: str
    policy_version: int
    reason: str
    epoch: int
    expires_at_us: int | None
    #: when it stopped being in force (expired or replaced); None: still in force
    in_force_until_us: int | None
    acted_at_us: int | None
    waited_us: int | None
    #: the event that reported acting on it
    acted_seq: int | None

    @property
    def restricts(self) -> bool:
        """A decision a session applies (WARN, THROTTLE, PAUSE, KILL), not a release."""
        return SEVERITY.get(self.action, 0) > 0

    @property
    def acted(self) -> bool:
        return self.acted_at_us is not None


@dataclass(frozen=True)
class ActedRow:
    row_type: ClassVar[str] = "acted"
    #: acted_at
    time_us: int
    offset_us: int
    decision_id: str
    action: str
    waited_us: int | None
    #: the event that carried the report
    seq: int
    #: of the decision on gov.control; None when it is not there (not read, or not kept)
    policy_id: str | None
    issued_at_us: int | None


@dataclass(frozen=True)
class PiiRow:
    row_type: ClassVar[str] = "pii"
    time_us: int
    offset_us: int
    seq: int
    finding_id: str
    entity_type: str
    hop: str
    handling: str
    tool_name: str | None
    destination: str | None
    fingerprint: str
    recognizer: str
    score: float


@dataclass(frozen=True)
class AlertRow:
    row_type: ClassVar[str] = "alert"
    #: the record's event time (when it fired or resolved)
    time_us: int
    offset_us: int
    alert_id: str
    kind: str
    state: str
    severity: str
    summary: str
    started_at_us: int | None
    tenant_id: str | None
    agent_id: str | None


Row = StepRow | DecisionRow | ActedRow | PiiRow | AlertRow


@dataclass(frozen=True)
class Bottleneck:
    """The slowest LLM or tool call of the session."""

    seq: int
    kind: str
    name: str | None
    duration_us: int
    #: of the session's duration (0 for a session of no length)
    share: float


@dataclass(frozen=True)
class Totals:
    events: int
    #: events dropped as redeliveries (a seq seen before)
    duplicates: int
    steps_by_kind: dict[str, int]
    llm_calls: int
    tool_calls: int
    cost_micros: int
    unpriced_calls: int
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    retries: int
    failed_calls: int
    pii_findings: int
    decisions: int
    acted: int
    slowest: Bottleneck | None


@dataclass(frozen=True)
class Timeline:
    header: SessionHeader
    rows: tuple[Row, ...]
    totals: Totals

    def steps(self) -> tuple[StepRow, ...]:
        return tuple(r for r in self.rows if isinstance(r, StepRow))

    def decisions(self) -> tuple[DecisionRow, ...]:
        return tuple(r for r in self.rows if isinstance(r, DecisionRow))

    def acted(self) -> tuple[ActedRow, ...]:
        return tuple(r for r in self.rows if isinstance(r, ActedRow))

    def pii(self) -> tuple[PiiRow, ...]:
        return tuple(r for r in self.rows if isinstance(r, PiiRow))

    def alerts(self) -> tuple[AlertRow, ...]:
        return tuple(r for r in self.rows if isinstance(r, AlertRow))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: header, rows (each with its ``type`` and UTC ``time``), totals."""
        return {
            "header": dataclasses.asdict(self.header),
            "rows": [
                {"type": r.row_type, "time": format_instant(r.time_us), **dataclasses.asdict(r)}
                for r in self.rows
            ],
            "totals": dataclasses.asdict(self.totals),
        }


# --- building it ---------------------------------------------------------------------------


def build_timeline(
    events: Iterable[Record],
    decisions: Iterable[Record],
    findings: Iterable[Record],
    alerts: Iterable[Record],
    prices: PriceTable,
) -> Timeline:
    """The timeline of the session ``events`` belong to (see the module doc)."""
    ordered, duplicates = unique_by_seq(events)
    if not ordered:
        raise ValueError("a session without events has no timeline")
    header = session_header(ordered)
    reports = acted_by_decision(ordered)
    steps = [
        _step_row(previous, event, header, prices) for previous, event in _with_previous(ordered)
    ]
    relevant = session_decisions(decisions, header)
    decision_rows = [
        _decision_row(decision, until, header, reports.get(decision["decision_id"]))
        for decision, until in in_force(relevant, header)
    ]
    by_id = {d["decision_id"]: d for d in relevant}
    acted_rows = [
        _acted_row(report, seq, header, by_id.get(report.decision_id))
        for report, seq in reports.values()
    ]
    pii_rows = [_pii_row(f, header) for f in session_findings(findings, header)]
    alert_rows = [_alert_row(a, header) for a in alerts_during(alerts, header)]
    rows: list[Row] = [*steps, *decision_rows, *acted_rows, *pii_rows, *alert_rows]
    rows.sort(key=_row_order)
    return Timeline(
        header=header,
        rows=tuple(rows),
        totals=_totals(ordered, duplicates, steps, header, prices, pii_rows, decision_rows),
    )


def unique_by_seq(events: Iterable[Record]) -> tuple[list[Record], int]:
    """The events sorted by seq, the first copy of each seq only, and how many were dropped."""
    first: dict[int, Record] = {}
    seen = 0
    for event in events:
        seen += 1
        first.setdefault(int(event["seq"]), event)
    return [first[seq] for seq in sorted(first)], seen - len(first)


def session_header(ordered: Sequence[Record]) -> SessionHeader:
    """As the truth reads a session: start at SESSION_START (else the first event), end at the
    last SESSION_END, versions from the first event."""
    first = ordered[0]
    starts = [e for e in ordered if e["kind"] == "SESSION_START"]
    ends = [e for e in ordered if e["kind"] == "SESSION_END"]
    start_us = int((starts[0] if starts else first)["start_time_us"])
    end_us = int(ends[-1]["start_time_us"]) if ends else None
    last_us = max(activity_end_us(e) for e in ordered)
    return SessionHeader(
        session_id=str(first["session_id"]),
        tenant_id=str(first["tenant_id"]),
        agent_id=str(first["agent_id"]),
        agent_version=first.get("agent_version"),
        category=first.get("category"),
        prompt_version=first.get("prompt_version"),
        model_version=first.get("model_version"),
        tool_schema_version=first.get("tool_schema_version"),
        start_us=start_us,
        end_us=end_us,
        last_event_us=last_us,
        duration_us=(end_us if end_us is not None else last_us) - start_us,
        outcome=session_outcome(ordered),
        error_type=ends[-1].get("error_type") if ends else None,
    )


def acted_by_decision(ordered: Sequence[Record]) -> dict[str, tuple[ActedOn, int]]:
    """Decision id -> the client's report of acting on it and the seq of the event carrying
    it; the first report counts (the client reports each decision once)."""
    reports: dict[str, tuple[ActedOn, int]] = {}
    for event in ordered:
        for report in acted_reports(event.get("attributes")):
            reports.setdefault(report.decision_id, (report, int(event["seq"])))
    return reports


def session_decisions(decisions: Iterable[Record], header: SessionHeader) -> list[Record]:
    """Decisions of the session's tenant for the session, its agent or its tenant (the first
    copy of each id: a decision can be published twice)."""
    targets = session_targets(header.session_id, header.tenant_id, header.agent_id)
    unique: dict[str, Record] = {}
    for decision in decisions:
        if decision["target"] in targets and decision.get("tenant_id") == header.tenant_id:
            unique.setdefault(str(decision["decision_id"]), decision)
    return list(unique.values())


def session_targets(session_id: str, tenant_id: str, agent_id: str) -> frozenset[str]:
    """The control targets that reach a session: itself, its agent, its tenant. An agent is
    ``agent:<tenant>/<agent>``, and ``agent:<agent>`` as gov.control still holds it from before
    agent targets named their tenant (the decision's ``tenant_id`` says whose it is)."""
    return frozenset(
        {
            session_target(session_id),
            f"agent:{tenant_id}/{agent_id}",
            f"agent:{agent_id}",
            tenant_target(tenant_id),
        }
    )


def in_force(decisions: Iterable[Record], header: SessionHeader) -> list[tuple[Record, int | None]]:
    """Each decision in force at some point of the session, with when it stopped being in
    force: it expired, or a newer decision for its target replaced it (None: neither)."""
    by_target: dict[str, list[Record]] = {}
    for decision in decisions:
        by_target.setdefault(str(decision["target"]), []).append(decision)
    kept = []
    for chain in by_target.values():
        chain.sort(key=lambda d: (int(d["epoch"]), int(d["issued_at_us"])))
        for decision, following in zip(chain, [*chain[1:], None], strict=True):
            stops = [decision.get("expires_at_us")]
            if following is not None:
                stops.append(following["issued_at_us"])
            until = min((int(s) for s in stops if s is not None), default=None)
            issued = int(decision["issued_at_us"])
            if issued <= header.until_us and (until is None or until > header.start_us):
                kept.append((decision, until))
    return kept


def session_findings(findings: Iterable[Record], header: SessionHeader) -> list[Record]:
    unique: dict[str, Record] = {}
    for finding in findings:
        if finding["session_id"] == header.session_id:
            unique.setdefault(str(finding["finding_id"]), finding)
    return sorted(unique.values(), key=lambda f: (int(f["time_us"]), int(f["seq"])))


def alerts_during(alerts: Iterable[Record], header: SessionHeader) -> list[Record]:
    """Records of the alerts that were firing at some point of the session, for its tenant and
    agent or for the whole fleet, up to the session's end (one firing before the session starts
    says it was burning already; one resolved hours later says nothing about the session)."""
    agents = {None, header.agent_id, f"{header.tenant_id}/{header.agent_id}"}
    unique: dict[tuple[str, str, int], Record] = {}
    for alert in alerts:
        if alert.get("tenant_id") in (None, header.tenant_id) and alert.get("agent_id") in agents:
            key = (str(alert["alert_id"]), str(alert["state"]), int(alert["event_time_us"]))
            unique.setdefault(key, alert)
    by_alert: dict[str, list[Record]] = {}
    for alert in sorted(unique.values(), key=lambda a: int(a["event_time_us"])):
        by_alert.setdefault(str(alert["alert_id"]), []).append(alert)
    kept = []
    for records in by_alert.values():
        for i, alert in enumerate(records):
            start, end = _firing_span(records, i)
            overlaps = start <= header.until_us and (end is None or end >= header.start_us)
            if overlaps and int(alert["event_time_us"]) <= header.until_us:
                kept.append(alert)
    return kept


def _firing_span(records: Sequence[Record], i: int) -> tuple[int, int | None]:
    """When the alert of ``records[i]`` was firing: a FIRING record until the next RESOLVED
    (None: still firing), a RESOLVED record since it started."""
    alert = records[i]
    time_us = int(alert["event_time_us"])
    started = alert.get("started_at_us")
    if alert["state"] == "RESOLVED":
        return (int(started) if started is not None else time_us), time_us
    resolved = next((r for r in records[i + 1 :] if r["state"] == "RESOLVED"), None)
    start = int(started) if started is not None else time_us
    return start, None if resolved is None else int(resolved["event_time_us"])


def _with_previous(ordered: Sequence[Record]) -> list[tuple[Record | None, Record]]:
    """Each event with the call before it (for retries), None before the first call."""
    out: list[tuple[Record | None, Record]] = []
    previous_call: Record | None = None
    for event in ordered:
        out.append((previous_call, event))
        if event["kind"] in CALL_KINDS:
            previous_call = event
    return out


def _step_row(
    previous_call: Record | None, event: Record, header: SessionHeader, prices: PriceTable
) -> StepRow:
    kind = str(event["kind"])
    is_call = kind in CALL_KINDS
    cost = call_cost_micros(event, prices) if is_call else None
    llm = kind == "LLM_CALL"
    name = call_name(event) if is_call else event.get("evaluation_name")
    time_us = int(event["start_time_us"])
    return StepRow(
        time_us=time_us,
        offset_us=time_us - header.start_us,
        seq=int(event["seq"]),
        kind=kind,
        name=name,
        duration_us=int(event.get("duration_us") or 0),
        status=str(event.get("status") or "OK"),
        error_type=event.get("error_type"),
        input_tokens=int(event.get("input_tokens") or 0) if llm else None,
        output_tokens=int(event.get("output_tokens") or 0) if llm else None,
        cost_micros=cost,
        unpriced=is_call and cost is None,
        retry=is_call and is_retry(previous_call, event),
        evaluation_score=event.get("evaluation_score"),
    )


def _decision_row(
    decision: Record,
    until: int | None,
    header: SessionHeader,
    report: tuple[ActedOn, int] | None,
) -> DecisionRow:
    issued = int(decision["issued_at_us"])
    return DecisionRow(
        time_us=issued,
        offset_us=issued - header.start_us,
        decision_id=str(decision["decision_id"]),
        target=str(decision["target"]),
        action=str(decision["action"]),
        policy_id=str(decision["policy_id"]),
        policy_version=int(decision.get("policy_version") or 0),
        reason=str(decision.get("reason") or ""),
        epoch=int(decision["epoch"]),
        expires_at_us=decision.get("expires_at_us"),
        in_force_until_us=until,
        acted_at_us=report[0].acted_at_us if report else None,
        waited_us=report[0].waited_us if report else None,
        acted_seq=report[1] if report else None,
    )


def _acted_row(
    report: ActedOn, seq: int, header: SessionHeader, decision: Record | None
) -> ActedRow:
    return ActedRow(
        time_us=report.acted_at_us,
        offset_us=report.acted_at_us - header.start_us,
        decision_id=report.decision_id,
        action=report.action,
        waited_us=report.waited_us,
        seq=seq,
        policy_id=None if decision is None else str(decision["policy_id"]),
        issued_at_us=None if decision is None else int(decision["issued_at_us"]),
    )


def _pii_row(finding: Record, header: SessionHeader) -> PiiRow:
    time_us = int(finding["time_us"])
    return PiiRow(
        time_us=time_us,
        offset_us=time_us - header.start_us,
        seq=int(finding["seq"]),
        finding_id=str(finding["finding_id"]),
        entity_type=str(finding["entity_type"]),
        hop=str(finding["hop"]),
        handling=str(finding["handling"]),
        tool_name=finding.get("tool_name"),
        destination=finding.get("destination"),
        fingerprint=str(finding["fingerprint"]),
        recognizer=str(finding.get("recognizer") or ""),
        score=float(finding.get("score") or 0.0),
    )


def _alert_row(alert: Record, header: SessionHeader) -> AlertRow:
    time_us = int(alert["event_time_us"])
    return AlertRow(
        time_us=time_us,
        offset_us=time_us - header.start_us,
        alert_id=str(alert["alert_id"]),
        kind=str(alert["kind"]),
        state=str(alert["state"]),
        severity=str(alert["severity"]),
        summary=str(alert.get("summary") or ""),
        started_at_us=alert.get("started_at_us"),
        tenant_id=alert.get("tenant_id"),
        agent_id=alert.get("agent_id"),
    )


#: at one instant: the start first, then the client acting (before the step it let through),
#: the step, what the step caused (findings, decisions, alerts), the end last
_RANK = {StepRow: 2, ActedRow: 1, PiiRow: 3, DecisionRow: 4, AlertRow: 5}


def _row_order(row: Row) -> tuple[int, int, int]:
    rank = _RANK[type(row)]
    if isinstance(row, StepRow):
        rank = {"SESSION_START": 0, "SESSION_END": 6}.get(row.kind, rank)
    seq = row.seq if isinstance(row, StepRow | PiiRow) else 0
    return row.time_us, rank, seq


def _totals(
    ordered: Sequence[Record],
    duplicates: int,
    steps: Sequence[StepRow],
    header: SessionHeader,
    prices: PriceTable,
    pii_rows: Sequence[PiiRow],
    decision_rows: Sequence[DecisionRow],
) -> Totals:
    calls = [e for e in ordered if e["kind"] in CALL_KINDS]
    llm = [e for e in calls if e["kind"] == "LLM_CALL"]
    costs = [call_cost_micros(c, prices) for c in calls]
    slowest = slowest_call(calls)
    bottleneck = None
    if slowest is not None:
        duration = int(slowest.get("duration_us") or 0)
        bottleneck = Bottleneck(
            seq=int(slowest["seq"]),
            kind=str(slowest["kind"]),
            name=call_name(slowest),
            duration_us=duration,
            share=duration / header.duration_us if header.duration_us > 0 else 0.0,
        )
    return Totals(
        events=len(ordered),
        duplicates=duplicates,
        steps_by_kind=dict(Counter(str(e["kind"]) for e in ordered)),
        llm_calls=len(llm),
        tool_calls=len(calls) - len(llm),
        cost_micros=sum(c or 0 for c in costs),
        unpriced_calls=sum(c is None for c in costs),
        input_tokens=sum(int(c.get("input_tokens") or 0) for c in llm),
        output_tokens=sum(int(c.get("output_tokens") or 0) for c in llm),
        cache_read_input_tokens=sum(int(c.get("cache_read_input_tokens") or 0) for c in llm),
        retries=sum(is_retry(previous, call) for previous, call in pairwise(calls)),
        failed_calls=sum(s.status != "OK" for s in steps if s.kind in CALL_KINDS),
        pii_findings=len(pii_rows),
        decisions=len(decision_rows),
        acted=sum(d.acted for d in decision_rows),
        slowest=bottleneck,
    )


# --- showing it ----------------------------------------------------------------------------


def span(us: int) -> str:
    """A length of time for people: 850µs, 12ms, 3.40s, 2m05.0s, 1h07m."""
    if us < 0:
        return "-" + span(-us)
    if us == 0:
        return "0"
    if us < 1000:
        return f"{us}µs"
    if us < 1_000_000:
        return f"{us / 1000:.0f}ms"
    seconds = us / 1_000_000
    if seconds < 60:
        return f"{seconds:.2f}s"
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        return f"{minutes:.0f}m{rest:04.1f}s"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m"


def offset(us: int) -> str:
    return span(us) if us < 0 else "+" + span(us)


def money(micros: int | None) -> str:
    return "unpriced" if micros is None else f"${micros / 1_000_000:,.6f}"


def describe_header(header: SessionHeader) -> str:
    versions = ", ".join(
        f"{label} {value}"
        for label, value in (
            ("agent", header.agent_version),
            ("prompt", header.prompt_version),
            ("model", header.model_version),
            ("tools", header.tool_schema_version),
        )
        if value is not None
    )
    ended = format_instant(header.end_us) if header.end_us is not None else "no end (timed out)"
    outcome = header.outcome + (f" ({header.error_type})" if header.error_type else "")
    return (
        f"session {header.session_id} · {header.tenant_id}/{header.agent_id} · "
        f"category {header.category or '-'} · {versions or 'no versions'}\n"
        f"{format_instant(header.start_us)} → {ended} UTC · {span(header.duration_us)} · "
        f"{outcome}"
    )


def describe_row(row: Row, header: SessionHeader) -> tuple[str, str, str, str, str]:
    """(what, detail, duration, tokens, cost) of one row; never event content or PII values."""
    if isinstance(row, StepRow):
        return _describe_step(row, header)
    if isinstance(row, DecisionRow):
        if not row.restricts:
            acted = "lifts what came before"
        elif row.acted_at_us is not None:
            waited = f", waited {span(row.waited_us)}" if row.waited_us is not None else ""
            acted = (
                f"acted {offset(row.acted_at_us - header.start_us)} "
                f"({span(row.acted_at_us - row.time_us)} after issue{waited})"
            )
        else:
            acted = "not acted"
        on = "this session" if row.target == session_target(header.session_id) else row.target
        detail = f"{row.policy_id}: {row.reason} (on {on}, {row.decision_id[:8]}) → {acted}"
        return f"decision {row.action}", detail, "", "", ""
    if isinstance(row, ActedRow):
        source = row.policy_id or "decision not on the control topic"
        waited = span(row.waited_us) if row.waited_us is not None else ""
        detail = f"client applied {row.decision_id[:8]} ({source}), reported on #{row.seq}"
        return f"acted {row.action}", detail, waited, "", ""
    if isinstance(row, PiiRow):
        where = row.destination or row.tool_name or "-"
        detail = (
            f"#{row.seq} {row.hop} → {row.handling}, to {where} "
            f"(fingerprint {row.fingerprint[:12]})"
        )
        return f"PII {row.entity_type}", detail, "", "", ""
    return f"alert {row.state}", f"{row.severity} {row.alert_id}: {row.summary}", "", "", ""


def _describe_step(row: StepRow, header: SessionHeader) -> tuple[str, str, str, str, str]:
    labels = {
        "SESSION_START": "start",
        "SESSION_END": "end",
        "LLM_CALL": "LLM",
        "TOOL_CALL": "tool",
        "EVALUATION": "evaluation",
        "ERROR": "error",
    }
    what = f"{labels.get(row.kind, row.kind)} #{row.seq}"
    if row.kind == "SESSION_END":
        detail = header.outcome + (f" ({row.error_type})" if row.error_type else "")
        return what, detail, span(header.duration_us), "", ""
    parts = [row.name or ""]
    if row.evaluation_score is not None:
        parts.append(f"= {row.evaluation_score:.2f}")
    if row.status != "OK":
        parts.append(row.status + (f" {row.error_type}" if row.error_type else ""))
    elif row.error_type:
        parts.append(row.error_type)
    if row.retry:
        parts.append("retry")
    tokens = (
        f"{row.input_tokens:,}→{row.output_tokens:,}"
        if row.input_tokens is not None and row.output_tokens is not None
        else ""
    )
    cost = money(row.cost_micros) if row.kind in CALL_KINDS else ""
    duration = span(row.duration_us) if row.kind in CALL_KINDS else ""
    return what, " ".join(p for p in parts if p), duration, tokens, cost


def timeline_table(timeline: Timeline) -> Table:
    # Text, not markup: reasons and targets hold brackets ("[session:...]") rich would eat
    table = Table(title=Text(describe_header(timeline.header)), title_justify="left")
    for column, justify in (
        ("time (UTC)", "left"),
        ("offset", "right"),
        ("what", "left"),
        ("detail", "left"),
        ("duration", "right"),
        ("tokens", "right"),
        ("cost", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in timeline.rows:
        what, detail, duration, tokens, cost = describe_row(row, timeline.header)
        cells = (format_instant(row.time_us), offset(row.offset_us), what, detail)
        table.add_row(*(Text(c) for c in (*cells, duration, tokens, cost)))
    return table


def describe_totals(timeline: Timeline) -> list[str]:
    t = timeline.totals
    steps = ", ".join(f"{kind} {n}" for kind, n in sorted(t.steps_by_kind.items()))
    unpriced = f" ({t.unpriced_calls} unpriced call{'s' * (t.unpriced_calls != 1)})"
    lines = [
        f"steps: {steps}" + (f" ({t.duplicates} duplicates dropped)" if t.duplicates else ""),
        f"cost: {money(t.cost_micros)}" + (unpriced if t.unpriced_calls else ""),
        f"tokens: {t.input_tokens:,} in, {t.output_tokens:,} out "
        f"({t.cache_read_input_tokens:,} cached)",
        f"retries: {t.retries}; failed calls: {t.failed_calls}",
        f"decisions in force: {t.decisions} ({t.acted} acted on); PII findings: {t.pii_findings}",
    ]
    if t.slowest is None:
        lines.append("bottleneck: none (no LLM or tool calls)")
    else:
        s = t.slowest
        lines.append(
            f"bottleneck: {s.kind} #{s.seq} {s.name or ''} took {span(s.duration_us)} "
            f"({s.share:.0%} of the session)"
        )
    return lines


# --- a session tree: a session and the sub-agent sessions below it --------------------------


@dataclass(frozen=True)
class TreeTotals:
    """What a session tree's timelines add up to."""

    sessions: int
    steps: int
    cost_micros: int
    input_tokens: int
    output_tokens: int
    decisions: int
    pii_findings: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def tree_totals(timelines: Sequence[Timeline]) -> TreeTotals:
    return TreeTotals(
        sessions=len(timelines),
        steps=sum(t.totals.llm_calls + t.totals.tool_calls for t in timelines),
        cost_micros=sum(t.totals.cost_micros for t in timelines),
        input_tokens=sum(t.totals.input_tokens for t in timelines),
        output_tokens=sum(t.totals.output_tokens for t in timelines),
        decisions=sum(t.totals.decisions for t in timelines),
        pii_findings=sum(t.totals.pii_findings for t in timelines),
    )


def tree_table(timelines: Sequence[Timeline]) -> Table:
    """One row per session of the tree (the root first): agent, outcome, steps, cost."""
    totals = tree_totals(timelines)
    table = Table(
        title=f"session tree of {timelines[0].header.session_id}: {totals.sessions} sessions, "
        f"{totals.steps} steps, {money(totals.cost_micros)}"
    )
    for column in ("session", "agent", "outcome", "steps", "cost", "decisions", "PII"):
        table.add_column(column)
    for t in timelines:
        h = t.header
        table.add_row(
            h.session_id[:13], h.agent_id, h.outcome, str(t.totals.llm_calls + t.totals.tool_calls),
            money(t.totals.cost_micros), str(t.totals.decisions), str(t.totals.pii_findings),
        )  # fmt: skip
    return table
