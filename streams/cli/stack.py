"""``governor up``, ``down``, ``status`` and ``topics``: the local stack and the group's health."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, TypedDict

import typer
from rich.markup import escape

from streams import stack, workers
from streams.cli import render
from streams.cli.base import (
    GovernorTyper,
    Wide,
    app,
    console,
    emit_json,
    ensure_topics,
    fail,
    settings,
    show,
    worker_url,
)
from streams.settings import Settings

if TYPE_CHECKING:
    from streams.topics import TopicInfo

topics_app = GovernorTyper(help="Governor's topics: list them as the broker reports, create them.")
app.add_typer(topics_app, name="topics")


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
        ensure_topics(s)
    except stack.StackError as exc:
        raise fail(str(exc)) from exc
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
    wide: Wide = False,
) -> None:
    """Show what of the local stack runs where, every worker of the group (address,
    partitions, /healthz, /readyz), and the checks of the worker at GOVERNOR_WEB_PORT."""
    _print_status(settings(), as_json=as_json, wide=wide)


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
    return _views(worker_url(s))


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
    group_id: str,
    group: workers.WorkerGroup | None,
    members: list[MemberHealth],
    error: str | None,
    wide: bool = False,
) -> None:

    if group is None:
        console.print(f"workers of group {group_id}: unknown ({escape(error or '')})")
        return
    console.print(escape(group_summary(group)), highlight=False)
    if not members:
        return
    show(render.workers(worker_rows(members), wide=wide), wide)


def _print_status(s: Settings, as_json: bool = False, wide: bool = False) -> None:

    from streams.processor.lag import accounting_group

    services = stack.status(s)
    url = worker_url(s)
    views = _worker_health(s)
    running = any(view is not None for view in views.values())
    group_id = accounting_group(s)
    group, members, group_error = _group_health(s)
    stack_rows: list[dict[str, Any]] = [
        {
            "service": st.service.name,
            "address": st.service.address,
            "pid": st.pid,
            "running": st.running,
            "log": str(st.service.log_file),
        }
        for st in services
    ]
    answer = {
        "stack": stack_rows,
        "workers": group_report(group_id, group, members, group_error),
        "worker": {"url": url, "running": running, **views},
    }
    if as_json:
        emit_json(answer)
        return
    show(render.stack(stack_rows, str(s.state_dir), wide=wide), wide)
    _print_workers(group_id, group, members, group_error, wide)
    if not running:
        if members:
            # the group has workers, only none on this shell's GOVERNOR_WEB_HOST/PORT
            console.print(f"worker {url} (GOVERNOR_WEB_PORT): nothing answers")
        else:
            console.print(f"worker: not running (nothing answers on {url})")
        return
    console.print(f"worker {url}: {health_summary(views)}", highlight=False)
    show(render.health(health_rows(views), wide=wide), wide)


# --- topics --------------------------------------------------------------------------------


@topics_app.callback(invoke_without_command=True)
def topics_main(ctx: typer.Context) -> None:
    """List Governor's topics with the configuration the broker reports."""
    if ctx.invoked_subcommand is None:
        topics_list()


@topics_app.command("list")
def topics_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable answer.")] = False,
    wide: Wide = False,
) -> None:
    """List Governor's topics with the configuration the broker reports."""
    from streams.topics import admin_client, describe_topics, topic_specs

    s = settings()
    specs = topic_specs(s)
    infos = describe_topics(admin_client(s), [spec.name(s) for spec in specs])
    answer = topics_answer(s.bootstrap, [(spec.key, spec.value) for spec in specs], infos)
    if as_json:
        emit_json(answer)
        return
    show(render.topics(answer, wide=wide), wide)


def topics_answer(
    bootstrap: str, kinds: Sequence[tuple[str, str]], infos: Sequence[TopicInfo]
) -> dict[str, Any]:
    """``topics list --json``: each topic's key and value schema, and what the broker reports
    (``exists`` false: the broker does not have it)."""
    return {
        "bootstrap": bootstrap,
        "topics": [
            {
                "name": info.name,
                "key": key,
                "value": value,
                "exists": info.exists,
                "partitions": info.partitions,
                "replicas": info.replication,
                "min_insync_replicas": info.min_insync_replicas,
                "retention_ms": info.retention_ms,
                "retention": _retention(info.retention_ms),
                "cleanup_policy": info.cleanup_policy,
            }
            for (key, value), info in zip(kinds, infos, strict=True)
        ],
    }


@topics_app.command("create")
def topics_create() -> None:
    """Create every missing Governor topic (existing ones are left as they are)."""
    ensure_topics(settings())
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
    wide: Wide = False,
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
    answer = {"acls": [acl.as_dict() for acl in acls], "commands": commands}
    if as_json:
        emit_json(answer)
        return
    show(render.acls(answer, s.topic_prefix, wide=wide), wide)
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
