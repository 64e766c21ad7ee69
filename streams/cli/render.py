"""Pure renderers: an answer (the same dict ``--json`` prints) to what a person reads.

Every function takes the answer and returns a list of rich renderables (tables, lines); none
reads Redis, Kafka or the worker, so the CLI commands and ``governor demo`` print the same
thing and tests render real answers on a :class:`rich.console.Console` of a given width.
By default a table fits 100 columns: text cells are truncated with an ellipsis, never wrapped
onto several lines; ``wide=True`` (``--wide``) shows whole cells and every column.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

Rendered = list[RenderableType]
Justify = Literal["left", "right", "center"]

PERIODS = ("today", "same_day_last_week", "last_7_days")
PERIOD_HEADERS = {"today": "today", "same_day_last_week": "last week", "last_7_days": "7 days"}


# --- formatting ----------------------------------------------------------------------------


def money(value: float | None) -> str:
    """``$0.0693``; ``-`` when unknown."""
    return "-" if value is None else f"${value:,.4f}"


def compact(n: float) -> str:
    """``812``, ``61.1k``, ``1.24M``: a count that fits six characters."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= limit:
            return f"{n / limit:.3g}{suffix}"
    return f"{n:,.0f}"


def short_id(session_id: str, wide: bool) -> str:
    """The first 8 characters of an id (the whole id with ``--wide`` or ``--json``)."""
    return session_id if wide or len(session_id) <= 9 else session_id[:8] + "…"


def line(text: str) -> Text:
    """A line of plain text (no markup, no highlighting of numbers)."""
    return Text(text)


def _table(title: str, wide: bool) -> Table:
    """A table titled on its left; at least as wide as its title, so the title never wraps."""
    width = len(title) if wide else min(len(title), 100)
    return Table(title=title or None, title_justify="left", min_width=width or None)


def _column(
    table: Table,
    header: str,
    *,
    wide: bool,
    justify: Justify = "left",
    max_width: int | None = None,
) -> None:
    """A column whose cells stay on one line. Text (left) columns give way when the table is
    wider than the console, their cells cut with …; numbers (right) keep their width."""
    if wide:
        table.add_column(header, justify=justify, no_wrap=True)
    elif justify == "left":
        # wrap-able for rich's layout (so it narrows these first); the cells never wrap
        table.add_column(header, justify=justify, max_width=max_width)
    else:
        table.add_column(header, justify=justify, no_wrap=True, max_width=max_width)


def _row(table: Table, *cells: str) -> None:
    """A row of markup cells, each kept on one line (cut with … where the column is narrow)."""
    texts = [Text.from_markup(c, overflow="ellipsis") for c in cells]
    for text in texts:
        text.no_wrap = True
    table.add_row(*texts)


Spec = tuple[str, Justify, int | None]


def _columns(table: Table, specs: Sequence[Spec], *, wide: bool) -> None:
    for header, justify, width in specs:
        _column(table, header, wide=wide, justify=justify, max_width=width)


# --- cost ----------------------------------------------------------------------------------


def cost(answer: Mapping[str, Any], *, quantiles: bool = False, wide: bool = False) -> Rendered:
    """``ask cost``: one row per scope. By default the average and the sessions of today, the
    same day last week and the last 7 days; ``quantiles``: p50 and p99 of each; ``wide``: all
    of avg, p50, p99, max and sessions."""
    scopes: Mapping[str, Mapping[str, Mapping[str, Any]]] = answer["scopes"]
    measures: tuple[tuple[str, str], ...]
    if wide:
        measures = (("avg", "avg_usd"), ("p50", "p50_usd"), ("p99", "p99_usd"),
                    ("max", "max_usd"), ("n", "sessions"))  # fmt: skip
        title = "cost per session (event time, UTC days)"
    elif quantiles:
        measures = (("p50", "p50_usd"), ("p99", "p99_usd"))
        title = "cost per session, p50 / p99 (event time, UTC days; averages: without --quantiles)"
    else:
        measures = (("avg", "avg_usd"), ("n", "sessions"))
        title = "average cost per session (event time, UTC days; p50 / p99: --quantiles)"
    table = _table(title, wide)
    _column(table, "scope", wide=wide, max_width=40)
    for period in PERIODS:
        for name, _key in measures:
            _column(table, f"{PERIOD_HEADERS[period]}\n{name}", wide=wide, justify="right")
    for scope in sorted(scopes, key=scope_order):
        periods = scopes[scope]
        cells = [escape(scope)]
        for period in PERIODS:
            p = periods.get(period, {})
            for _name, key in measures:
                value = p.get(key)
                cells.append(f"{value or 0:,}" if key == "sessions" else money(value))
        _row(table, *cells)
    return [table]


def scope_order(scope: str) -> tuple[int, str]:
    """The fleet first, then its tenants, then its agents, each by name."""
    kind = scope.split(":", 1)[0]
    return ({"all": 0, "tenant": 1, "agent": 2}.get(kind, 3), scope)


# --- top cost and trees --------------------------------------------------------------------


def _tokens(tokens_by_model: Mapping[str, int]) -> str:
    """``3.82M (3) gpt-4.1``: total tokens, how many models, the one that used most (cut
    first when the column is narrow)."""
    if not tokens_by_model:
        return "-"
    total = sum(tokens_by_model.values())
    top = max(tokens_by_model.items(), key=lambda kv: (kv[1], kv[0]))[0]
    return f"{compact(total)} ({len(tokens_by_model)}) {top}"


def top_cost(answer: Mapping[str, Any], *, wide: bool = False) -> Rendered:
    """``ask top-cost``: the most expensive sessions and what made them expensive (tokens and
    the model that used most, steps, retries, the largest context, tool cost), then the median
    session."""
    pct, since = answer.get("pct", 1.0), answer.get("since", "")
    table = _table(f"top {pct:g}% of {answer['sessions']:,} sessions by cost ({since})", wide)
    _column(table, "session", wide=wide)
    _column(table, "tenant/agent", wide=wide, max_width=24)
    _column(table, "cost", wide=wide, justify="right")
    _column(table, "tokens by model" if wide else "tokens (models) top", wide=wide, max_width=28)
    _column(table, "steps", wide=wide, justify="right")
    _column(table, "retries", wide=wide, justify="right")
    _column(table, "max ctx", wide=wide, justify="right")
    _column(table, "tool cost", wide=wide, justify="right")
    rows = [*answer["top"], *([answer["median"]] if answer["median"] else [])]
    for i, s in enumerate(rows):
        median = answer["median"] and i == len(rows) - 1
        tokens = (
            ", ".join(f"{m} {n:,}" for m, n in s["tokens_by_model"].items())
            if wide
            else _tokens(s["tokens_by_model"])
        )
        _row(
            table,
            "median" if median else short_id(s["session_id"], wide),
            escape(f"{s['tenant_id']}/{s['agent_id']}"),
            money(s["cost_usd"]),
            escape(tokens),
            f"{s['steps']:,}",
            f"{s['retries']:,}",
            compact(s["max_context_tokens"]),
            money(s["tool_cost_usd"]),
        )
    return [table]


def trees(answer: Mapping[str, Any], *, wide: bool = False) -> Rendered:
    """``ask top-cost --tree``: one row per tree, its root's agent and its totals."""
    pct, since = answer.get("pct", 1.0), answer.get("since", "")
    table = _table(
        f"top {pct:g}% of {answer['trees']:,} session trees ({answer['sessions']:,} "
        f"sessions) by total cost ({since})",
        wide,
    )
    specs: list[Spec] = [
        ("root session", "left", None), ("tenant/agent", "left", 22), ("tree cost", "right", None),
        ("own cost", "right", None), ("sessions", "right", None), ("depth", "right", None),
        ("steps", "right", None), ("tokens in/out", "right", None), ("agents", "left", 18),
    ]  # fmt: skip
    _columns(table, specs, wide=wide)
    rows = [*answer["top"], *([answer["median"]] if answer["median"] else [])]
    for i, s in enumerate(rows):
        t = s["tree"]
        median = answer["median"] and i == len(rows) - 1
        name = "median" if median else short_id(s["session_id"], wide)
        agents = ", ".join(a.split("/", 1)[-1] for a in t["agents"])
        _row(
            table,
            name + (" ↑" if t["parent_outside"] else ""),
            escape(f"{s['tenant_id']}/{s['agent_id']}"),
            money(t["cost_usd"]),
            money(s["cost_usd"]),
            str(t["sessions"]),
            str(t["depth"]),
            str(t["steps"]),
            f"{compact(t['input_tokens'])}/{compact(t['output_tokens'])}",
            escape(agents),
        )
    return [table]


def tree(answer: Mapping[str, Any], *, wide: bool = False) -> Rendered:
    """``ask tree SESSION``: the session and every sub-agent session below it."""
    t = answer["tree"]
    table = _table(
        f"session {answer['session']['session_id']}: {t['sessions']} sessions, "
        f"{money(t['cost_usd'])} in total, {t['steps']} steps ({answer['since']})",
        wide,
    )
    _column(table, "session", wide=True)
    _column(table, "tenant/agent", wide=wide, max_width=30)
    for header in ("cost", "steps", "retries"):
        _column(table, header, wide=wide, justify="right")
    for s in answer["members"]:
        _row(
            table,
            s["session_id"],
            escape(f"{s['tenant_id']}/{s['agent_id']}"),
            money(s["cost_usd"]),
            str(s["steps"]),
            str(s["retries"]),
        )
    return [table]


# --- outcomes and quality ------------------------------------------------------------------


def outcomes(answer: Mapping[str, Any], *, wide: bool = False) -> Rendered:
    """``ask outcomes``: the share of each outcome, then the top failure modes by cause (the
    policy that killed, the idle time of a timeout, else the error), step and tool."""
    since = answer.get("since", "")
    shares = _table(f"{answer['sessions']:,} sessions in the last {since}", wide)
    _column(shares, "outcome", wide=wide)
    _column(shares, "sessions", wide=wide, justify="right")
    _column(shares, "share", wide=wide, justify="right")
    for status, n in answer["counts"].items():
        _row(shares, status, f"{n:,}", f"{answer['shares'][status]:.1%}")
    modes = _table("top failure modes", wide)
    _column(modes, "cause", wide=wide, max_width=56)
    _column(modes, "step", wide=wide)
    _column(modes, "tool / model", wide=wide, max_width=24)
    if wide:
        _column(modes, "error type", wide=wide)
        _column(modes, "ended as", wide=wide)
    _column(modes, "sessions", wide=wide, justify="right")
    for mode in answer["failure_modes"]:
        cells = [escape(mode.get("cause") or mode["error_type"]), mode["step_kind"],
                 escape(mode["tool"])]  # fmt: skip
        if wide:
            ended = ", ".join(f"{s} {n:,}" for s, n in sorted(mode.get("statuses", {}).items()))
            cells += [escape(mode["error_type"]), ended or "-"]
        _row(modes, *cells, f"{mode['count']:,}")
    if not answer["failure_modes"]:
        _row(modes, "(none)", *[""] * (len(modes.columns) - 1))
    return [shares, modes]


def quality(answer: Mapping[str, Any], *, wide: bool = False) -> Rendered:
    """``ask quality``: evaluation scores by category against the threshold; flagged
    categories in red with sample sessions."""
    since = answer.get("since", "")
    table = _table(f"quality by category ({since}, threshold {answer['threshold']:g})", wide)
    specs: list[Spec] = [
        ("category", "left", 20), ("evaluation", "left", 16), ("sessions", "right", None),
        ("mean", "right", None), ("below", "right", None), ("sample sessions", "left", 30),
    ]  # fmt: skip
    _columns(table, specs, wide=wide)
    for row in answer["categories"]:
        mean = "-" if row["mean"] is None else f"{row['mean']:.3f}"
        style = "[red]" if row["flagged"] else ""
        _row(
            table,
            f"{style}{escape(row['category'])}",
            escape(row["evaluation"]),
            f"{row['sessions']:,}",
            f"{style}{mean}",
            f"{row['below_threshold']:,}",
            ", ".join(short_id(s, wide) for s in row["samples"]),
        )
    return [table]


# --- drift ---------------------------------------------------------------------------------


def _drift_value(value: float | None, how: str) -> str:
    """``66.6%`` for a rate, ``9.29k`` for a median (the column header says which)."""
    if value is None:
        return "-"
    if how == "rate":
        return f"{value:.1%}"
    return f"{value:.3g}" if abs(value) < 1000 else compact(value)


#: effect sizes as the table names them (--json keeps the full names)
EFFECT_NAMES = {"cliffs_delta": "δ", "cramers_v": "V", "relative_change": "rel."}
EFFECT_LEGEND = "effect: δ Cliff's delta, V Cramér's V, rel. relative change; p adj: Holm"


def p_value(p: float) -> str:
    """``<0.001``, ``0.17``: a p-value as the SHIFT rule reads it (--json keeps it exact)."""
    return "<0.001" if p < 0.001 else f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


#: the statistical tests, short
TEST_NAMES = {"mann-whitney": "Mann-Whitney U", "rate (delta method)": "rate ratio",
              "chi-square (dispersion-adjusted)": "chi² (adj.)", "chi-square": "chi²"}  # fmt: skip


def drift(report: Mapping[str, Any], *, wide: bool = False) -> Rendered:
    """``ask drift``: per scope, the change (or window) compared, its layer, and per behaviour
    the test, both sides (median, pooled rate or share), the effect size, p and Holm-adjusted
    p; SHIFT where it moved. The line above each table says whether anything shifted."""
    out: Rendered = []
    for scope in report["scopes"]:
        layers = "+".join(scope["layers"]) or "none"
        shifted = [row["metric"] for row in scope["rows"] if row["shifted"]]
        verdict = (
            f"[bold red]SHIFT[/] in {len(shifted)} behaviour{'s' if len(shifted) != 1 else ''} "
            f"({escape(', '.join(shifted))}), layer [bold]{escape(layers)}[/]"
            if shifted
            else f"no shift detected (layer {escape(layers)})"
        )
        out.append(
            Text.from_markup(
                f"[bold]{escape(scope['scope'])}[/]: {escape(scope['kind'])} "
                f"({escape(scope['change'])}), {scope['n_after']} sessions after vs "
                f"{scope['n_before']} before: {verdict}"
            )
        )
        table = _table("", wide)
        _column(table, "behaviour", wide=wide, max_width=40)
        _column(table, "test", wide=wide, max_width=14)
        for header in ("before", "after", "effect", "p", "p adj", ""):
            _column(table, header, wide=wide, justify="right")
        for row in scope["rows"]:
            how = row["summary"]
            effect = (
                EFFECT_NAMES.get(row["effect_name"], row["effect_name"])
                if not wide
                else (row["effect_name"])
            )
            _row(
                table,
                escape(row["metric"] + (f" ({how})" if how in ("median", "pooled") else "")),
                escape(row["test"] if wide else TEST_NAMES.get(row["test"], row["test"])),
                _drift_value(row["before"], how),
                _drift_value(row["after"], how),
                f"{escape(effect)} {row['effect']:+.2f}",
                p_value(row["p_value"]),
                p_value(row["p_adjusted"]),
                "[bold red]SHIFT[/]" if row["shifted"] else "",
            )
        if not scope["rows"]:
            _row(table, "(too few sessions to compare)", "", "", "", "", "", "", "")
        out.append(table)
        if scope["rows"] and not wide:
            out.append(line(EFFECT_LEGEND))
        for alert_id, state in scope["alerts"].items():
            # the id names both version tuples: whole with --wide (and in --json)
            out.append(line(f"drift alert: {state}" + (f" ({alert_id})" if wide else "")))
    return out


# --- SLOs and latency ----------------------------------------------------------------------


def slo(answer: Mapping[str, Any], *, wide: bool = False) -> Rendered:
    """``ask slo``: each SLO's objective, SLI, events, error budget left and firing alerts."""
    table = _table("SLOs (SLI over the last 3 days of event time)", wide)
    specs: list[Spec] = [
        ("SLO", "left", 30), ("objective", "right", None), ("SLI", "right", None),
        ("events", "right", None), ("budget left", "right", None), ("firing", "left", 30),
    ]  # fmt: skip
    _columns(table, specs, wide=wide)
    for row in answer["slos"]:
        sli = "-" if row["sli"] is None else f"{row['sli']:.3%}"
        left = "-" if row["budget_remaining"] is None else f"{row['budget_remaining']:.0%}"
        _row(
            table,
            escape(row["name"]),
            f"{row['objective']:.1%}",
            sli,
            f"{row['events']:,}",
            left,
            escape(", ".join(row["firing"])),
        )
    return [table]


def _seconds(ms: float | None, digits: int = 1) -> str:
    return "-" if ms is None else f"{ms / 1000:,.{digits}f}s"


def latency(answer: Mapping[str, Any], window: str, *, wide: bool = False) -> Rendered:
    """``ask latency``: session quantiles, step latency by kind (from the workers), and
    today's slowest sessions with their bottleneck step."""
    ms = answer["session_ms"]
    out: Rendered = [
        line(
            f"session latency over {window} ({answer['sessions']:,} sessions): "
            + "  ".join(f"{q} {_seconds(v)}" for q, v in ms.items())
        )
    ]
    steps = answer.get("step_ms_by_kind", {})
    if steps:
        workers = answer.get("workers", 1)
        over = f", {workers} workers" if workers > 1 else ""
        step_table = _table(f"step latency by kind ({window}{over})", wide)
        for header in ("kind", "steps", "p50", "p90", "p99"):
            _column(step_table, header, wide=wide, justify="left" if header == "kind" else "right")
        for kind, q in steps.items():
            _row(
                step_table,
                kind,
                f"{q['steps']:,}",
                *(_seconds(q[p], 2) for p in ("p50", "p90", "p99")),
            )
        out.append(step_table)
    slowest = answer["slowest_today"]
    if not slowest:
        out.append(line("slowest sessions today: none ended today (UTC)"))
        return out
    table = _table("slowest sessions today", wide)
    specs: list[Spec] = [
        ("session", "left", None), ("tenant/agent", "left", 24), ("duration", "right", None),
        ("bottleneck step", "left", 30), ("step time", "right", None), ("share", "right", None),
    ]  # fmt: skip
    _columns(table, specs, wide=wide)
    for s in slowest:
        b = s["bottleneck"]
        agent = f"{s['tenant_id']}/{s['agent_id']}" if "tenant_id" in s else s["agent_id"]
        _row(
            table,
            short_id(s["session_id"], wide),
            escape(agent),
            _seconds(s["duration_ms"]),
            escape(f"{b['kind']} {b['name'] or ''}".strip()),
            _seconds(b["duration_ms"]),
            f"{b['share']:.0%}",
        )
    out.append(table)
    return out


# --- PII -----------------------------------------------------------------------------------


def pii_by_hop(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ledger's (entity, hop, handling, destination) rows as one row per (entity, hop):
    findings, the count per handling and the destinations, most findings first."""
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    handling: defaultdict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    destinations: defaultdict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for row in rows:
        key = (row["entity_type"], row["hop"])
        entry = grouped.setdefault(key, {"entity_type": key[0], "hop": key[1], "count": 0})
        entry["count"] += row["count"]
        handling[key][row["handling"]] += row["count"]
        destinations[key][row["destination"]] += row["count"]
    out = []
    for key, entry in grouped.items():
        entry["handling"] = dict(sorted(handling[key].items(), key=lambda kv: (-kv[1], kv[0])))
        entry["destinations"] = len(destinations[key])
        out.append(entry)
    return sorted(out, key=lambda e: (-e["count"], e["entity_type"], e["hop"]))


def pii(
    answer: Mapping[str, Any],
    *,
    by: Literal["hop", "destination"] = "hop",
    wide: bool = False,
) -> Rendered:
    """``ask pii``: by default one row per entity and hop with its handling counts (a handful of
    rows); ``by="destination"``: one row per (entity, hop, handling, destination). With a
    fingerprint: where that one value went."""
    if "hops" in answer:
        return _pii_hops(answer, wide=wide)
    since = answer.get("since", "")
    total = answer["total"]
    if by == "destination":
        table = _table(f"PII findings in the last {since}: {total:,}, by destination", wide)
        for header in ("entity", "hop", "handling", "destination", "findings"):
            _column(
                table, header, wide=wide, max_width=26,
                justify="right" if header == "findings" else "left",
            )  # fmt: skip
        for row in answer["rows"]:
            _row(
                table,
                row["entity_type"],
                row["hop"],
                row["handling"],
                escape(row["destination"]),
                f"{row['count']:,}",
            )
        return [table]
    grouped = pii_by_hop(answer["rows"])
    table = _table(
        f"PII findings in the last {since}: {total:,} (destinations: --by destination)", wide
    )
    _column(table, "entity", wide=wide, max_width=24)
    _column(table, "hop", wide=wide)
    _column(table, "findings", wide=wide, justify="right")
    _column(table, "handling", wide=wide, max_width=36)
    _column(table, "destinations", wide=wide, justify="right")
    for row in grouped:
        _row(
            table,
            row["entity_type"],
            row["hop"],
            f"{row['count']:,}",
            ", ".join(f"{h} {n:,}" for h, n in row["handling"].items()),
            f"{row['destinations']:,}",
        )
    return [table]


def _pii_hops(answer: Mapping[str, Any], *, wide: bool) -> Rendered:
    fingerprint = answer.get("fingerprint") or ""
    table = _table(f"where value {fingerprint[:16]}... went", wide)
    specs: list[Spec] = [
        ("time (UTC)", "left", None), ("tenant/agent", "left", 22), ("session", "left", None),
        ("hop", "left", None), ("tool", "left", 16), ("destination", "left", 18),
        ("handling", "left", None),
    ]  # fmt: skip
    _columns(table, specs, wide=wide)
    for hop in answer["hops"]:
        _row(
            table,
            hop["time"],
            escape(f"{hop['tenant_id']}/{hop['agent_id']}"),
            short_id(hop["session_id"], wide),
            hop["hop"],
            escape(hop["tool_name"] or ""),
            escape(hop["destination"]),
            hop["handling"],
        )
    return [table]


# --- the demo's decisions ------------------------------------------------------------------


def decisions(rows: Sequence[tuple[str, str, float]], *, wide: bool = False) -> Rendered:
    """The demo's table of published decisions: (policy, action, count) rows."""
    table = _table("decisions published (signed, on gov.control, audited)", wide)
    _column(table, "policy", wide=wide, max_width=40)
    _column(table, "action", wide=wide)
    _column(table, "decisions", wide=wide, justify="right")
    for policy, action, n in rows:
        _row(table, escape(policy), action, f"{n:,.0f}")
    return [table]
