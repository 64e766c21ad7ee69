"""``governor prices``: what a model call costs as the worker prices it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from streams.cli.base import (
    GovernorTyper,
    app,
    console,
    fail,
    settings,
)

# --- prices ------------------------------------------------------------------------------

prices_app = GovernorTyper(
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
        raise fail(
            f"--cache-read {cache_read} + --cache-write {cache_write} exceed --input "
            f"{input_tokens}: cached tokens are part of the input tokens"
        )
    try:
        table = load_prices(path)
    except FileNotFoundError as exc:
        raise fail(f"no price table at {path}: set GOVERNOR_POLICIES_DIR") from exc
    except ValidationError as exc:
        raise fail(f"{path} is invalid: governor policy check {s.policies_dir} names it") from exc
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
