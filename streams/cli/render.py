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
    whole: bool = False,
) -> None:
    """A column whose cells stay on one line. Text (left) columns give way when the table is
    wider than the console, their cells cut with …; numbers (right) and ``whole`` columns
    (times, digests) keep their width."""
    if wide or whole:
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


def _columns(table: Table, specs: Sequence[Spec], *, wide: bool, whole: Sequence[str] = ()) -> None:
    """The columns of ``specs``; those named in ``whole`` keep their width like numbers."""
    for header, justify, width in specs:
        _column(table, header, wide=wide, justify=justify, max_width=width, whole=header in whole)


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


# --- the local stack, the workers, the topics --------------------------------------------


def _state(state: str) -> str:
    """A health state as markup: ok green, no answer dim, anything else bold red."""
    if state == "ok":
        return "[green]ok[/]"
    if state in ("no answer", "-"):
        return f"[dim]{state}[/]"
    return f"[bold red]{escape(state)}[/]"


def stack(services: Sequence[Mapping[str, Any]], state_dir: str, *, wide: bool = False) -> Rendered:
    """``status``: the local stack, one row per service of ``--json``'s ``stack``."""
    table = _table(f"local stack ({state_dir})", wide)
    specs: list[Spec] = [
        ("service", "left", None), ("address", "left", 24), ("pid", "right", None),
        ("state", "left", None), ("log", "left", None),
    ]  # fmt: skip
    _columns(table, specs, wide=wide)
    for st in services:
        _row(
            table,
            escape(st["service"]),
            escape(st["address"]),
            str(st["pid"] or "-"),
            "[green]running[/]" if st["running"] else "[dim]stopped[/]",
            escape(st["log"]),
        )
    return [table]


def workers(rows: Sequence[tuple[str, str, str, str, bool]], *, wide: bool = False) -> Rendered:
    """``status``: the group's workers, (address, partitions, /healthz, /readyz, ok) rows."""
    table = _table("", wide)
    specs: list[Spec] = [
        ("worker", "left", None), ("partitions", "left", 30), ("/healthz", "left", None),
        ("/readyz", "left", None),
    ]  # fmt: skip
    _columns(table, specs, wide=wide)
    for address, partitions, healthz, readyz, _ok in rows:
        _row(table, escape(address), escape(partitions), _state(healthz), _state(readyz))
    return [table]


def health(rows: Sequence[tuple[str, str, bool, str]], *, wide: bool = False) -> Rendered:
    """``status``: the checks of the worker's views, (view, check, ok, detail) rows."""
    table = _table("", wide)
    specs: list[Spec] = [
        ("view", "left", None), ("check", "left", 24), ("state", "left", None),
        ("detail", "left", None),
    ]  # fmt: skip
    _columns(table, specs, wide=wide)
    for view, check, ok, detail in rows:
        # details carry worker text such as "partitions [0, 1]": not markup
        state = "[green]ok[/]" if ok else "[bold red]FAIL[/]"
        _row(table, f"/{escape(view)}", escape(check), state, escape(detail))
    return [table]


def topics(answer: Mapping[str, Any], *, wide: bool = False) -> Rendered:
    """``topics list``: one row per topic, as ``topics list --json`` prints them."""
    table = _table(f"topics on {answer['bootstrap']}", wide)
    specs: list[Spec] = [
        ("topic", "left", None), ("key", "left", 16), ("value", "left", 22),
        ("partitions", "right", None), ("replicas", "right", None), ("min ISR", "right", None),
        ("retention", "right", None), ("cleanup", "left", None),
    ]  # fmt: skip
    # the topic's name whole (a person copies it); its key and value schemas give way
    _columns(table, specs, wide=wide, whole=("topic",))
    for t in answer["topics"]:
        if not t["exists"]:
            _row(table, escape(t["name"]), escape(t["key"]), escape(t["value"]),
                 "[red]missing[/]", "", "", "", "")  # fmt: skip
            continue
        _row(
            table, escape(t["name"]), escape(t["key"]), escape(t["value"]),
            str(t["partitions"]), str(t["replicas"]), escape(t["min_insync_replicas"]),
            escape(t["retention"]), escape(t["cleanup_policy"]),
        )  # fmt: skip
    return [table]


def acls(answer: Mapping[str, Any], prefix: str, *, wide: bool = False) -> Rendered:
    """``topics acls``: one row per ACL of ``topics acls --json`` (the command prints its
    kafka-acls.sh lines after it, unwrapped, to be copied)."""
    table = _table(f"ACLs for the topics under {prefix!r}", wide)
    specs: list[Spec] = [
        ("role", "left", None), ("principal", "left", 16), ("resource", "left", None),
        ("name", "left", None), ("pattern", "left", None), ("operations", "left", 24),
        ("why", "left", None),
    ]  # fmt: skip
    _columns(table, specs, wide=wide, whole=("role", "name"))
    for acl in answer["acls"]:
        _row(
            table, escape(acl["role"]), escape(acl["principal"]), escape(acl["resource"]),
            escape(acl["name"]), escape(acl["pattern"]), escape(", ".join(acl["operations"])),
            escape(acl["why"]),
        )  # fmt: skip
    return [table]


# --- policies ------------------------------------------------------------------------------


def policy_check(report: Mapping[str, Any], *, wide: bool = False) -> Rendered:
    """``policy check`` of an accepted bundle, from ``policy check --json``: the policies, a
    line on prices / PII / SLOs, the warnings and the verdict."""
    title = f"policies v{report['version']} ({report['digest']}) in {report['folder']}"
    table = _table(title, wide)
    specs: list[Spec] = [
        ("id", "left", 28), ("kind", "left", 18), ("applies to", "left", 28),
        ("limit", "left", 30), ("action", "left", None),
    ]  # fmt: skip
    _columns(table, specs, wide=wide)
    for p in report["policies"]:
        _row(table, escape(p["id"]), escape(p["kind"]), escape(p["applies_to"]),
             escape(p["limit"]), escape(p["action"]))  # fmt: skip
    pii = report["pii"]
    out: Rendered = [
        table,
        line(
            f"{len(report['prices'])} model prices"
            f"{' + genai-prices' if report.get('genai_prices') else ''}, "
            f"PII: {len(pii['entities'])} entities ({pii['rules']} rules, default "
            f"{pii['default']}), SLOs: {', '.join(report['slos']) or 'none'}"
        ),
    ]
    warnings = report["warnings"]
    for warning in warnings:
        out.append(Text.from_markup(f"[bold yellow]warning:[/] [yellow]{escape(warning)}[/]"))
    warned = f", [bold yellow]{_count(len(warnings), 'warning')}[/]" if warnings else ""
    out.append(Text.from_markup(f"[green]{len(report['policies'])} policies valid[/]{warned}"))
    return out


def policy_refused(report: Mapping[str, Any]) -> Rendered:
    """``policy check`` of a refused bundle: each problem, then the verdict."""
    out: Rendered = [
        Text.from_markup(f"[bold red]error:[/] [red]{escape(problem)}[/]")
        for problem in report["problems"]
    ]
    out.append(
        Text.from_markup(
            f"[bold red]refused: {_count(len(report['problems']), 'problem')}[/] "
            "(the worker keeps its last good bundle)"
        )
    )
    return out


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _instant(time_us: int | None) -> str:
    from streams.times import format_instant

    return "-" if time_us is None else format_instant(time_us)


def policy_history(
    answer: Mapping[str, Any], topic: str, worker: str, *, wide: bool = False
) -> Rendered:
    """``policy history``: the versions in ``topic`` and which one is in force (asked of the
    worker at ``worker``, host:port), then the version each client reports (``policy history
    --json``)."""
    table = _table(f"policy versions in {topic}", wide)
    specs: list[Spec] = [
        ("version", "right", None), ("digest", "left", 16), ("accepted (UTC)", "left", None),
        ("policies", "left", None), ("files", "left", None), ("in force", "left", None),
    ]  # fmt: skip
    _columns(table, specs, wide=wide, whole=("digest", "accepted (UTC)", "in force"))
    for row in answer["versions"]:
        in_force = {True: "[green]in force[/]", False: "", None: "?"}[row["in_force"]]
        _row(
            table, str(row["version"]), escape(row["digest"]), _instant(row["accepted_at_us"]),
            escape(", ".join(row["policies"])), escape(", ".join(row["files"])), in_force,
        )  # fmt: skip
    out: Rendered = [table]
    if not answer["worker_reachable"]:
        out.append(line(f"no worker answers on {worker}: in force unknown"))
    clients = answer["clients"]
    if not clients["clients"]:
        out.append(
            line(
                f"no client reports a policy version in the {clients['events_scanned']:,} latest "
                "events (clients report it with Governor(checks=True))"
            )
        )
        return out
    scanned = clients["events_scanned"]
    table = _table(f"policy version reported by clients ({scanned:,} events)", wide)
    specs = [
        ("tenant/agent", "left", None), ("client", "left", None), ("version", "left", None),
        ("source", "left", None), ("last seen (UTC)", "left", None), ("events", "right", None),
    ]  # fmt: skip
    _columns(table, specs, wide=wide, whole=("version", "source", "last seen (UTC)"))
    for row in clients["clients"]:
        version = str(row["policy_version"])  # v<version>:<digest>: the digest cut to 8
        number, _, digest = version.partition(":")
        if not wide and len(digest) > 9:
            version = f"{number}:{digest[:8]}…"
        _row(
            table, escape(f"{row['tenant_id']}/{row['agent_id']}"), escape(row["client_id"]),
            escape(version), escape(str(row["source"])), _instant(row["last_seen_us"]),
            f"{row['events']:,}",
        )  # fmt: skip
    out.append(table)
    return out


RUNS = (("candidate", "candidate\n(shadow)"), ("live_policies", "live policies\n(shadow)"),
        ("published", "live\n(published)"))  # fmt: skip


def backtest(report: Mapping[str, Any], folder: str, *, wide: bool = False) -> Rendered:
    """``policy backtest`` (``--json``'s report): one row per (policy, action) with the
    decisions of the candidate and of the live policies, both run in the shadow, and of what
    the live worker published; then the totals and whether the live policies reproduce it."""
    title = (
        f"backtest of {folder}: {report['events_in_window']:,} events in the window "
        f"({report['events']:,} read), {report['elapsed_s']:.1f} s"
    )
    table = _table(title, wide)
    _column(table, "policy", wide=wide, max_width=40)
    _column(table, "action", wide=wide, whole=True)
    for _key, header in RUNS:
        _column(table, header, wide=wide, justify="right")
    runs = [report[key] for key, _header in RUNS]
    pairs = sorted({(p, a) for run in runs for p, by in run["by_policy"].items() for a in by})
    for policy, action in pairs:
        counts = (run["by_policy"].get(policy, {}).get(action) for run in runs)
        _row(table, escape(policy), action, *("-" if n is None else f"{n:,}" for n in counts))
    table.add_section()
    _row(table, "[bold]decisions", "", *(f"[bold]{run['decisions']:,}" for run in runs))
    _row(table, "sessions stopped", "", *(f"{run['sessions_stopped']:,}" for run in runs))
    _row(table, "cost avoided", "", money(runs[0]["cost_avoided_usd"]),
         money(runs[1]["cost_avoided_usd"]), "-")  # fmt: skip
    out: Rendered = [table]
    if report["reproduces_live"]:
        out.append(
            Text.from_markup(
                f"[green]the live policies reproduce the {report['published']['decisions']:,} "
                "published decisions exactly[/]"
            )
        )
    else:
        out.append(
            Text.from_markup(
                "[yellow]the live policies do not reproduce the published decisions: "
                f"{len(report['live_only_in_shadow'])} only in the shadow run, "
                f"{len(report['live_only_published'])} only published (a policy change inside "
                "the window, or events no longer retained?)[/]"
            )
        )
    out.append(line(f"{len(report['candidate_only']):,} decisions only the candidate would make"))
    return out


# --- audit ---------------------------------------------------------------------------------


def audit_verify(result: Mapping[str, Any]) -> Rendered:
    """``audit verify``: each break on a line of its own, then the verdict
    (``audit verify --json``)."""
    out: Rendered = []
    for problem in result["breaks"]:
        offset, partition = problem.get("offset"), problem.get("partition")
        if offset is None:
            where = "end of chain"
        elif partition is None:
            where = f"offset {offset}"
        else:
            where = f"partition {partition}, offset {offset}"
        seq = "" if problem.get("chain_seq") is None else f" #{problem['chain_seq']}"
        # plain text: the problem quotes decoder messages, which may hold "[...]"
        out.append(
            Text(f"{problem['tenant_id']}{seq} ({where}): {problem['problem']}", style="red")
        )
    verdict = "[red]BROKEN[/]" if result["breaks"] else "[green]intact[/]"
    keys = escape(", ".join(result["keys"]))
    anchored = f", {result['anchors']} anchors" if result["anchors"] else ""
    out.append(
        Text.from_markup(
            f"{result['records']:,} records in {result['tenants']} chains "
            f"(keys {keys}{anchored}): {verdict}"
        )
    )
    return out


def audit_anchors(rows: Sequence[Mapping[str, Any]], *, wide: bool = False) -> Rendered:
    """``audit anchor``: one row per chain's signed anchor (``audit anchor --json``)."""
    table = Table(box=None)
    specs: list[Spec] = [
        ("tenant", "left", 24), ("seq", "right", None), ("head hash", "left", None),
        ("signed at", "left", None), ("key", "left", 16),
    ]  # fmt: skip
    _columns(table, specs, wide=wide, whole=("signed at",))
    for a in rows:
        _row(table, escape(a["tenant_id"]), str(a["chain_seq"]), escape(a["hash"]),
             _instant(a["time_us"]), escape(a["key_id"]))  # fmt: skip
    return [
        table,
        line("keep the --json output outside Kafka; check it with governor audit verify --anchor"),
    ]
