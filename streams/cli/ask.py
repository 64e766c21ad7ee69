"""``governor ask``: the operational answers, rendered by :mod:`streams.cli.render`.

Each command gets its answer (the read-model, the PII ledger, the drift samples or the running
workers), prints it with ``--json`` exactly, else renders it with :mod:`streams.cli.render`.
Tables fit 100 columns; ``--wide`` shows whole cells and every column.
"""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from streams.cli import render
from streams.cli.base import (
    GovernorTyper,
    answers,
    app,
    emit_json,
    fail,
    settings,
    show,
)
from streams.workers import group_answers, slo_from_group

ask_app = GovernorTyper(help="Operational questions, answered from tables and read-models.")
app.add_typer(ask_app, name="ask")

Wide = Annotated[
    bool, typer.Option("--wide", help="Whole cells and every column (tables wider than 100).")
]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable answer.")]


@ask_app.command("pii")
def ask_pii(
    since: Annotated[str, typer.Option(help="How far back: 24h, 7d, 30d ...")] = "7d",
    fingerprint: Annotated[
        str | None, typer.Option(help="Follow one value (its fingerprint) across hops.")
    ] = None,
    by: Annotated[
        str,
        typer.Option(
            "--by",
            help="hop: one row per entity and hop with its handling counts; destination: "
            "one row per entity, hop, handling and destination.",
        ),
    ] = "hop",
    wide: Wide = False,
    as_json: Json = False,
) -> None:
    """What PII entered agent context, how it was handled and where it went (no values shown)."""
    from streams.query.pii import pii_answer

    if by not in ("hop", "destination"):
        raise fail(f"--by {by}: use --by hop or --by destination")
    answer = pii_answer(settings(), since=since, fingerprint=fingerprint)
    if as_json:
        emit_json(answer)
        return
    view: Literal["hop", "destination"] = "destination" if by == "destination" else "hop"
    show(render.pii(answer, by=view, wide=wide), wide)


@ask_app.command("cost")
def ask_cost(
    quantiles: Annotated[
        bool, typer.Option("--quantiles", help="p50 and p99 instead of the averages.")
    ] = False,
    wide: Wide = False,
    as_json: Json = False,
) -> None:
    """Cost per session today, the same day last week and the last 7 days, for the fleet and by
    tenant and agent: averages and sessions (p50 / p99 with --quantiles, all with --wide)."""
    answer = answers().cost()
    if as_json:
        emit_json(answer)
        return
    show(render.cost(answer, quantiles=quantiles, wide=wide), wide)


@ask_app.command("top-cost")
def ask_top_cost(
    pct: Annotated[float, typer.Option(help="Top share of sessions, in percent.")] = 1.0,
    since: Annotated[str, typer.Option(help="Sessions that ended in the last ...")] = "24h",
    tree: Annotated[
        bool,
        typer.Option(
            "--tree",
            help="Rank session trees (a session and the sub-agent sessions it started, "
            "recursively) by their total cost instead of single sessions.",
        ),
    ] = False,
    wide: Wide = False,
    as_json: Json = False,
) -> None:
    """The most expensive sessions and what made them expensive, next to the median session."""
    answer = answers().top_cost(pct=pct, since=since, tree=tree)
    if as_json:
        emit_json(answer)
        return
    show(render.trees(answer, wide=wide) if tree else render.top_cost(answer, wide=wide), wide)


@ask_app.command("tree")
def ask_tree(
    session_id: Annotated[str, typer.Argument(help="The session at the top of the tree.")],
    since: Annotated[str, typer.Option(help="Sessions that ended in the last ...")] = "7d",
    wide: Wide = False,
    as_json: Json = False,
) -> None:
    """One session and every sub-agent session below it, with cost, tokens and steps rolled
    up over the tree (sessions link to the session that started them:
    ``Governor.session(parent=...)``, OTel parent spans, ``governor.parent_session_id``)."""
    try:
        answer = answers().session_tree(session_id, since=since)
    except LookupError as exc:
        raise fail(str(exc)) from exc
    if as_json:
        emit_json(answer)
        return
    show(render.tree(answer, wide=wide), wide)


@ask_app.command("outcomes")
def ask_outcomes(
    since: Annotated[str, typer.Option(help="Sessions that ended in the last ...")] = "24h",
    wide: Wide = False,
    as_json: Json = False,
) -> None:
    """Shares of completed, errored, timed-out and killed sessions, and the top failure modes
    by cause: the policy that killed, the idle time of a timeout, else the error."""
    s = settings()
    answer = answers().outcomes(since=since, idle_timeout_s=s.session_idle_timeout_s)
    if as_json:
        emit_json(answer)
        return
    show(render.outcomes(answer, wide=wide), wide)


@ask_app.command("quality")
def ask_quality(
    since: Annotated[str, typer.Option(help="Sessions that ended in the last ...")] = "7d",
    wide: Wide = False,
    as_json: Json = False,
) -> None:
    """Evaluation scores by query category against the quality threshold; flagged categories
    come with sample sessions."""
    answer = answers().quality(settings().quality_threshold, since=since)
    if as_json:
        emit_json(answer)
        return
    show(render.quality({"since": since, **answer}, wide=wide), wide)


@ask_app.command("drift")
def ask_drift(
    agent: Annotated[str, typer.Option(help="The agent id (every tenant running it).")],
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's agent.")] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Only a version change after this (7d, 2026-11-20, ...); without a "
            "change, the sessions since then."
        ),
    ] = None,
    wide: Wide = False,
    as_json: Json = False,
) -> None:
    """Did the agent's behaviour shift, and in which layer?

    After its latest version change (agent, model, prompt, tool schema or policy version): the
    sessions after against those before. Without one: the latest window against the version's
    baseline. Per behaviour: the test (Mann-Whitney U or chi-square), both sides, the effect
    size (Cliff's delta or Cramér's V), the p-value and the Holm-adjusted p-value; SHIFT marks
    an adjusted p below 0.001 with an effect of at least 0.1.
    """
    from streams.query.drift import DriftStore, drift_report
    from streams.redis_client import redis_client
    from streams.times import parse_instant

    s = settings()
    try:
        since_us = parse_instant(since) if since else None
    except ValueError as exc:
        raise fail(str(exc)) from exc
    store = DriftStore(redis_client(s), s.redis_key_prefix)
    report = drift_report(store, agent, tenant=tenant, since_us=since_us)
    if as_json:
        emit_json(report)
        return
    if not report["scopes"]:
        raise fail(f"no finished sessions of agent {agent!r} in the drift samples")
    show(render.drift(report, wide=wide), wide)


@ask_app.command("slo")
def ask_slo(wide: Wide = False, as_json: Json = False) -> None:
    """Each SLO's objective, current SLI (last 3 days of event time) and error budget left.

    Asks the running worker, which computes the SLIs on event time.
    """
    from streams.worker import fetch_json

    s = settings()
    answer = fetch_json(f"http://{s.web_host}:{s.web_port}/ask/slo")
    if answer is not None and answer.get("held") is False:
        # with several workers one holds the fleet's SLO state: ask the others in the group
        answer = slo_from_group(s) or answer
    if answer is None:
        raise fail(f"no worker answers on {s.web_host}:{s.web_port} (start: governor worker)")
    if as_json:
        emit_json(answer)
        return
    show(render.slo(answer, wide=wide), wide)


@ask_app.command("latency")
def ask_latency(
    window: Annotated[str, typer.Option(help="Sessions that ended in the last 1h, 24h ...")] = "1h",
    wide: Wide = False,
    as_json: Json = False,
) -> None:
    """p50/p90/p99 session latency and step latency by kind, and today's slowest sessions with
    their bottleneck step. Step latency comes from the running workers (each holds its
    partitions' histograms: the group's are added up); without one, only the session-level
    answer (from the read-model) is shown."""
    from streams.query.latency import merge_step_latency
    from streams.worker import fetch_json

    s = settings()
    path = f"/ask/latency?window={window}"
    answer = fetch_json(f"http://{s.web_host}:{s.web_port}{path}")
    if answer is not None:
        # each worker holds the step histograms of its own partitions: add up the group's
        group = [
            a for a in group_answers(s, path) if a.get("partitions") != answer.get("partitions")
        ]
        answer = merge_step_latency([answer, *group])
    else:
        answer = answers().latency(window=window)
    if as_json:
        emit_json(answer)
        return
    show(render.latency(answer, window, wide=wide), wide)
