"""``governor replay``: copy a range of gov.events to a replay topic."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from streams.cli.base import (
    app,
    console,
    fail,
    settings,
)

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
        raise fail(str(exc)) from exc
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
    except ValueError as exc:
        raise fail(str(exc)) from exc
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
