"""``governor simulate``: a simulated fleet through the real client."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from streams.cli.base import (
    app,
    console,
    ensure_topics,
    fail,
    settings,
)

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
        raise fail(str(exc)) from exc
    ensure_topics(s)  # Kafka unreachable: one line naming the fix (streams.cli.errors)
    run_simulation(s, console, params, rate=rate, truth_path=ground_truth)
