"""What every command module shares: the app, the console, settings and the error wrapper.

Commands are registered on :data:`app` (or a sub-app made with :class:`GovernorTyper`), whose
``command`` wraps each one in :func:`streams.cli.errors.guarded`: an expected failure (Redis or
Kafka unreachable, an unknown id, a bad argument) ends as one line and exit code 1.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console, RenderableType
from rich.logging import RichHandler

from streams import workers
from streams.kafka_config import LIBRDKAFKA_LOG
from streams.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

#: the widest a table is drawn without --wide: an ordinary terminal
TABLE_WIDTH = 100
#: the width ``--wide`` allows a table
WIDE_WIDTH = 250
#: the ``--wide`` option of a command that draws tables
Wide = Annotated[bool, typer.Option("--wide", help="Whole cells (tables wider than 100 columns).")]
# tables stay readable when the output is a file or a CI log, not only in a terminal
console = Console(width=None if sys.stdout.isatty() else TABLE_WIDTH)
log = logging.getLogger("governor")
#: the commands that run a service: librdkafka's own lines are part of what they report
SERVICE_COMMANDS = frozenset({"worker", "ingest", "gateway", "console"})


class GovernorTyper(typer.Typer):
    """A Typer whose commands run inside the error wrapper (:func:`streams.cli.errors.guarded`)."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        register = super().command(*args, **kwargs)

        def decorator(f: F) -> F:
            from streams.cli.errors import guarded

            register(guarded(f))
            return f

        return decorator


app = GovernorTyper(
    help="Governor: run fleets of AI agents (budgets, policies, answers, alerts) on Kafka.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    if ctx.invoked_subcommand not in SERVICE_COMMANDS and not verbose:
        # a command's failure is its one error line with the fix: librdkafka's own lines
        # (broker down, connection refused) would say it again, in its words (-v shows them)
        LIBRDKAFKA_LOG.setLevel(logging.CRITICAL)


def settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError as exc:  # a wrong GOVERNOR_* value: the message names it and the fix
        raise fail(str(exc)) from exc


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` (to stderr) and return the Exit(1) to raise."""
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code=1)


def ensure_topics(s: Settings) -> None:
    from streams.topics import ensure_topics as create_missing

    created = create_missing(s)
    if created:
        log.info("created topics: %s", ", ".join(created))


def answers() -> Any:
    from streams.query.answers import Answers
    from streams.query.readmodel import SessionReadModel
    from streams.redis_client import redis_client

    s = settings()
    return Answers(SessionReadModel(redis_client(s), s.redis_key_prefix))


def emit_json(answer: Any) -> None:
    import json as json_lib

    console.print_json(json_lib.dumps(answer))


def money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.4f}"


def worker_url(s: Settings) -> str:
    return workers.web_url(s.web_host, s.web_port)


def who(by: str | None) -> str:
    """``--by``, else the user running the command."""
    import getpass
    import os

    if by and by.strip():
        return by.strip()
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def show(rendered: Sequence[RenderableType], wide: bool = False) -> None:
    """Print renderables from :mod:`streams.cli.render`; ``wide`` lets tables pass 100 columns."""
    # rich never draws wider than its console: --wide draws on a console of its own width
    out = Console(width=WIDE_WIDTH, soft_wrap=False) if wide else console
    for item in rendered:
        out.print(item, highlight=False)
