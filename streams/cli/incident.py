"""``governor incident``: incident records and session timelines."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.table import Table

from streams.cli.base import (
    GovernorTyper,
    answers,
    app,
    console,
    emit_json,
    ensure_topics,
    fail,
    settings,
    who,
)
from streams.settings import Settings

# --- incidents -----------------------------------------------------------------------------

#: columns never wrapped (an id or a time cut in two cannot be copied)
KEEP_WHOLE = ("id", "status", "opened (UTC)")

incident_app = GovernorTyper(
    help="Incidents: a record per incident (compacted gov.incidents) and session timelines."
)
app.add_typer(incident_app, name="incident")


@incident_app.command("timeline")
def incident_timeline(
    session: Annotated[str, typer.Option("--session", help="The session id.")],
    events_topic: Annotated[
        str | None,
        typer.Option(help="Read the session's events here (a gov.replay.<id> topic, say)."),
    ] = None,
    tree: Annotated[
        bool,
        typer.Option(
            "--tree",
            help="Also the sub-agent sessions it started, recursively (those that ended in "
            "the last 7 days, from the read-model), with totals rolled up over the tree.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable timeline.")] = False,
) -> None:
    """One session in time order: its steps, the decisions in force and when the client acted
    on them, its PII findings (never values) and the alerts firing; then totals and the
    bottleneck."""

    from streams.query.session_records import SessionNotFound, TopicNotFound, session_timeline
    from streams.query.timeline import describe_totals, timeline_table, tree_table, tree_totals

    s = settings()
    below: list[str] = []
    if tree:
        try:
            members = answers().session_tree(session, since="7d")["members"]
        except LookupError as exc:
            raise fail(f"{exc}; without --tree the timeline reads the events topic") from exc
        below = [m["session_id"] for m in members[1:]]
    try:
        timeline = session_timeline(s, session, events_topic=events_topic)
        descendants = [session_timeline(s, d, events_topic=events_topic) for d in below]
    except (SessionNotFound, TopicNotFound) as exc:
        raise fail(str(exc)) from exc
    if as_json:
        answer = timeline.to_dict()
        if tree:
            answer["descendants"] = [d.to_dict() for d in descendants]
            answer["tree_totals"] = tree_totals([timeline, *descendants]).to_dict()
        emit_json(answer)
        return
    console.print(timeline_table(timeline))
    for line in describe_totals(timeline):
        console.print(line, markup=False, highlight=False)
    if tree:
        console.print(tree_table([timeline, *descendants]))


@contextmanager
def _incident_errors(s: Settings) -> Iterator[None]:
    """A refused change: one line and exit code 1 (an unreachable broker: the CLI's wrapper,
    streams.cli.errors)."""
    try:
        yield
    except ValueError as exc:
        raise fail(str(exc)) from exc


@incident_app.command("open")
def incident_open(
    title: Annotated[str, typer.Option(help="What is happening, in one line.")],
    from_: Annotated[
        str | None,
        typer.Option("--from", help="When it began: now, 2h (ago), ISO-8601, epoch (default now)."),
    ] = None,
    to: Annotated[str | None, typer.Option(help="When it ended, if it has.")] = None,
    layer: Annotated[
        str, typer.Option(help="Suspected layer: model, prompt, tool, policy, infra, unknown.")
    ] = "unknown",
    severity: Annotated[str | None, typer.Option(help="As your team names it, e.g. SEV2.")] = None,
    tenant: Annotated[list[str] | None, typer.Option(help="An affected tenant (repeat).")] = None,
    agent: Annotated[list[str] | None, typer.Option(help="An affected agent (repeat).")] = None,
    session: Annotated[
        list[str] | None, typer.Option(help="An affected session id (repeat).")
    ] = None,
    by: Annotated[str | None, typer.Option(help="Who opens it (default: $USER).")] = None,
    incident_id: Annotated[
        str | None, typer.Option("--id", help="The id (default INC-<yyyymmdd>-<4 hex>).")
    ] = None,
) -> None:
    """Open an incident in gov.incidents; prints its id."""
    from streams import incidents as inc
    from streams.times import now_us, parse_instant

    s = settings()
    with _incident_errors(s):
        ensure_topics(s)
        now = now_us()
        taken = inc.load_incidents(s)
        incident = inc.open_incident(
            incident_id=(
                inc.check_incident_id(incident_id, taken)
                if incident_id
                else inc.choose_incident_id(now, taken)
            ),
            title=title,
            opened_at_us=now,
            opened_by=who(by),
            from_us=None if from_ is None else parse_instant(from_, now),
            to_us=None if to is None else parse_instant(to, now),
            severity=severity,
            suspected_layer=layer,
            tenants=tenant or (),
            agents=agent or (),
            sessions=session or (),
        )
        inc.publish_incident(s, incident)
    console.print(f"opened [bold]{incident.incident_id}[/]: {incident.title}", highlight=False)


@incident_app.command("note")
def incident_note(
    incident_id: Annotated[str, typer.Argument(help="The incident.")],
    text: Annotated[str, typer.Argument(help="What was found, done or is left to clean up.")],
    action: Annotated[
        bool, typer.Option("--action", help="Something done (e.g. a policy rollback).")
    ] = False,
    downstream: Annotated[
        bool, typer.Option("--downstream", help="An effect to clean up (e.g. refunds).")
    ] = False,
    session: Annotated[
        list[str] | None, typer.Option(help="A session this is about (repeat).")
    ] = None,
    by: Annotated[str | None, typer.Option(help="Who writes it (default: $USER).")] = None,
) -> None:
    """Add an entry to an incident's log: a NOTE, an --action or a --downstream effect."""
    from streams import incidents as inc
    from streams.times import now_us

    if action and downstream:
        raise fail("an entry is either --action or --downstream, not both")
    kind = "ACTION" if action else "DOWNSTREAM" if downstream else "NOTE"
    s = settings()
    with _incident_errors(s):
        incident = inc.add_entry(
            inc.find_incident(inc.load_incidents(s), incident_id),
            time_us=now_us(),
            author=who(by),
            kind=kind,
            text=text,
            sessions=session or (),
        )
        inc.publish_incident(s, incident)
    console.print(f"{incident.incident_id}: {kind} #{len(incident.entries)} added", highlight=False)


@incident_app.command("close")
def incident_close(
    incident_id: Annotated[str, typer.Argument(help="The incident.")],
    resolution: Annotated[str, typer.Option(help="How it was resolved.")],
    to: Annotated[
        str | None, typer.Option(help="When it ended (default: as set, else now).")
    ] = None,
    by: Annotated[str | None, typer.Option(help="Who closes it (default: $USER).")] = None,
) -> None:
    """Close an incident with its resolution."""
    from streams import incidents as inc
    from streams.times import now_us, parse_instant

    s = settings()
    with _incident_errors(s):
        now = now_us()
        incident = inc.close_incident(
            inc.find_incident(inc.load_incidents(s), incident_id),
            time_us=now,
            author=who(by),
            resolution=resolution,
            to_us=None if to is None else parse_instant(to, now),
        )
        inc.publish_incident(s, incident)
    console.print(f"closed [bold]{incident.incident_id}[/]: {resolution}", highlight=False)


@incident_app.command("list")
def incident_list(
    include_closed: Annotated[bool, typer.Option("--all", help="Closed ones too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable answer.")] = False,
) -> None:
    """Open incidents (all with --all), oldest first."""
    from streams import incidents as inc
    from streams.times import format_instant

    s = settings()
    with _incident_errors(s):
        chosen = inc.listed(inc.load_incidents(s), include_closed)
    if as_json:
        emit_json({"incidents": [inc.to_record(i) for i in chosen]})
        return
    table = Table(title=f"{'all' if include_closed else 'open'} incidents: {len(chosen)}")
    for column in ("id", "status", "severity", "layer", "opened (UTC)", "by", "range (UTC)",
                   "sessions", "entries", "title"):  # fmt: skip
        # ids and times stay whole in 100 columns (the title wraps instead)
        table.add_column(column, no_wrap=column in KEEP_WHOLE)
    for i in chosen:
        table.add_row(
            i.incident_id,
            i.status,
            i.severity or "",
            i.suspected_layer.lower(),
            format_instant(i.opened_at_us)[:16],
            i.opened_by,
            _incident_range(i.from_us, i.to_us),
            str(len(i.affected_sessions)),
            str(len(i.entries)),
            i.title,
        )
    console.print(table)


@incident_app.command("show")
def incident_show(
    incident_id: Annotated[str, typer.Argument(help="The incident.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable answer.")] = False,
) -> None:
    """Every field of an incident and its log, in the order written."""
    from streams import incidents as inc
    from streams.times import format_instant

    s = settings()
    with _incident_errors(s):
        i = inc.find_incident(inc.load_incidents(s), incident_id)
    if as_json:
        emit_json(inc.to_record(i))
        return
    closed = (
        f"closed {format_instant(i.closed_at_us)} by {i.closed_by}: {i.resolution}"
        if i.closed_at_us is not None
        else "open"
    )
    lines = [
        f"[bold]{i.incident_id}[/] {i.status} {i.severity or ''} — {i.title}",
        f"opened {format_instant(i.opened_at_us)} by {i.opened_by}; {closed}",
        f"range (UTC): {_incident_range(i.from_us, i.to_us)}",
        f"suspected layer: {i.suspected_layer.lower()}",
        f"tenants: {', '.join(i.tenants) or '-'}   agents: {', '.join(i.agents) or '-'}",
        f"affected sessions: {', '.join(i.affected_sessions) or '-'}",
    ]
    for line in lines:
        console.print(line, highlight=False)
    # the log as lines, not a table: an entry's text is read (and copied) whole at any width
    console.print("log:", highlight=False)
    for n, entry in enumerate(i.entries, 1):
        sessions = f" (sessions {', '.join(entry.sessions)})" if entry.sessions else ""
        console.print(
            f"  #{n} {format_instant(entry.time_us)} {entry.kind} {entry.author}: "
            f"{entry.text}{sessions}",
            markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip


def _incident_range(from_us: int, to_us: int | None) -> str:
    from streams.times import format_instant

    end = "ongoing" if to_us is None else format_instant(to_us)[:16]
    return f"{format_instant(from_us)[:16]} .. {end}"
