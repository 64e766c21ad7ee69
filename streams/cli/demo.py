"""``governor demo``: the whole story on a local stack (:func:`streams.demo.run_demo`)."""

from __future__ import annotations

from typing import Annotated

import typer

from streams import stack
from streams.cli.base import app, console, ensure_topics, fail, settings


@app.command()
def demo(
    sessions: Annotated[int, typer.Option(help="Simulated agent sessions.")] = 600,
    rate: Annotated[float, typer.Option(help="Events per second (0: as fast as possible).")] = 600,
    corrupt: Annotated[int, typer.Option(help="Undecodable payloads to send.")] = 3,
    keep_stack: Annotated[
        bool, typer.Option(help="Leave Kafka and Redis running (not the worker).")
    ] = False,
    keep: Annotated[
        bool,
        typer.Option(
            "--keep",
            help="Leave Kafka, Redis, the worker and a console (governor console) running "
            "after the demo, to explore; governor demo --stop ends them.",
        ),
    ] = False,
    console_port: Annotated[
        int, typer.Option(help="The console's port with --keep (0: a free one).")
    ] = 6070,
    stop: Annotated[
        bool,
        typer.Option(
            "--stop", help="Stop what --keep left running (worker, console, Kafka, Redis)."
        ),
    ] = False,
) -> None:
    """The whole story: local Kafka and Redis, the worker, a simulated fleet whose clients
    check every step (denied tools and steps past a budget are refused before they run), a
    prompt change the drift detector finds, then the answers as `governor ask` prints them.

    Corrupt payloads are sent too and land on the dead-letter topic with their reason. Stops
    what it started, unless --keep (or --keep-stack) says otherwise.
    """
    from streams.demo import run_demo, stop_kept

    s = settings()
    if stop:
        stopped = stop_kept(s) + stack.down(s)
        console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        return
    was_running = all(st.running for st in stack.status(s))
    kept = None
    try:
        stack.up(s)
        ensure_topics(s)
        kept = run_demo(
            s, console, sessions=sessions, corrupt=corrupt, rate=rate, keep=keep,
            console_port=console_port,
        )  # fmt: skip
    except stack.StackError as exc:
        raise fail(str(exc)) from exc
    finally:
        if kept is None and not keep and not keep_stack and not was_running:
            stack.down(s)
            console.print("local stack stopped")
    if kept is not None:
        where = kept.console_url or "did not start (see logs/console.log in the state folder)"
        console.print(
            f"[bold]kept running[/]: Kafka and Redis ({s.state_dir}), the worker "
            f"{kept.worker_url} (pid {kept.worker_pid}), the console {where}\n"
            "stop them all: governor demo --stop",
            highlight=False,
        )
