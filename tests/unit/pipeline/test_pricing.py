"""Prices: overrides from prices.yaml win, genai-prices prices the rest (cache reads and
writes, tiers), an unknown model stays unpriced, and a model is resolved once."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from genai_prices import Usage, calc_price
from pydantic import ValidationError

from streams.pipeline.pricing import (
    ModelPrice,
    PricesFile,
    PriceTable,
    genai_prices_model,
    load_prices,
    preload_genai_prices,
    quote,
)

REPO = Path(__file__).resolve().parents[3]
SHIPPED = load_prices(REPO / "policies" / "prices.yaml")


def table(models: dict[str, dict[str, float]], fallback: str = "genai-prices") -> PriceTable:
    return PriceTable.from_mapping({"fallback": fallback, "per_million_tokens": models})


@pytest.mark.parametrize(
    ("model", "tokens"),
    [
        ("gpt-4o-mini", (12_000, 800, 4_000, 0)),
        ("gpt-4o", (1_000_000, 1_000_000, 0, 0)),
        ("claude-sonnet-4", (10_000, 500, 2_000, 1_000)),
        ("gemini-2.5-pro", (150_000, 2_000, 10_000, 0)),  # the base tier
        ("gemini-2.5-pro", (250_000, 2_000, 10_000, 0)),  # above 200k: all tokens at tier 2
        ("gemini-2.5-flash", (3_000, 7_000, 1_000, 0)),
    ],
)
def test_a_model_not_overridden_costs_what_genai_prices_says(
    model: str, tokens: tuple[int, int, int, int]
) -> None:
    inp, out, read, write = tokens
    expected = calc_price(
        Usage(
            input_tokens=inp, output_tokens=out, cache_read_tokens=read, cache_write_tokens=write
        ),
        model,
        genai_request_timestamp=datetime.now(UTC),
    ).total_price
    assert SHIPPED.price_micros(model, inp, out, read, write) == round(expected * 1_000_000)
    price = SHIPPED.lookup(model)
    assert price is not None
    assert price.source.startswith("genai-prices 0.2.3 (")


def test_an_override_wins_and_cache_tokens_have_their_own_rates() -> None:
    prices = table({"gpt-4o": {"input": 5.0, "output": 20.0, "cached_input": 1.0,
                               "cache_write": 6.0}})  # fmt: skip
    # 1M input of which 200k read from the cache and 100k written to it, 10k output
    assert prices.price_micros("gpt-4o", 1_000_000, 10_000, 200_000, 100_000) == (
        700_000 * 5 + 200_000 * 1 + 100_000 * 6 + 10_000 * 20
    )
    assert prices.lookup("gpt-4o") == ModelPrice(
        Decimal("5.0"), Decimal("20.0"), Decimal("1.0"), Decimal("6.0")
    )
    # without cache rates, cached and written tokens pay the input price
    plain = table({"m": {"input": 2.0, "output": 4.0}})
    assert plain.price_micros("m", 1_000_000, 0, 500_000, 500_000) == 2_000_000


def test_an_unknown_model_is_unpriced_and_resolved_once() -> None:
    calls: list[str] = []

    def resolver(model: str) -> ModelPrice | None:
        calls.append(model)
        return None

    prices = PriceTable({}, fallback=resolver)
    for _ in range(3):
        assert prices.price_micros("my-finetune", 1000, 10) is None
    assert calls == ["my-finetune"]
    assert SHIPPED.price_micros("no-such-model-anywhere", 1000, 10) is None
    assert genai_prices_model("no-such-model-anywhere") is None


def test_fallback_none_prices_only_the_overrides() -> None:
    only = table({"m": {"input": 1.0, "output": 1.0}}, "none")
    assert only.price_micros("gpt-4o", 1000, 10) is None
    assert only.price_micros("m", 1_000_000, 0) == 1_000_000


def test_the_shipped_table_keeps_its_overrides_and_knows_common_models() -> None:
    assert set(SHIPPED.models) == {"claude-haiku-4", "text-embedding-3-small",
                                   "text-embedding-3-large"}  # fmt: skip
    for model in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3", "claude-sonnet-4", "gemini-2.5-pro"):
        assert SHIPPED.lookup(model) is not None, model


def test_a_quote_says_the_cost_and_where_the_price_came_from() -> None:
    q = quote(SHIPPED, "claude-sonnet-4", 10_000, 500, 2_000, 1_000)
    assert q.cost_micros == 7_000 * 3 + 2_000 * 0.3 + 1_000 * 3.75 + 500 * 15
    assert q.per_million == {"input": "3", "output": "15", "cache_read": "0.3",
                             "cache_write": "3.75"}  # fmt: skip
    assert q.as_dict()["source"].startswith("genai-prices")
    assert quote(SHIPPED, "claude-haiku-4", 1_000_000).as_dict()["source"] == "prices.yaml"
    unpriced = quote(SHIPPED, "nope").as_dict()
    assert (unpriced["priced"], unpriced["cost_usd"]) == (False, None)


def test_a_bad_cache_write_price_or_fallback_is_refused() -> None:
    with pytest.raises(ValidationError, match="cache_write"):
        PricesFile.model_validate({"per_million_tokens": {"m": {"input": 1, "output": 1,
                                                                "cache_write": -1}}})  # fmt: skip
    with pytest.raises(ValidationError, match="fallback"):
        PricesFile.model_validate({"fallback": "litellm"})


def test_the_table_can_be_preloaded_in_the_background() -> None:
    thread = preload_genai_prices()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert SHIPPED.lookup("gpt-4o-mini") is not None


def test_the_simulators_unknown_model_stays_unpriced() -> None:
    """The simulated fleet's exactness tests count its calls as unpriced: a genai-prices bump
    that learns the name would break them; this says so first."""
    from streams.simulator.catalog import UNKNOWN_MODEL

    assert SHIPPED.lookup(UNKNOWN_MODEL) is None
