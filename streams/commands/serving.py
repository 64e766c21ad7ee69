"""What every long-running ``governor`` server command shares: announcing where it listens
and turning a port it cannot take into one clear line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

#: the options every server command takes
HostOption = Annotated[str, typer.Option(help="Address to listen on.")]
PortFileOption = Annotated[
    Path | None, typer.Option(help="Write the port here once listening (with --port 0).")
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the listening address as one JSON line.")
]


def announce(
    what: str,
    host: str,
    bound: int,
    port_file: Path | None,
    as_json: bool,
    facts: dict[str, Any],
    tail: str,
) -> None:
    """Say where the server listens: the bound port in ``port_file`` (for scripts and tests
    that ask for port 0), then one line: ``<what> listening on <url> -> <tail>``, or with
    ``--json`` the URL and ``facts``."""
    if port_file is not None:
        port_file.write_text(f"{bound}\n")
    url = f"http://{host}:{bound}"
    if as_json:
        print(json.dumps({"listening": url, **facts}))
    else:
        print(f"{what} listening on {url} -> {tail}", flush=True)


def run_server(main: Coroutine[Any, Any, None], host: str, port: int) -> None:
    """Run the server until it stops; a port it cannot take exits 1 naming the fix."""
    try:
        asyncio.run(main)
    except OSError as exc:
        typer.echo(
            f"error: cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(pick another with --port, or 0 for a free one)",
            err=True,
        )
        raise typer.Exit(code=1) from exc
    except KeyboardInterrupt:
        pass
