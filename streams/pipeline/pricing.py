"""Pricing LLM calls in integer micro-USD: local overrides from ``policies/prices.yaml`` first,
then the maintained table of the ``genai-prices`` package (pinned in pyproject).

A model is resolved once and cached: its prices per million tokens (input, output, cache
read, cache write, and the tiers a provider charges above a prompt size) become a
:class:`ModelPrice`, which prices every later call with plain Decimal arithmetic (the worker
prices every event, the client every step). A model neither table knows is unpriced (None),
counted and flagged, never $0. genai-prices is imported on the first model the overrides do
not name (about 0.3 s, once per process), and its bundled snapshot is used as shipped: it never
fetches prices over the network.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from streams.pipeline.policy import FILE_MODEL_CONFIG, Version

MICROS_PER_USD = Decimal(1_000_000)
PER = Decimal(1_000_000)  # prices are per million tokens
#: USD per million tokens: $1 a token is far above any model's price, and a call's cost in
#: micro-USD (tokens times this) stays inside an Avro long up to trillions of tokens
MAX_PRICE_USD = 1_000_000

Price = Annotated[float, Field(ge=0, le=MAX_PRICE_USD)]


class ModelPriceEntry(BaseModel):
    """One model's line of ``prices.yaml``."""

    model_config = FILE_MODEL_CONFIG
    input: Price
    output: Price
    #: for gen_ai.usage.cache_read_input_tokens; the input price when absent
    cached_input: Price | None = None
    #: for cache_write_input_tokens (gen_ai.usage.cache_creation.input_tokens); the input
    #: price when absent
    cache_write: Price | None = None


#: where the models prices.yaml does not list are priced
GENAI_PRICES = "genai-prices"
OVERRIDE = "prices.yaml"


class PricesFile(BaseModel):
    """``policies/prices.yaml``, validated like every policy file."""

    model_config = FILE_MODEL_CONFIG
    version: Version = 1
    #: every amount Governor keeps is USD: another currency would be summed as dollars
    currency: Literal["USD"] = "USD"
    #: the maintained table for every model not listed below, or none (only these are priced)
    fallback: Literal["genai-prices", "none"] = "genai-prices"
    per_million_tokens: dict[str, ModelPriceEntry] = {}


@dataclass(frozen=True)
class Tier:
    """The prices (USD per million tokens) of a call whose input exceeds ``above`` tokens: a
    provider's tier applies to all of the call's tokens (genai-prices' threshold model)."""

    above: int
    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal


@dataclass(frozen=True)
class ModelPrice:
    """A model's prices in USD per million tokens, and where they came from."""

    input: Decimal
    output: Decimal
    cached_input: Decimal
    #: None: the input price
    cache_write: Decimal | None = None
    #: higher prompt-size tiers, by ``above`` ascending
    tiers: tuple[Tier, ...] = ()
    #: "prices.yaml", or "genai-prices <version> (<provider>/<model id>)"
    source: str = OVERRIDE
    _base: Tier = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        write = self.input if self.cache_write is None else self.cache_write
        object.__setattr__(
            self, "_base", Tier(0, self.input, self.output, self.cached_input, write)
        )

    def at(self, input_tokens: int) -> Tier:
        """The prices a call of ``input_tokens`` pays."""
        for tier in reversed(self.tiers):
            if input_tokens > tier.above:
                return tier
        return self._base

    def micros(
        self, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int
    ) -> int:
        """The cost in micro-USD; cached and cache-written tokens are part of ``input_tokens``
        (as OpenTelemetry counts them) and are priced at their own rates."""
        rate = self.at(input_tokens)
        fresh = max(0, input_tokens - cache_read - cache_write)
        usd = (
            fresh * rate.input
            + cache_read * rate.cached_input
            + cache_write * rate.cache_write
            + output_tokens * rate.output
        ) / PER
        return int((usd * MICROS_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


Resolver = Callable[[str], "ModelPrice | None"]


@dataclass(frozen=True)
class PriceTable:
    """The overrides, and (``fallback``) how a model they lack is resolved; every model looked
    up is cached, unpriced ones too, so the hot path is a dict lookup."""

    models: Mapping[str, ModelPrice]
    version: int = 1
    #: resolves a model the overrides lack (genai_prices_model); None: those are unpriced
    fallback: Resolver | None = None
    _resolved: dict[str, ModelPrice | None] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> PriceTable:
        """The table of a parsed ``prices.yaml``; pydantic's ValidationError when it is not one."""
        return cls.from_file(PricesFile.model_validate(raw))

    @classmethod
    def from_file(cls, prices: PricesFile) -> PriceTable:
        # through str: Decimal(0.075) would carry the float's binary error into every cost
        def dec(value: float | None, default: float) -> Decimal:
            return Decimal(str(default if value is None else value))

        models = {
            model: ModelPrice(
                input=dec(p.input, p.input),
                output=dec(p.output, p.output),
                cached_input=dec(p.cached_input, p.input),
                cache_write=dec(p.cache_write, p.input),
            )
            for model, p in prices.per_million_tokens.items()
        }
        fallback = genai_prices_model if prices.fallback == GENAI_PRICES else None
        return cls(models=models, version=prices.version, fallback=fallback)

    def lookup(self, model: str | None) -> ModelPrice | None:
        """The model's prices (the override wins), or None when nobody prices it."""
        name = model or ""
        price = self.models.get(name)
        if price is not None or self.fallback is None or not name:
            return price
        try:
            return self._resolved[name]
        except KeyError:
            resolved = self._resolved[name] = self.fallback(name)
            return resolved

    def price_micros(
        self,
        model: str | None,
        input_tokens: int | None,
        output_tokens: int | None,
        cache_read_input_tokens: int | None = None,
        cache_write_input_tokens: int | None = None,
    ) -> int | None:
        """Cost in micro-USD, or None when the model has no price (unpriced, not $0)."""
        price = self.lookup(model)
        if price is None:
            return None
        return price.micros(
            input_tokens or 0,
            output_tokens or 0,
            cache_read_input_tokens or 0,
            cache_write_input_tokens or 0,
        )


# --- genai-prices ---------------------------------------------------------------------------


def genai_prices_version() -> str | None:
    """The installed genai-prices, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("genai-prices")
    except PackageNotFoundError:
        return None


def preload_genai_prices() -> threading.Thread:
    """Import genai-prices' table in a daemon thread (about 0.3 s of CPU), so the first step of
    a model the overrides lack does not pay for it: a process that prices calls (the client at
    start, the worker) can call this once; a lookup meanwhile waits for the import, no more."""

    def load() -> None:
        try:
            from genai_prices.data_snapshot import get_snapshot
        except ImportError:
            return
        get_snapshot()

    thread = threading.Thread(target=load, name="genai-prices-preload", daemon=True)
    thread.start()
    return thread


def genai_prices_model(model: str, at: datetime | None = None) -> ModelPrice | None:
    """``model`` as genai-prices' bundled table prices it now (or ``at``), or None when it
    does not know the model or is not installed (a light client without it prices only the
    overrides)."""
    try:
        from genai_prices.data_snapshot import get_snapshot
        from genai_prices.types import TieredPrices
    except ImportError:
        return None
    try:
        provider, info = get_snapshot().find_provider_model(model, None, None, None)
    except LookupError:
        return None
    prices = info.get_prices(at or datetime.now(UTC))

    def rate(key: str, default: Any) -> Any:
        value = getattr(prices, key, None)
        return default if value is None else value

    keys = {
        "input": rate("input_mtok", None),
        "output": rate("output_mtok", Decimal(0)),
        "cached_input": rate("cache_read_mtok", None),
        "cache_write": rate("cache_write_mtok", None),
    }
    if keys["input"] is None:
        return None  # priced by something else than tokens (images, audio seconds): not ours
    keys["cached_input"] = (
        keys["cached_input"] if keys["cached_input"] is not None else keys["input"]
    )
    keys["cache_write"] = keys["cache_write"] if keys["cache_write"] is not None else keys["input"]

    def base(value: Any) -> Decimal:
        return Decimal(value.base if isinstance(value, TieredPrices) else value)

    def above(value: Any, start: int) -> Decimal:
        if not isinstance(value, TieredPrices):
            return Decimal(value)
        applicable = value.base
        for tier in value.tiers:
            if start >= tier.start:
                applicable = tier.price
        return Decimal(applicable)

    starts = sorted(
        {t.start for v in keys.values() if isinstance(v, TieredPrices) for t in v.tiers}
    )
    tiers = tuple(
        Tier(
            start,
            *(above(keys[k], start) for k in ("input", "output", "cached_input", "cache_write")),
        )
        for start in starts
    )
    return ModelPrice(
        input=base(keys["input"]),
        output=base(keys["output"]),
        cached_input=base(keys["cached_input"]),
        cache_write=base(keys["cache_write"]),
        tiers=tiers,
        source=f"{GENAI_PRICES} {genai_prices_version()} ({provider.id}/{info.id})",
    )


def load_prices(path: Any) -> PriceTable:
    import yaml

    with open(path) as fh:
        return PriceTable.from_mapping(yaml.safe_load(fh) or {})


# --- what a call would cost (governor prices check) ------------------------------------------


@dataclass(frozen=True)
class PriceQuote:
    """What one call of ``model`` with these token counts costs, and where the price is from."""

    model: str
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_write_input_tokens: int
    #: None: unpriced (neither prices.yaml nor genai-prices knows the model)
    cost_micros: int | None
    #: "prices.yaml" or "genai-prices <version> (<provider>/<model id>)"; "" when unpriced
    source: str
    #: USD per million tokens the call pays (its tier's, for a tiered model)
    per_million: dict[str, str]

    @property
    def cost_usd(self) -> float | None:
        return None if self.cost_micros is None else self.cost_micros / 1e6

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "priced": self.cost_micros is not None,
            "cost_usd": self.cost_usd,
            "cost_micros": self.cost_micros,
            "source": self.source,
            "tokens": {
                "input": self.input_tokens,
                "output": self.output_tokens,
                "cache_read": self.cache_read_input_tokens,
                "cache_write": self.cache_write_input_tokens,
            },
            "per_million_tokens_usd": self.per_million,
        }


def quote(
    table: PriceTable,
    model: str,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cache_read_input_tokens: int = 0,
    cache_write_input_tokens: int = 0,
) -> PriceQuote:
    price = table.lookup(model)
    counts = (input_tokens, output_tokens, cache_read_input_tokens, cache_write_input_tokens)
    if price is None:
        return PriceQuote(model, *counts, None, "", {})
    rate = price.at(input_tokens)
    per_million = {
        "input": str(rate.input),
        "output": str(rate.output),
        "cache_read": str(rate.cached_input),
        "cache_write": str(rate.cache_write),
    }
    return PriceQuote(model, *counts, price.micros(*counts), price.source, per_million)
