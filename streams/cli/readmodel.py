"""``governor readmodel``: rebuild the Redis read-models from Kafka."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from streams.cli.base import (
    GovernorTyper,
    app,
    console,
    fail,
    settings,
)

# --- read-models ---------------------------------------------------------------------------

readmodel_app = GovernorTyper(
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
        raise fail(str(exc)) from None
    except redis.RedisError as exc:
        raise fail(f"Redis at {s.redis_url_display} cannot be reached: {describe(exc)}") from None
    except (KafkaException, TimeoutError) as exc:
        raise fail(f"Kafka at {s.bootstrap} cannot be reached: {describe(exc)}") from None
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
