"""``governor worker``: the stream worker."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from streams.cli.base import (
    app,
    ensure_topics,
    settings,
)

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
    ensure_topics(s)
    run_worker(s, port_file=port_file)
