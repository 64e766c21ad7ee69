"""``governor``: the local stack, the worker, the demo, the answers.

One module per command group (:mod:`.stack` with the topics, :mod:`.worker`, :mod:`.policy`,
:mod:`.ask`, :mod:`.incident`, :mod:`.replay`, :mod:`.audit`, :mod:`.simulate`, :mod:`.demo`,
:mod:`.prices`, :mod:`.readmodel`; ``ingest``, ``gateway`` and ``console`` live in
:mod:`streams.commands`), the pure renderers in :mod:`.render` (an answer, the same dict
``--json`` prints, to a table) and the one error wrapper in :mod:`.errors`.
"""

from __future__ import annotations

from importlib import import_module

from rich.markup import escape

from streams.cli.base import app, console
from streams.cli.errors import EXTRA_OF_MODULE, missing_extra
from streams.cli.stack import (
    HealthCheck,
    HealthRow,
    HealthView,
    MemberHealth,
    WorkerRow,
    group_report,
    group_summary,
    health_rows,
    health_summary,
    health_view,
    partition_ranges,
    view_state,
    worker_rows,
)
from streams.commands.console import console as console_command
from streams.commands.gateway import gateway as gateway_command
from streams.commands.ingest import ingest as ingest_command

# importing a command module registers its commands, in the order --help lists them
app.command("ingest")(ingest_command)
app.command("gateway")(gateway_command)
app.command("console")(console_command)
for _group in ("worker", "demo", "simulate", "policy", "ask", "replay", "prices", "audit",
               "incident", "readmodel"):  # fmt: skip
    import_module(f"streams.cli.{_group}")

__all__ = [
    "EXTRA_OF_MODULE",
    "HealthCheck",
    "HealthRow",
    "HealthView",
    "MemberHealth",
    "WorkerRow",
    "app",
    "group_report",
    "group_summary",
    "health_rows",
    "health_summary",
    "health_view",
    "main",
    "missing_extra",
    "partition_ranges",
    "view_state",
    "worker_rows",
]


def main() -> None:
    """The ``governor`` entry point: the app, with the failures no command saw (a refused read,
    a missing extra at import) as one line too."""
    from streams.cli.errors import expected_failure

    try:
        app()
    except Exception as exc:
        line = expected_failure(exc)
        if line is None:
            raise
        console.print(f"[bold red]error:[/] {escape(line)}", highlight=False)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
