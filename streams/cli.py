"""``governor``: the local stack, the worker, the demo and (as issues land) the answers."""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NamedTuple, TypedDict

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from streams import stack, workers
from streams.commands.console import console as console_command
from streams.commands.gateway import gateway as gateway_command
from streams.commands.ingest import ingest as ingest_command
from streams.settings import Settings
from streams.workers import group_answers, slo_from_group

# tables stay readable when the output is a file or a CI log, not only in a terminal
console = Console(width=None if sys.stdout.isatty() else 160)
app = typer.Typer(
    help="Governor: run fleets of AI agents (budgets, policies, answers, alerts) on Kafka.",
    no_args_is_help=True,
    add_completion=False,
)
topics_app = typer.Typer(help="Governor's topics: list them as the broker reports, create them.")
app.add_typer(topics_app, name="topics")
app.command("ingest")(ingest_command)
app.command("gateway")(gateway_command)
app.command("console")(console_command)

log = logging.getLogger("governor")


def settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError as exc:  # a wrong GOVERNOR_* value: the message names it and the fix
        raise _fail(str(exc)) from exc


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=1)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )


# --- the local stack -----------------------------------------------------------------------


@app.command()
def up(
    brokers: Annotated[int, typer.Option(help="Kafka nodes (KRaft, combined mode).")] = 1,
) -> None:
    """Start a local Kafka (KRaft) and Redis under the state folder, then create the topics.

    Kafka's jars come from Maven Central (cached); redis-server must be installed
    (`make setup` installs it). Running it twice starts nothing twice.
    """
    s = settings()
    try:
        started = stack.up(s, brokers=brokers)
        _ensure_topics(s)
    except stack.StackError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"started: {', '.join(started)}" if started else "already running")
    _print_status(s)


@app.command()
def down() -> None:
    """Stop the local Kafka and Redis that `governor up` started (nothing else)."""
    stopped = stack.down(settings())
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable report.")] = False,
) -> None:
    """Show what of the local stack runs where, every worker of the group (address,
    partitions, /healthz, /readyz), and the checks of the worker at GOVERNOR_WEB_PORT."""
    _print_status(settings(), as_json=as_json)


class HealthCheck(TypedDict):
    name: str
    ok: bool
    detail: str


class HealthView(TypedDict):
    """One view's answer: the views answer 200 when ok and 503 when degraded."""

    http_status: int
    ok: bool
    checks: list[HealthCheck]
    #: the whole JSON answer, as the worker sent it
    answer: Any


class HealthRow(NamedTuple):
    view: str
    check: str
    ok: bool
    detail: str


def health_view(reply: tuple[int, Any] | None) -> HealthView | None:
    """A view's (HTTP status, JSON) reply as the status report keeps it; None when nothing
    answered. Anything but 200 with ``"status": "ok"`` is not ok, and an answer without checks
    (an older worker without the view, an error page) becomes one failing check saying so."""
    if reply is None:
        return None
    http_status, answer = reply
    body = answer if isinstance(answer, dict) else {}
    raw_checks = body.get("checks")
    checks: list[HealthCheck] = [
        HealthCheck(
            name=str(c.get("name", "?")), ok=c.get("ok") is True, detail=str(c.get("detail", ""))
        )
        for c in (raw_checks if isinstance(raw_checks, list) else [])
        if isinstance(c, dict)
    ]
    ok = http_status == 200 and body.get("status") == "ok"
    if not checks and not ok:
        error = body.get("error") or f"HTTP {http_status} without checks"
        checks = [HealthCheck(name="answer", ok=False, detail=str(error))]
    return HealthView(http_status=http_status, ok=ok, checks=checks, answer=answer)


def health_rows(views: Mapping[str, HealthView | None]) -> list[HealthRow]:
    """The table of checks: one row per check of each view that answered, in order. A check a
    later view repeats is shown once (/readyz includes /healthz's: a worker that is not live is
    not ready)."""
    rows: list[HealthRow] = []
    seen: set[str] = set()
    for name, view in views.items():
        for c in view["checks"] if view is not None else []:
            if c["name"] in seen and c["name"] != "answer":
                continue
            seen.add(c["name"])
            rows.append(HealthRow(name, c["name"], c["ok"], c["detail"]))
    return rows


def health_summary(views: Mapping[str, HealthView | None]) -> str:
    """``/healthz ok (HTTP 200), /readyz degraded (HTTP 503)``: the line above the table."""
    return ", ".join(
        f"/{name} no answer"
        if view is None
        else f"/{name} {'ok' if view['ok'] else 'degraded'} (HTTP {view['http_status']})"
        for name, view in views.items()
    )


class MemberHealth(NamedTuple):
    """A member of the accounting group and its two views (None: no answer, or no address)."""

    member: workers.WorkerMember
    healthz: HealthView | None
    readyz: HealthView | None


class WorkerRow(NamedTuple):
    address: str
    partitions: str
    healthz: str
    readyz: str
    #: both views answered ok
    ok: bool


def view_state(view: HealthView | None) -> str:
    """``ok``, ``degraded: lag, redis`` (the failing checks, by name) or ``no answer``."""
    if view is None:
        return "no answer"
    if view["ok"]:
        return "ok"
    failing = [c["name"] for c in view["checks"] if not c["ok"]]
    if not failing:
        return f"degraded (HTTP {view['http_status']})"
    return f"degraded: {', '.join(failing)}"


def partition_ranges(partitions: Sequence[int]) -> str:
    """``0-2, 5``: runs of consecutive partitions (a worker of a 64-partition topic holds
    long ones); ``-`` for none."""
    runs: list[list[int]] = []
    for p in sorted(partitions):
        if runs and p == runs[-1][1] + 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) or "-"


def worker_rows(members: Sequence[MemberHealth]) -> list[WorkerRow]:
    """The workers' table: one row per group member, in the order given."""
    rows: list[WorkerRow] = []
    for m in members:
        url = m.member.url
        if url is None:
            # not a Governor worker's client id: it holds partitions, but has no web port
            address = f"{m.member.client_id} (no web address, from {m.member.client_host})"
            rows.append(WorkerRow(address, partition_ranges(m.member.partitions), "-", "-", False))
            continue
        ok = m.healthz is not None and m.healthz["ok"] and m.readyz is not None and m.readyz["ok"]
        rows.append(
            WorkerRow(
                url.removeprefix("http://"),
                partition_ranges(m.member.partitions),
                view_state(m.healthz),
                view_state(m.readyz),
                ok,
            )
        )
    return rows


def group_summary(group: workers.WorkerGroup) -> str:
    """The line above the workers' table, or the whole report when no worker runs."""
    if not group.members:
        return f"no workers in the group {group.group_id}"
    count = len(group.members)
    line = f"group {group.group_id}: {count} worker{'s' if count != 1 else ''}, {group.state}"
    if group.topic_partitions is None:
        return f"{line}; {group.topic} does not exist"
    line += f"; {group.topic} has {group.topic_partitions} partitions"
    idle = sum(1 for m in group.members if not m.partitions)
    if group.unassigned:
        # normal for a moment during a rebalance; for long, partitions nobody governs
        line += f", unassigned: {partition_ranges(group.unassigned)}"
    if idle and group.state == "stable":
        line += f", {idle} worker{'s' if idle != 1 else ''} without partitions"
    return line


def group_report(
    group_id: str,
    group: workers.WorkerGroup | None,
    members: Sequence[MemberHealth],
    error: str | None = None,
) -> dict[str, Any]:
    """``status --json``'s ``workers``: the group, and each member with both whole answers."""
    return {
        "group": group_id,
        "error": error,
        "state": group.state if group is not None else None,
        "topic": group.topic if group is not None else None,
        "topic_partitions": group.topic_partitions if group is not None else None,
        "unassigned": list(group.unassigned) if group is not None else [],
        "members": [
            {
                **dataclasses.asdict(m.member),
                "partitions": list(m.member.partitions),
                "url": m.member.url,
                "healthz": m.healthz,
                "readyz": m.readyz,
            }
            for m in members
        ],
    }


def _views(url: str) -> dict[str, HealthView | None]:
    from streams.worker import get_json_status

    healthz = health_view(get_json_status(f"{url}/healthz", timeout_s=3))
    # nothing answered /healthz: /readyz would not answer either, so do not wait twice
    readyz = None if healthz is None else health_view(get_json_status(f"{url}/readyz", timeout_s=3))
    return {"healthz": healthz, "readyz": readyz}


def _worker_health(s: Settings) -> dict[str, HealthView | None]:
    return _views(_worker_url(s))


def _group_health(
    s: Settings,
) -> tuple[workers.WorkerGroup | None, list[MemberHealth], str | None]:
    """The accounting group and every member's views, asked side by side (a group of many
    workers, some not answering, must not take a timeout per worker); the error instead when
    Kafka cannot say who is in the group."""
    from concurrent.futures import ThreadPoolExecutor

    try:
        group = workers.describe_worker_group(s)
    except workers.GroupLookupError as exc:
        return None, [], str(exc)

    def probe(member: workers.WorkerMember) -> MemberHealth:
        if member.url is None:
            return MemberHealth(member, None, None)
        views = _views(member.url)
        return MemberHealth(member, views["healthz"], views["readyz"])

    if not group.members:
        return group, [], None
    with ThreadPoolExecutor(max_workers=min(16, len(group.members))) as pool:
        return group, list(pool.map(probe, group.members)), None


def _print_workers(
    group_id: str, group: workers.WorkerGroup | None, members: list[MemberHealth], error: str | None
) -> None:
    from rich.markup import escape

    if group is None:
        console.print(f"workers of group {group_id}: unknown ({escape(error or '')})")
        return
    console.print(escape(group_summary(group)), highlight=False)
    if not members:
        return
    table = Table()
    for column in ("worker", "partitions", "/healthz", "/readyz"):
        table.add_column(column)

    def shown(state: str) -> str:
        if state == "ok":
            return "[green]ok[/]"
        if state in ("no answer", "-"):
            return f"[dim]{state}[/]"
        return f"[bold red]{escape(state)}[/]"

    for row in worker_rows(members):
        table.add_row(escape(row.address), row.partitions, shown(row.healthz), shown(row.readyz))
    console.print(table)


def _print_status(s: Settings, as_json: bool = False) -> None:
    from rich.markup import escape

    from streams.processor.lag import accounting_group

    services = stack.status(s)
    url = _worker_url(s)
    views = _worker_health(s)
    running = any(view is not None for view in views.values())
    group_id = accounting_group(s)
    group, members, group_error = _group_health(s)
    if as_json:
        _emit_json(
            {
                "stack": [
                    {
                        "service": st.service.name,
                        "address": st.service.address,
                        "pid": st.pid,
                        "running": st.running,
                        "log": str(st.service.log_file),
                    }
                    for st in services
                ],
                "workers": group_report(group_id, group, members, group_error),
                "worker": {"url": url, "running": running, **views},
            }
        )
        return
    table = Table(title=f"local stack ({s.state_dir})")
    for column in ("service", "address", "pid", "state", "log"):
        table.add_column(column)
    for st in services:
        table.add_row(
            st.service.name,
            st.service.address,
            str(st.pid or "-"),
            "[green]running[/]" if st.running else "[dim]stopped[/]",
            str(st.service.log_file),
        )
    console.print(table)
    _print_workers(group_id, group, members, group_error)
    if not running:
        if members:
            # the group has workers, only none on this shell's GOVERNOR_WEB_HOST/PORT
            console.print(f"worker {url} (GOVERNOR_WEB_PORT): nothing answers")
        else:
            console.print(f"worker: not running (nothing answers on {url})")
        return
    console.print(f"worker {url}: {health_summary(views)}", highlight=False)
    health = Table()
    for column in ("view", "check", "state", "detail"):
        health.add_column(column)
    for row in health_rows(views):
        state = "[green]ok[/]" if row.ok else "[bold red]FAIL[/]"
        # details carry worker text such as "partitions [0, 1]": not markup
        health.add_row(f"/{row.view}", escape(row.check), state, escape(row.detail))
    console.print(health)


# --- topics --------------------------------------------------------------------------------


def _ensure_topics(s: Settings) -> None:
    from streams.topics import ensure_topics

    created = ensure_topics(s)
    if created:
        log.info("created topics: %s", ", ".join(created))


@topics_app.callback(invoke_without_command=True)
def topics_main(ctx: typer.Context) -> None:
    """List Governor's topics with the configuration the broker reports."""
    if ctx.invoked_subcommand is None:
        topics_list()


@topics_app.command("list")
def topics_list() -> None:
    """List Governor's topics with the configuration the broker reports."""
    from streams.topics import admin_client, describe_topics, topic_specs

    s = settings()
    specs = topic_specs(s)
    infos = describe_topics(admin_client(s), [spec.name(s) for spec in specs])
    table = Table(title=f"topics on {s.bootstrap}")
    for column in ("topic", "key", "value", "partitions", "replicas", "min ISR", "retention",
                   "cleanup"):  # fmt: skip
        table.add_column(column)
    for spec, info in zip(specs, infos, strict=True):
        if not info.exists:
            table.add_row(info.name, spec.key, spec.value, "[red]missing[/]", "", "", "", "")
            continue
        table.add_row(
            info.name, spec.key, spec.value, str(info.partitions), str(info.replication),
            info.min_insync_replicas, _retention(info.retention_ms), info.cleanup_policy,
        )  # fmt: skip
    console.print(table)


@topics_app.command("create")
def topics_create() -> None:
    """Create every missing Governor topic (existing ones are left as they are)."""
    _ensure_topics(settings())
    topics_list()


@topics_app.command("acls")
def topics_acls(
    agent: Annotated[
        str, typer.Option(help="Principal of the agents' clients (User:NAME or NAME).")
    ] = "agent",
    worker: Annotated[str, typer.Option(help="Principal of the workers.")] = "worker",
    reader: Annotated[
        str, typer.Option(help="Principal of read-only tools (dashboards, ask, audit verify).")
    ] = "reader",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Print the Kafka ACLs the agent, worker and reader roles need, derived from the topic
    list (so new topics are covered): as a table and as kafka-acls.sh command lines to run as
    a super user (admin.properties: that user's client settings). Prints only; creates
    nothing. The agent may write gov.events and read gov.control and gov.policies, nothing
    else: above all it may not write gov.control."""
    from streams.kafka_acls import kafka_acls_command, role_acls

    s = settings()
    acls = role_acls(s, agent=agent, worker=worker, reader=reader)
    commands = [kafka_acls_command(acl, s.bootstrap) for acl in acls]
    if as_json:
        _emit_json({"acls": [acl.as_dict() for acl in acls], "commands": commands})
        return
    table = Table(title=f"ACLs for the topics under {s.topic_prefix!r}")
    for column in ("role", "principal", "resource", "name", "pattern", "operations", "why"):
        table.add_column(column)
    for acl in acls:
        table.add_row(
            acl.role, acl.principal, acl.resource, acl.name, acl.pattern,
            ", ".join(acl.operations), acl.why,
        )  # fmt: skip
    console.print(table)
    console.print("\n# create them (as a super user):")
    for line in commands:
        console.print(line, soft_wrap=True, markup=False, highlight=False)


def _retention(ms: str) -> str:
    if not ms:
        return ""
    value = int(ms)
    if value < 0:
        return "forever"
    hours = value / 3_600_000
    return f"{hours / 24:g} d" if hours >= 24 else f"{hours:g} h"


# --- the worker ----------------------------------------------------------------------------


@app.command()
def worker(
    port_file: Annotated[
        Path | None,
        typer.Option(help="Write the web port here once chosen (GOVERNOR_WEB_PORT=0: a free one)."),
    ] = None,
) -> None:
    """Run the stream worker (Faust) until interrupted; its web port serves /metrics.

    GOVERNOR_WEB_PORT=0 picks a free port; the worker prints the address it serves on.
    """
    from streams.worker import run_worker

    s = settings()
    _ensure_topics(s)
    run_worker(s, port_file=port_file)


# --- the demo ------------------------------------------------------------------------------


@app.command()
def demo(
    sessions: Annotated[int, typer.Option(help="Simulated agent sessions.")] = 600,
    rate: Annotated[float, typer.Option(help="Events per second (0: as fast as possible).")] = 600,
    corrupt: Annotated[int, typer.Option(help="Undecodable payloads to send.")] = 3,
    keep_stack: Annotated[bool, typer.Option(help="Leave Kafka and Redis running.")] = False,
) -> None:
    """The whole story: local Kafka and Redis, the worker, a simulated fleet with a prompt
    change, budget breaches and PII, decisions reaching the agents, then the answers.

    Corrupt payloads are sent too and land on the dead-letter topic with their reason. Stops
    what it started.
    """
    from streams.demo import run_demo

    s = settings()
    was_running = all(st.running for st in stack.status(s))
    try:
        stack.up(s)
        _ensure_topics(s)
        run_demo(s, console, sessions=sessions, corrupt=corrupt, rate=rate)
    except stack.StackError as exc:
        raise _fail(str(exc)) from exc
    finally:
        if not keep_stack and not was_running:
            stack.down(s)
            console.print("local stack stopped")


# --- the fleet simulator -------------------------------------------------------------------


@app.command()
def simulate(
    sessions: Annotated[int, typer.Option(help="Agent sessions to simulate.")] = 1000,
    rate: Annotated[
        float, typer.Option(help="Events sent per second of wall time (0: as fast as possible).")
    ] = 200.0,
    seed: Annotated[int, typer.Option(help="The same seed (and end) plans the same fleet.")] = 7,
    ground_truth: Annotated[
        Path | None,
        typer.Option(
            "--ground-truth",
            dir_okay=False,
            help="Write the exact truth of every session here (JSON Lines).",
        ),
    ] = None,
    days: Annotated[float, typer.Option(help="Simulated days of event time, ending now.")] = 7.0,
    change_at: Annotated[
        float,
        typer.Option(
            help="When acme/support-bot switches prompt p7 -> p8 (fraction of the period)."
        ),
    ] = 0.6,
    concurrency: Annotated[int, typer.Option(help="Sessions open at once.")] = 64,
    end_us: Annotated[
        int | None,
        typer.Option(help="End of the period, µs since the epoch (default now); to replay a run."),
    ] = None,
) -> None:
    """Run a simulated fleet of agents through the real client, on a running stack.

    Tenants and agents send a week of sessions in event time: heavy-tailed lengths and costs,
    tool and LLM failures with retries, errors and abandoned sessions, long contexts, budget
    breakers, denied tools, an unpriced model, PII in a tenth of the texts, and one agent whose
    prompt change brings more tool calls and more tool errors. Decisions are obeyed: a KILL ends
    a session. With --ground-truth every session's exact outcome, cost, tokens and planted PII
    is written, folded from the events actually sent. Start the stack first: `governor up`.
    """
    from confluent_kafka import KafkaException

    from streams.simulator.params import FleetParams
    from streams.simulator.run import run_simulation

    s = settings()
    try:
        params = FleetParams(
            sessions=sessions,
            seed=seed,
            days=days,
            change_at=change_at,
            concurrency=concurrency,
        )
        if end_us is not None:
            params = params.replace(end_us=end_us)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    try:
        _ensure_topics(s)
    except KafkaException as exc:
        raise _fail(f"cannot reach Kafka at {s.bootstrap} ({exc}); start it: governor up") from exc
    run_simulation(s, console, params, rate=rate, truth_path=ground_truth)


# --- policies ------------------------------------------------------------------------------

policy_app = typer.Typer(help="Enforcement policies: validate them before the worker loads them.")
app.add_typer(policy_app, name="policy")


@policy_app.command("check")
def policy_check(
    folder: Annotated[
        Path | None, typer.Argument(help="Policy folder (default: GOVERNOR_POLICIES_DIR).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable report.")] = False,
) -> None:
    """Validate the folder as the worker loads it: the policies, prices.yaml, pii.yaml,
    slo.yaml and gateway.yaml as one bundle. Prints the set, each problem as file:line: field:
    reason, and a warning for what is accepted but likely not meant (every tool denied,
    nothing enforced, a policy disabled, a default turned off).

    Exits 1 when anything is refused (the worker would keep its last good bundle), 0 when the
    bundle is valid, warnings or not.
    """
    from rich.markup import escape

    from streams.policy_files import PolicyError, load_bundle

    path = folder or settings().policies_dir
    try:
        bundle = load_bundle(path)
    except PolicyError as exc:
        if as_json:
            _emit_json({"folder": str(path), "valid": False, "problems": exc.problems})
        else:
            for problem in exc.problems:
                console.print(f"[bold red]error:[/] [red]{escape(problem)}[/]", highlight=False)
            console.print(
                f"[bold red]refused: {_count(len(exc.problems), 'problem')}[/] "
                "(the worker keeps its last good bundle)",
                highlight=False,
            )
        raise typer.Exit(code=1) from exc
    policy_set = bundle.policies
    if as_json:
        _emit_json(_bundle_report(path, bundle))
        return
    table = Table(title=f"policies v{policy_set.version} ({policy_set.digest}) in {path}")
    for column in ("id", "kind", "applies to", "limit", "action"):
        table.add_column(column)
    for policy in policy_set.policies:
        table.add_row(
            policy.id, policy.kind, _applies_to(policy), _limit(policy), policy.action.upper()
        )
    console.print(table)
    console.print(
        f"{len(bundle.prices.models)} model prices"
        f"{' + genai-prices' if bundle.prices.fallback is not None else ''}, "
        f"PII: {len(bundle.pii.entities)} entities "
        f"({len(bundle.pii.rules)} rules, default {bundle.pii.default}), "
        f"SLOs: {', '.join(s.name for s in bundle.slos) or 'none'}",
        highlight=False,
    )
    for warning in bundle.warnings:
        console.print(f"[bold yellow]warning:[/] [yellow]{escape(warning)}[/]", highlight=False)
    warned = (
        f", [bold yellow]{_count(len(bundle.warnings), 'warning')}[/]" if bundle.warnings else ""
    )
    console.print(f"[green]{len(policy_set.policies)} policies valid[/]{warned}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _bundle_report(path: Path, bundle: Any) -> dict[str, Any]:
    """``policy check --json`` of an accepted bundle."""
    return {
        "folder": str(path),
        "valid": True,
        "problems": [],
        "warnings": list(bundle.warnings),
        "version": bundle.policies.version,
        "digest": bundle.policies.digest,
        "bundle_digest": bundle.digest,
        "policies": [
            {
                "id": p.id,
                "kind": p.kind,
                "applies_to": _applies_to(p),
                "limit": _limit(p),
                "action": p.action.upper(),
            }
            for p in bundle.policies.policies
        ],
        "prices": sorted(bundle.prices.models),
        "pii": {
            "entities": list(bundle.pii.entities),
            "default": bundle.pii.default,
            "rules": len(bundle.pii.rules),
        },
        "slos": [s.name for s in bundle.slos],
        "files": sorted(bundle.files),
    }


@policy_app.command("backtest")
def policy_backtest(
    folder: Annotated[Path, typer.Argument(help="The candidate policy folder.")],
    from_: Annotated[str, typer.Option("--from", help="Window start: 2h, 7d, ISO-8601 ...")],
    to: Annotated[str, typer.Option("--to", help="Window end (default now).")] = "now",
    warmup: Annotated[
        str,
        typer.Option(
            help="Read this long before the window to warm the engines up (sessions "
            "begun before it, budgets already spent), or 'all' for the whole topic."
        ),
    ] = "all",
    live: Annotated[
        Path | None, typer.Option(help="The live policy folder (default GOVERNOR_POLICIES_DIR).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable report.")] = False,
) -> None:
    """Shadow mode: what the candidate policies would have done to retained history.

    Replays the events of the window (Kafka record time) through the candidate policies and
    the live ones, in this process, publishing nothing; reports decisions by policy, sessions
    stopped and cost avoided for both, next to the decisions the live worker published. The
    live set must reproduce the published decisions exactly: if it does not, the report says
    which differ (a policy change inside the window, or events no longer retained).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from streams.backtest import backtest
    from streams.pipeline.policy import duration_s
    from streams.policy_files import PolicyError
    from streams.times import parse_instant

    s = settings()
    try:
        from_us, to_us = parse_instant(from_), parse_instant(to)
        read_from = 0 if warmup == "all" else from_us - int(duration_s(warmup) * 1_000_000)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    if to_us < from_us:
        raise _fail("--to is before --from")
    bar = Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=Console(stderr=True), transient=True,
    )  # fmt: skip
    with bar:
        task = bar.add_task("replaying events", total=None)
        try:
            report = backtest(
                s, folder, from_us, to_us, read_from_us=max(0, read_from), live_dir=live,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )  # fmt: skip
        except PolicyError as exc:
            for problem in exc.problems:
                console.print(f"[red]{problem}[/]", highlight=False)
            raise typer.Exit(code=1) from exc
    if as_json:
        _emit_json(report.as_dict())
        return
    runs = (report.candidate, report.live_policies, report.published)
    table = Table(title=f"backtest of {folder}: {report.events_in_window:,} events in the window "
                        f"({report.events:,} read), {report.elapsed_s:.1f} s")  # fmt: skip
    for column in ("policy", "candidate (shadow)", "live policies (shadow)", "live (published)"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    policies = sorted({p for run in runs for p in run["by_policy"]})
    for policy in policies:
        table.add_row(policy, *(_actions(run["by_policy"].get(policy, {})) for run in runs))
    table.add_row("[bold]decisions", *(f"[bold]{run['decisions']:,}" for run in runs))
    table.add_row("sessions stopped", *(f"{run['sessions_stopped']:,}" for run in runs))
    table.add_row(
        "cost avoided",
        _money(report.candidate["cost_avoided_usd"]),
        _money(report.live_policies["cost_avoided_usd"]),
        "-",
    )
    console.print(table)
    if report.reproduces_live:
        console.print(
            f"[green]the live policies reproduce the {report.published['decisions']:,} "
            "published decisions exactly[/]"
        )
    else:
        console.print(
            f"[yellow]the live policies do not reproduce the published decisions: "
            f"{len(report.live_only_in_shadow)} only in the shadow run, "
            f"{len(report.live_only_published)} only published (a policy change inside the "
            "window, or events no longer retained?)[/]"
        )
    console.print(f"{len(report.candidate_only):,} decisions only the candidate would make")


def _actions(counts: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {action}" for action, n in sorted(counts.items())) or "-"


def _applies_to(policy: Any) -> str:
    scope = getattr(policy, "scope", "session")
    tenants = ",".join(policy.match.tenants)
    agents = ",".join(policy.match.agents)
    return f"{scope} of tenants {tenants} / agents {agents}"


def _limit(policy: Any) -> str:
    kind = policy.kind
    if kind == "budget":
        window = {"session": "", "session_tree": " per session tree"}.get(
            policy.scope, f" per {policy.window}"
        )
        warn = f", warn at {policy.warn_at:.0%}" if policy.warn_at else ""
        return f"${policy.limit_usd:,.2f}{window}{warn}"
    if kind == "concurrency":
        return f"{policy.max_active} open sessions"
    if kind == "step_rate":
        return f"{policy.max_steps} steps per {policy.window}"
    if kind == "tools":
        arguments = "".join(f"; deny {p.tool} args /{p.pattern}/" for p in policy.deny_arguments)
        return f"deny {', '.join(policy.deny) or '-'}; allow {', '.join(policy.allow)}{arguments}"
    if kind == "loop":
        return f"{policy.max_repeats} identical tool calls"
    if kind == "max_duration":
        return str(policy.max_duration)
    if kind == "degradation":
        return f"{policy.tool}: {policy.max_failures} failures in {policy.window}"
    return "unpriced model"


@policy_app.command("history")
def policy_history(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable answer.")] = False,
    events: Annotated[
        int,
        typer.Option(
            "--events",
            min=0,
            help="Latest events read per partition of gov.events to find which policy version "
            "each client reports using (clients with checks put it on every event); 0 skips.",
        ),
    ] = 2000,
) -> None:
    """Every policy version the worker accepted (gov.policies): digest, when, policy ids, and
    which one is in force (asked of the running worker); then which version each client
    reports using on its latest events."""
    from confluent_kafka import KafkaException

    from streams.policy_history import (
        client_reports,
        clients_answer,
        history_answer,
        load_policy_versions,
        read_event_tail,
    )
    from streams.times import format_instant
    from streams.worker import fetch_json

    s = settings()
    try:
        versions = load_policy_versions(s)
        tail = read_event_tail(s, events) if events else []
    except KafkaException as exc:
        raise _fail(f"cannot read gov.policies from Kafka at {s.bootstrap}: {exc}") from exc
    answer = history_answer(versions, fetch_json(f"{_worker_url(s)}/policies", timeout_s=3))
    answer["clients"] = clients_answer(client_reports(tail), len(tail))
    if as_json:
        _emit_json(answer)
        return
    table = Table(title=f"policy versions in {s.topic('policies')}")
    for column in ("version", "digest", "accepted (UTC)", "policies", "files", "in force"):
        table.add_column(column)
    for row in answer["versions"]:
        in_force = {True: "[green]in force[/]", False: "", None: "?"}[row["in_force"]]
        table.add_row(
            str(row["version"]),
            row["digest"],
            format_instant(row["accepted_at_us"]),
            ", ".join(row["policies"]),
            ", ".join(row["files"]),
            in_force,
        )
    console.print(table)
    if not answer["worker_reachable"]:
        console.print(f"no worker answers on {s.web_host}:{s.web_port}: in force unknown")
    _print_client_versions(answer["clients"], format_instant)


def _print_client_versions(clients: dict[str, Any], format_instant: Any) -> None:
    """The clients part of ``policy history``: one row per client seen in the events read."""
    if not clients["clients"]:
        console.print(
            f"no client reports a policy version in the {clients['events_scanned']:,} latest "
            "events (clients report it with Governor(checks=True))"
        )
        return
    scanned = clients["events_scanned"]
    table = Table(title=f"policy version reported by clients ({scanned:,} events)")
    for column in ("tenant", "agent", "client", "version", "source", "last seen (UTC)", "events"):
        table.add_column(column)
    for row in clients["clients"]:
        table.add_row(
            row["tenant_id"],
            row["agent_id"],
            row["client_id"],
            row["policy_version"],
            row["source"],
            format_instant(row["last_seen_us"]),
            f"{row['events']:,}",
        )
    console.print(table)


@policy_app.command("rollback")
def policy_rollback(
    to_version: Annotated[int, typer.Option("--to-version", help="The version to restore.")],
    reason: Annotated[str, typer.Option(help="Why (goes into the audit trail).")] = "",
    by: Annotated[str | None, typer.Option(help="Who rolls back (default: $USER).")] = None,
) -> None:
    """Put an earlier policy version back in force: the running worker writes its files from
    gov.policies into the policies folder, applies them at once and audits a ROLLBACK."""
    from streams.worker import auth_fix, post_json

    s = settings()
    payload = {"to_version": to_version, "reason": reason, "by": _who(by)}
    url = f"{_worker_url(s)}/policies/rollback"
    reply = post_json(url, payload, token=s.api_token)
    if reply is None:
        raise _fail(
            f"no worker answers on {s.web_host}:{s.web_port}; a rollback needs the running "
            "worker (start: governor worker)"
        )
    status, answer = reply
    if status in (401, 403):
        raise _fail(auth_fix(status, url))
    if status != 200:
        problems = "".join(f"\n  {p}" for p in answer.get("problems", []))
        raise _fail(f"{answer.get('error', f'HTTP {status}')}{problems}")
    if not answer["changed"]:
        console.print(f"policies v{answer['to_version']} ({answer['digest']}) already in force")
        return
    console.print(
        f"policies v{answer['from_version']} -> [bold]v{answer['to_version']}[/] "
        f"({answer['digest']}) in force: {', '.join(answer['policies'])}"
    )


def _worker_url(s: Settings) -> str:
    return workers.web_url(s.web_host, s.web_port)


def _who(by: str | None) -> str:
    """``--by``, else the user running the command."""
    import getpass
    import os

    if by and by.strip():
        return by.strip()
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# --- ask -----------------------------------------------------------------------------------

ask_app = typer.Typer(help="Operational questions, answered from tables and read-models.")
app.add_typer(ask_app, name="ask")


@ask_app.command("pii")
def ask_pii(
    since: Annotated[str, typer.Option(help="How far back: 24h, 7d, 30d ...")] = "7d",
    fingerprint: Annotated[
        str | None, typer.Option(help="Follow one value (its fingerprint) across hops.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable answer.")] = False,
) -> None:
    """What PII entered agent context, how it was handled and where it went (no values shown)."""
    import json as json_lib

    from streams.query.pii import pii_answer

    answer = pii_answer(settings(), since=since, fingerprint=fingerprint)
    if as_json:
        console.print_json(json_lib.dumps(answer))
        return
    if fingerprint:
        table = Table(title=f"where value {fingerprint[:16]}... went")
        for column in (
            "time (UTC)",
            "tenant/agent",
            "session",
            "hop",
            "tool",
            "destination",
            "handling",
        ):
            table.add_column(column)
        for hop in answer["hops"]:
            table.add_row(
                hop["time"],
                f"{hop['tenant_id']}/{hop['agent_id']}",
                hop["session_id"][:13],
                hop["hop"],
                hop["tool_name"] or "",
                hop["destination"],
                hop["handling"],
            )
        console.print(table)
        return
    table = Table(title=f"PII findings in the last {since}: {answer['total']:,}")
    for column in ("entity", "hop", "handling", "destination", "findings"):
        table.add_column(column, justify="right" if column == "findings" else "left")
    for row in answer["rows"]:
        table.add_row(
            row["entity_type"], row["hop"], row["handling"], row["destination"], f"{row['count']:,}"
        )
    console.print(table)


def _answers() -> Any:
    from streams.query.answers import Answers
    from streams.query.readmodel import SessionReadModel
    from streams.redis_client import redis_client

    s = settings()
    return Answers(SessionReadModel(redis_client(s), s.redis_key_prefix))


def _emit_json(answer: Any) -> None:
    import json as json_lib

    console.print_json(json_lib.dumps(answer))


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.4f}"


@ask_app.command("cost")
def ask_cost(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Average, p50 and p99 cost per session today, the same day last week and the last 7 days,
    for the fleet and by tenant and agent."""
    answer = _answers().cost()
    if as_json:
        _emit_json(answer)
        return
    table = Table(title="cost per session (event time, UTC days)")
    table.add_column("scope")
    for period in ("today", "same_day_last_week", "last_7_days"):
        table.add_column(period.replace("_", " "), justify="right")
    for scope, periods in answer["scopes"].items():
        cells = []
        for period in ("today", "same_day_last_week", "last_7_days"):
            p = periods.get(period, {})
            cells.append(
                f"avg {_money(p.get('avg_usd'))}  p50 {_money(p.get('p50_usd'))}  "
                f"p99 {_money(p.get('p99_usd'))}  max {_money(p.get('max_usd'))}  "
                f"n={p.get('sessions', 0):,}"
            )
        table.add_row(scope, *cells)
    console.print(table)


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
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The most expensive sessions and what made them expensive, next to the median session."""
    answer = _answers().top_cost(pct=pct, since=since, tree=tree)
    if as_json:
        _emit_json(answer)
        return
    if tree:
        console.print(render_trees(answer, pct, since))
        return
    table = Table(title=f"top {pct:g}% of {answer['sessions']:,} sessions by cost ({since})")
    for column in (
        "session",
        "agent",
        "cost",
        "tokens by model",
        "steps",
        "retries",
        "max context",
        "tool cost",
    ):
        table.add_column(column)
    rows = [*answer["top"], *([answer["median"]] if answer["median"] else [])]
    for i, s in enumerate(rows):
        name = "median" if answer["median"] and i == len(rows) - 1 else s["session_id"][:13]
        tokens = ", ".join(f"{m} {n:,}" for m, n in s["tokens_by_model"].items())
        table.add_row(
            name,
            f"{s['tenant_id']}/{s['agent_id']}",
            _money(s["cost_usd"]),
            tokens,
            str(s["steps"]),
            str(s["retries"]),
            f"{s['max_context_tokens']:,}",
            _money(s["tool_cost_usd"]),
        )
    console.print(table)


@ask_app.command("tree")
def ask_tree(
    session_id: Annotated[str, typer.Argument(help="The session at the top of the tree.")],
    since: Annotated[str, typer.Option(help="Sessions that ended in the last ...")] = "7d",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One session and every sub-agent session below it, with cost, tokens and steps rolled
    up over the tree (sessions link to the session that started them:
    ``Governor.session(parent=...)``, OTel parent spans, ``governor.parent_session_id``)."""
    try:
        answer = _answers().session_tree(session_id, since=since)
    except LookupError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        _emit_json(answer)
        return
    console.print(render_tree(answer))


def render_trees(answer: dict[str, Any], pct: float, since: str) -> Table:
    """``ask top-cost --tree`` as a table: one row per tree, its root's agent and its totals."""
    table = Table(
        title=f"top {pct:g}% of {answer['trees']:,} session trees ({answer['sessions']:,} "
        f"sessions) by total cost ({since})"
    )
    for column in ("root session", "agent", "tree cost", "own cost", "sessions", "depth",
                   "steps", "tokens in/out", "agents"):  # fmt: skip
        table.add_column(column)
    rows = [*answer["top"], *([answer["median"]] if answer["median"] else [])]
    for i, s in enumerate(rows):
        t = s["tree"]
        name = "median" if answer["median"] and i == len(rows) - 1 else s["session_id"][:13]
        agents = ", ".join(a.split("/", 1)[-1] for a in t["agents"][:4])
        table.add_row(
            name + (" ↑" if t["parent_outside"] else ""),
            f"{s['tenant_id']}/{s['agent_id']}",
            _money(t["cost_usd"]),
            _money(s["cost_usd"]),
            str(t["sessions"]),
            str(t["depth"]),
            str(t["steps"]),
            f"{t['input_tokens']:,}/{t['output_tokens']:,}",
            agents + (" …" if len(t["agents"]) > 4 else ""),
        )
    return table


def render_tree(answer: dict[str, Any]) -> Table:
    tree = answer["tree"]
    table = Table(
        title=f"session {answer['session']['session_id']}: {tree['sessions']} sessions, "
        f"{_money(tree['cost_usd'])} in total, {tree['steps']} steps ({answer['since']})"
    )
    for column in ("session", "agent", "cost", "steps", "retries"):
        table.add_column(column)
    for s in answer["members"]:
        table.add_row(
            s["session_id"][:13],
            f"{s['tenant_id']}/{s['agent_id']}",
            _money(s["cost_usd"]),
            str(s["steps"]),
            str(s["retries"]),
        )
    return table


@ask_app.command("outcomes")
def ask_outcomes(
    since: Annotated[str, typer.Option(help="Sessions that ended in the last ...")] = "24h",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Shares of completed, errored, timed-out and killed sessions, and the top failure modes."""
    answer = _answers().outcomes(since=since)
    if as_json:
        _emit_json(answer)
        return
    table = Table(title=f"{answer['sessions']:,} sessions in the last {since}")
    table.add_column("outcome")
    table.add_column("sessions", justify="right")
    table.add_column("share", justify="right")
    for status, n in answer["counts"].items():
        table.add_row(status, f"{n:,}", f"{answer['shares'][status]:.1%}")
    console.print(table)
    modes = Table(title="top failure modes")
    for column in ("error type", "step", "tool", "sessions"):
        modes.add_column(column)
    for mode in answer["failure_modes"]:
        modes.add_row(mode["error_type"], mode["step_kind"], mode["tool"], f"{mode['count']:,}")
    console.print(modes)


@ask_app.command("quality")
def ask_quality(
    since: Annotated[str, typer.Option(help="Sessions that ended in the last ...")] = "7d",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Evaluation scores by query category against the quality threshold; flagged categories
    come with sample sessions."""
    answer = _answers().quality(settings().quality_threshold, since=since)
    if as_json:
        _emit_json(answer)
        return
    table = Table(title=f"quality by category ({since}, threshold {answer['threshold']:g})")
    for column in ("category", "evaluation", "sessions", "mean", "below", "sample sessions"):
        table.add_column(column)
    for row in answer["categories"]:
        mean = "-" if row["mean"] is None else f"{row['mean']:.3f}"
        style = "[red]" if row["flagged"] else ""
        table.add_row(
            f"{style}{row['category']}",
            row["evaluation"],
            f"{row['sessions']:,}",
            f"{style}{mean}",
            f"{row['below_threshold']:,}",
            ", ".join(s[:13] for s in row["samples"]),
        )
    console.print(table)


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
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable answer.")] = False,
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
        raise _fail(str(exc)) from exc
    store = DriftStore(redis_client(s), s.redis_key_prefix)
    report = drift_report(store, agent, tenant=tenant, since_us=since_us)
    if as_json:
        _emit_json(report)
        return
    if not report["scopes"]:
        raise _fail(f"no finished sessions of agent {agent!r} in the drift samples")
    for scope in report["scopes"]:
        layers = "+".join(scope["layers"]) or "none"
        table = Table(
            title=f"{scope['scope']}: {scope['kind']} ({scope['change']}), layer {layers}; "
            f"{scope['n_after']} sessions vs {scope['n_before']}"
        )
        for column in ("behaviour", "test", "before", "after", "effect", "p", "p adj", ""):
            table.add_column(column, justify="left" if column == "behaviour" else "right")
        for row in scope["rows"]:
            table.add_row(
                row["metric"],
                row["test"],
                _drift_value(row["before"], row["summary"]),
                _drift_value(row["after"], row["summary"]),
                f"{row['effect_name']} {row['effect']:+.2f}",
                f"{row['p_value']:.2g}",
                f"{row['p_adjusted']:.2g}",
                "[bold red]SHIFT[/]" if row["shifted"] else "",
            )
        if not scope["rows"]:
            table.add_row("(too few sessions to compare)", "", "", "", "", "", "", "")
        console.print(table)
        for alert_id, state in scope["alerts"].items():
            console.print(f"  alert {alert_id}: {state}", highlight=False)


def _drift_value(value: float | None, how: str) -> str:
    if value is None:
        return "-"
    if how == "rate":
        return f"{value:.1%}"
    return f"{value:,.3g} ({how})"


@ask_app.command("slo")
def ask_slo(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
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
        raise _fail(f"no worker answers on {s.web_host}:{s.web_port} (start: governor worker)")
    if as_json:
        _emit_json(answer)
        return
    table = Table(title="SLOs (SLI over the last 3 days of event time)")
    for column in ("SLO", "objective", "SLI", "events", "budget left", "firing"):
        table.add_column(column)
    for row in answer["slos"]:
        sli = "-" if row["sli"] is None else f"{row['sli']:.3%}"
        left = "-" if row["budget_remaining"] is None else f"{row['budget_remaining']:.0%}"
        table.add_row(
            row["name"],
            f"{row['objective']:.1%}",
            sli,
            f"{row['events']:,}",
            left,
            ", ".join(row["firing"]),
        )
    console.print(table)


@ask_app.command("latency")
def ask_latency(
    window: Annotated[str, typer.Option(help="Sessions that ended in the last 1h, 24h ...")] = "1h",
    as_json: Annotated[bool, typer.Option("--json")] = False,
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
        answer = _answers().latency(window=window)
    if as_json:
        _emit_json(answer)
        return
    ms = answer["session_ms"]
    console.print(
        f"session latency over {window} ({answer['sessions']:,} sessions): "
        + "  ".join(f"{q} {v / 1000:,.1f}s" if v is not None else f"{q} -" for q, v in ms.items())
    )
    steps = answer.get("step_ms_by_kind", {})
    if steps:
        workers = answer.get("workers", 1)
        over = f", {workers} workers" if workers > 1 else ""
        step_table = Table(title=f"step latency by kind ({window}{over})")
        for column in ("kind", "steps", "p50", "p90", "p99"):
            step_table.add_column(column, justify="left" if column == "kind" else "right")
        for kind, q in steps.items():
            step_table.add_row(
                kind, f"{q['steps']:,}", *(f"{q[p] / 1000:,.2f}s" for p in ("p50", "p90", "p99"))
            )
        console.print(step_table)
    table = Table(title="slowest sessions today")
    for column in ("session", "agent", "duration", "bottleneck step", "step time", "share"):
        table.add_column(column)
    for s in answer["slowest_today"]:
        b = s["bottleneck"]
        table.add_row(
            s["session_id"][:13],
            s["agent_id"],
            f"{s['duration_ms'] / 1000:,.1f}s",
            f"{b['kind']} {b['name'] or ''}",
            f"{b['duration_ms'] / 1000:,.1f}s",
            f"{b['share']:.0%}",
        )
    console.print(table)


# --- replay ------------------------------------------------------------------------------


@app.command()
def replay(
    from_: Annotated[
        str, typer.Option("--from", help="Start: now, 2h (ago), ISO-8601 or epoch s/ms/µs.")
    ],
    to: Annotated[str, typer.Option("--to", help="End (inclusive), same forms.")] = "now",
    session: Annotated[str | None, typer.Option(help="Only this session (the key).")] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent's events.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's events.")] = None,
    to_topic: Annotated[
        str | None, typer.Option(help="Target topic (default <prefix>replay.<id>).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable report.")] = False,
) -> None:
    """Copy a time range of gov.events (or one session, agent or tenant of it) to a replay topic.

    Time is the Kafka record time of the events (when the client sent them). Copies keep key,
    bytes, headers, timestamp and partition, so every session keeps its order. Filters combine;
    with --agent or --tenant an event that does not decode is skipped and counted.

    Then run a fresh worker on the replay, with its own consumer group, state, output topics
    and Redis keys (its decisions go to <replay>.control, never to the live gov.control); the
    command prints these variables for the topic it wrote:

    GOVERNOR_EVENTS_TOPIC=gov.replay.<id> GOVERNOR_TOPIC_PREFIX=gov.replay.<id>.
    GOVERNOR_APP_ID=replay-<id> GOVERNOR_WEB_PORT=6067 governor worker

    Ask it with the same prefix: GOVERNOR_TOPIC_PREFIX=gov.replay.<id>. governor ask outcomes
    """
    import json as json_lib

    from confluent_kafka import KafkaException
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from streams.replay import ReplaySpec
    from streams.replay import replay as run_replay
    from streams.times import format_instant, parse_instant

    try:
        spec = ReplaySpec(
            from_us=parse_instant(from_),
            to_us=parse_instant(to),
            session_id=session,
            agent_id=agent,
            tenant_id=tenant,
            to_topic=to_topic,
        )
        if spec.to_us < spec.from_us:
            raise ValueError(f"--to {to} is before --from {from_}")
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    stderr = Console(stderr=True)
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
        disable=as_json and not stderr.is_terminal,
    )
    task = bar.add_task("records scanned", total=None)
    try:
        with bar:
            report = run_replay(
                settings(),
                spec,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except (ValueError, KafkaException) as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        print(json_lib.dumps(report.as_dict()))
        return
    table = Table(title=f"replay {format_instant(spec.from_us)} .. {format_instant(spec.to_us)}")
    table.add_column("partition", justify="right")
    table.add_column("scanned", justify="right")
    table.add_column("copied", justify="right")
    for p in report.partitions:
        table.add_row(str(p.partition), f"{p.scanned:,}", f"{p.copied:,}")
    table.add_row("[bold]all", f"[bold]{report.scanned:,}", f"[bold]{report.copied:,}")
    console.print(table)
    if report.skipped_undecodable:
        console.print(f"{report.skipped_undecodable:,} undecodable events skipped")
    console.print(
        f"{report.source_topic} -> [bold]{report.to_topic}[/]"
        f"{' (created)' if report.created_topic else ''} in {report.elapsed_s:.1f}s"
    )
    env = " ".join(f"{k}={v}" for k, v in report.worker_env.items())
    console.print(f"a fresh worker on it: {env} governor worker", highlight=False, soft_wrap=True)


# --- prices ------------------------------------------------------------------------------

prices_app = typer.Typer(
    help="Model prices: policies/prices.yaml overrides, then the genai-prices package's table."
)
app.add_typer(prices_app, name="prices")


@prices_app.command("check")
def prices_check(
    model: Annotated[
        str, typer.Argument(help="The model as events name it (gen_ai.request.model).")
    ],
    input_tokens: Annotated[
        int,
        typer.Option(
            "--input", min=0, help="Input tokens, cached and cache-written ones included."
        ),
    ] = 1_000_000,
    output_tokens: Annotated[int, typer.Option("--output", min=0, help="Output tokens.")] = 0,
    cache_read: Annotated[
        int, typer.Option("--cache-read", min=0, help="Input tokens read from the prompt cache.")
    ] = 0,
    cache_write: Annotated[
        int, typer.Option("--cache-write", min=0, help="Input tokens written to the prompt cache.")
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable result.")] = False,
) -> None:
    """What one call of MODEL would cost as the worker prices it, and where the price came from
    (an override in prices.yaml, or genai-prices with its version). Exits 1 when the model is
    unpriced (its calls are flagged and counted, never $0): add it to prices.yaml."""
    import json as json_lib

    from pydantic import ValidationError

    from streams.pipeline.pricing import load_prices, quote

    s = settings()
    path = s.policies_dir / "prices.yaml"
    if cache_read + cache_write > input_tokens:
        raise _fail(
            f"--cache-read {cache_read} + --cache-write {cache_write} exceed --input "
            f"{input_tokens}: cached tokens are part of the input tokens"
        )
    try:
        table = load_prices(path)
    except FileNotFoundError as exc:
        raise _fail(f"no price table at {path}: set GOVERNOR_POLICIES_DIR") from exc
    except ValidationError as exc:
        raise _fail(f"{path} is invalid: governor policy check {s.policies_dir} names it") from exc
    result = quote(table, model, input_tokens, output_tokens, cache_read, cache_write)
    if as_json:
        console.print_json(json_lib.dumps(result.as_dict()))
    elif result.cost_micros is None:
        console.print(
            f"[red]{model}: unpriced[/]: neither {path} nor genai-prices knows it; its calls are "
            "flagged and counted. Add it under per_million_tokens in prices.yaml.",
            highlight=False,
        )
    else:
        table_out = Table("tokens", "count", "USD / 1M", box=None)
        for kind, key, count in (
            ("input (uncached)", "input", input_tokens - cache_read - cache_write),
            ("cache read", "cache_read", cache_read),
            ("cache write", "cache_write", cache_write),
            ("output", "output", output_tokens),
        ):
            table_out.add_row(kind, f"{count:,}", result.per_million[key])
        console.print(table_out)
        console.print(
            f"{model}: [bold]${result.cost_usd:,.6f}[/] (from {result.source})", highlight=False
        )
    if result.cost_micros is None:
        raise typer.Exit(code=1)


# --- audit -------------------------------------------------------------------------------

audit_app = typer.Typer(
    help="The tamper-evident audit trail: hash-chained per tenant, heads and every N-th "
    "record signed with the worker's Ed25519 key."
)
app.add_typer(audit_app, name="audit")


def _read_anchors(spec: str) -> list[Any]:
    """``--anchor``: a file written by ``governor audit anchor --json``, or that JSON itself."""
    from streams.audit import AnchorError, parse_anchors

    path = Path(spec)
    text = spec if spec.lstrip().startswith(("{", "[")) else None
    if text is None:
        if not path.is_file():
            raise _fail(f"--anchor {spec}: no such file; give the file or the JSON itself")
        text = path.read_text()
    try:
        return parse_anchors(text)
    except AnchorError as exc:
        raise _fail(f"--anchor {spec}: {exc}") from exc


@audit_app.command("verify")
def audit_verify(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable result.")] = False,
    anchor: Annotated[
        list[str] | None,
        typer.Option(
            "--anchor",
            help="An anchor kept outside Kafka (a file or the JSON of `governor audit anchor "
            "--json`); the trail must still hold its record with the same hash. Repeatable.",
        ),
    ] = None,
) -> None:
    """Re-hash every chain of gov.audit, check its signatures and compare with the signed heads.

    Names the tenant, chain_seq and offset of every edited, removed, reordered or truncated
    record, of every head or record whose signature is missing or does not verify with the
    trusted public keys (the keys folder, or GOVERNOR_CONTROL_PUBLIC_KEYS), of every anchor the
    trail no longer holds, and the partition, offset and reason of any record that is not an
    AuditRecord; exits 1 when the trail is broken.
    """
    import json as json_lib

    from confluent_kafka import KafkaException

    from streams.audit import NoTrustedKeys, verify_audit_topic

    s = settings()
    anchors = [a for spec in anchor or [] for a in _read_anchors(spec)]
    try:
        result = verify_audit_topic(s, anchors=anchors)
    except NoTrustedKeys as exc:
        raise _fail(str(exc)) from exc
    except KafkaException as exc:
        raise _fail(f"cannot read the audit trail at {s.bootstrap}: {exc}") from exc
    if as_json:
        console.print_json(json_lib.dumps(result.as_dict()))
    else:
        for problem in result.breaks:
            if problem.offset is None:
                where = "end of chain"
            elif problem.partition is None:
                where = f"offset {problem.offset}"
            else:
                where = f"partition {problem.partition}, offset {problem.offset}"
            seq = "" if problem.chain_seq is None else f" #{problem.chain_seq}"
            # markup off: the problem quotes decoder messages, which may hold "[...]"
            console.print(
                f"{problem.tenant_id}{seq} ({where}): {problem.problem}",
                style="red",
                highlight=False,
                markup=False,
            )
        verdict = "[red]BROKEN[/]" if result.breaks else "[green]intact[/]"
        keys = ", ".join(result.keys)
        anchored = f", {result.anchors} anchors" if result.anchors else ""
        console.print(
            f"{result.records:,} records in {result.tenants} chains (keys {keys}{anchored}): "
            f"{verdict}"
        )
    if result.breaks:
        raise typer.Exit(code=1)


@audit_app.command("anchor")
def audit_anchor(
    tenant: Annotated[
        str | None, typer.Option(help="Only this tenant's chain (default: every chain).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="The anchor(s) as JSON, to keep outside Kafka.")
    ] = False,
) -> None:
    """Print a signed anchor of each chain: tenant, chain_seq, head hash, time, key id and the
    worker's signature (its head in gov.audit.heads, checked against the trail first).

    Keep the JSON outside Kafka (a ticket, a WORM bucket, a notary); later
    `governor audit verify --anchor FILE` proves the trail still holds that record unchanged,
    even if the chain and its heads were rewritten together since. Refuses a broken chain.
    """
    import json as json_lib
    from dataclasses import asdict

    from confluent_kafka import KafkaException

    from streams.audit import AnchorError, NoTrustedKeys, current_anchors
    from streams.times import format_instant

    s = settings()
    try:
        anchors = current_anchors(s, tenant)
    except (AnchorError, NoTrustedKeys) as exc:
        raise _fail(str(exc)) from exc
    except KafkaException as exc:
        raise _fail(f"cannot read the audit trail at {s.bootstrap}: {exc}") from exc
    if as_json:
        rows = [asdict(a) for a in anchors]
        console.print_json(json_lib.dumps(rows[0] if tenant else rows))
        return
    table = Table("tenant", "seq", "head hash", "signed at", "key", box=None)
    for a in anchors:
        table.add_row(a.tenant_id, str(a.chain_seq), a.hash, format_instant(a.time_us), a.key_id)
    console.print(table)
    console.print(
        "keep the --json output outside Kafka; check it with governor audit verify --anchor"
    )


# --- incidents -----------------------------------------------------------------------------

incident_app = typer.Typer(
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
    from confluent_kafka import KafkaException

    from streams.query.session_records import SessionNotFound, TopicNotFound, session_timeline
    from streams.query.timeline import describe_totals, timeline_table, tree_table, tree_totals

    s = settings()
    below: list[str] = []
    if tree:
        try:
            members = _answers().session_tree(session, since="7d")["members"]
        except LookupError as exc:
            raise _fail(f"{exc}; without --tree the timeline reads the events topic") from exc
        below = [m["session_id"] for m in members[1:]]
    try:
        timeline = session_timeline(s, session, events_topic=events_topic)
        descendants = [session_timeline(s, d, events_topic=events_topic) for d in below]
    except (SessionNotFound, TopicNotFound) as exc:
        raise _fail(str(exc)) from exc
    except KafkaException as exc:
        raise _fail(f"cannot read Kafka at {s.bootstrap}: {exc}") from exc
    if as_json:
        answer = timeline.to_dict()
        if tree:
            answer["descendants"] = [d.to_dict() for d in descendants]
            answer["tree_totals"] = tree_totals([timeline, *descendants]).to_dict()
        _emit_json(answer)
        return
    console.print(timeline_table(timeline))
    for line in describe_totals(timeline):
        console.print(line, markup=False, highlight=False)
    if tree:
        console.print(tree_table([timeline, *descendants]))


@contextmanager
def _incident_errors(s: Settings) -> Iterator[None]:
    """A refused change or an unreachable broker: one line and exit code 1."""
    from confluent_kafka import KafkaException

    try:
        yield
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    except KafkaException as exc:
        raise _fail(f"cannot reach Kafka at {s.bootstrap}: {exc}") from exc


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
        _ensure_topics(s)
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
            opened_by=_who(by),
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
        raise _fail("an entry is either --action or --downstream, not both")
    kind = "ACTION" if action else "DOWNSTREAM" if downstream else "NOTE"
    s = settings()
    with _incident_errors(s):
        incident = inc.add_entry(
            inc.find_incident(inc.load_incidents(s), incident_id),
            time_us=now_us(),
            author=_who(by),
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
            author=_who(by),
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
        _emit_json({"incidents": [inc.to_record(i) for i in chosen]})
        return
    table = Table(title=f"{'all' if include_closed else 'open'} incidents: {len(chosen)}")
    for column in ("id", "status", "severity", "layer", "opened (UTC)", "by", "range (UTC)",
                   "sessions", "entries", "title"):  # fmt: skip
        table.add_column(column)
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
        _emit_json(inc.to_record(i))
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
    table = Table(title="log")
    for column in ("#", "time (UTC)", "kind", "author", "text", "sessions"):
        table.add_column(column)
    for n, entry in enumerate(i.entries, 1):
        table.add_row(
            str(n),
            format_instant(entry.time_us),
            entry.kind,
            entry.author,
            entry.text,
            ", ".join(entry.sessions),
        )
    console.print(table)


def _incident_range(from_us: int, to_us: int | None) -> str:
    from streams.times import format_instant

    end = "ongoing" if to_us is None else format_instant(to_us)[:16]
    return f"{format_instant(from_us)[:16]} .. {end}"


# --- read-models ---------------------------------------------------------------------------

readmodel_app = typer.Typer(
    help="The Redis read-models (sessions, drift, PII ledger): mirrors of Kafka, rebuilt from it."
)
app.add_typer(readmodel_app, name="readmodel")


@readmodel_app.command("rebuild")
def readmodel_rebuild(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable result.")] = False,
) -> None:
    """Rebuild the read-models in Redis from Kafka: the sessions read-model and drift samples
    from gov.sessions (drift alert states from gov.alerts), the PII ledger from gov.pii.

    Safe next to a running worker and over a Redis that still holds them: every record counts
    once and no drift alert is sent. The worker rebuilds by itself when Redis comes back empty;
    this is the same, on demand. Progress goes to stderr. Exits 1 when Redis or Kafka cannot be
    reached.
    """
    import json as json_lib
    import time

    import redis
    from confluent_kafka import KafkaException

    from streams.processor.faults import describe
    from streams.query.rebuild import (
        Progress,
        RebuildInterrupted,
        rebuild_pii_ledger,
        rebuild_read_model,
    )
    from streams.redis_client import redis_client

    s = settings()
    progress_console = Console(stderr=True)

    def show(p: Progress) -> None:
        total = f" of ~{p.total:,}" if p.total else ""
        progress_console.print(
            f"{p.target}: {p.records:,}{total} records of {p.topic}, {p.rate:,.0f} records/s",
            highlight=False,
        )

    started = time.monotonic()
    client = redis_client(s)
    try:
        client.ping()
        model = rebuild_read_model(s, client=client, on_progress=show)
        ledger = rebuild_pii_ledger(s, client=client, on_progress=show)
    except RebuildInterrupted as exc:
        raise _fail(str(exc)) from None
    except redis.RedisError as exc:
        raise _fail(f"Redis at {s.redis_url_display} cannot be reached: {describe(exc)}") from None
    except (KafkaException, TimeoutError) as exc:
        raise _fail(f"Kafka at {s.bootstrap} cannot be reached: {describe(exc)}") from None
    finally:
        client.close()
    seconds = time.monotonic() - started
    if as_json:
        answer = {"read_model": model.as_dict(), "pii_ledger": ledger.as_dict(), "seconds": seconds}
        console.print_json(json_lib.dumps(answer))
        return
    dropped = (
        f", {model.dropped_scores:,} non-finite scores left out" if model.dropped_scores else ""
    )
    console.print(
        f"read-model: {model.records:,} sessions of {model.topic} ({model.applied:,} new{dropped}, "
        f"{model.alert_states:,} drift alert states restored) in {model.seconds:.1f}s",
        highlight=False,
    )
    console.print(
        f"PII ledger: {ledger.records:,} findings of {ledger.topic} ({ledger.applied:,} new) "
        f"in {ledger.seconds:.1f}s",
        highlight=False,
    )
    for result in (model, ledger):
        if result.undecodable:
            console.print(
                f"[yellow]{result.undecodable:,} undecodable records of {result.topic} skipped[/]"
            )
    console.print(f"rebuilt in {seconds:.1f}s", highlight=False)


#: top-level modules of the extras, and the install line that brings each (the base install is
#: the light agent client: `pip install fleet-governor`)
EXTRA_OF_MODULE = {
    **dict.fromkeys(
        ("faust", "mode", "aiokafka", "aiohttp", "prometheus_client", "uvloop", "google"),
        "worker",
    ),
    **dict.fromkeys(("presidio_analyzer", "presidio_anonymizer", "spacy"), "pii"),
    "opentelemetry": "otel",
    "langchain_core": "langchain",
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The install line for a module an extra brings, or None when it is not one of ours."""
    extra = EXTRA_OF_MODULE.get((exc.name or "").split(".")[0])
    return f"pip install 'fleet-governor[{extra}]'" if extra else None


def main() -> None:
    from streams.worker import ApiAuthError

    try:
        app()
    except ApiAuthError as exc:  # a read refused by the worker's tokens: one line, the fix
        console.print(f"[bold red]error:[/] {exc}")
        raise SystemExit(1) from None
    except ModuleNotFoundError as exc:  # a light install running a worker's command
        fix = missing_extra(exc)
        if fix is None:
            raise
        console.print(
            f"[bold red]error:[/] this command needs {exc.name}, not installed: {escape(fix)}"
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
