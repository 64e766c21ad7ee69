"""Pricing LLM calls from ``policies/prices.yaml`` in integer micro-USD (pure, no I/O here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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


class PricesFile(BaseModel):
    """``policies/prices.yaml``, validated like every policy file."""

    model_config = FILE_MODEL_CONFIG
    version: Version = 1
    #: every amount Governor keeps is USD: another currency would be summed as dollars
    currency: Literal["USD"] = "USD"
    per_million_tokens: dict[str, ModelPriceEntry] = {}


@dataclass(frozen=True)
class ModelPrice:
    input: Decimal
    output: Decimal
    cached_input: Decimal


@dataclass(frozen=True)
class PriceTable:
    models: Mapping[str, ModelPrice]
    version: int = 1

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> PriceTable:
        """The table of a parsed ``prices.yaml``; pydantic's ValidationError when it is not one."""
        return cls.from_file(PricesFile.model_validate(raw))

    @classmethod
    def from_file(cls, prices: PricesFile) -> PriceTable:
        # through str: Decimal(0.075) would carry the float's binary error into every cost
        models = {
            model: ModelPrice(
                input=Decimal(str(p.input)),
                output=Decimal(str(p.output)),
                cached_input=Decimal(str(p.input if p.cached_input is None else p.cached_input)),
            )
            for model, p in prices.per_million_tokens.items()
        }
        return cls(models=models, version=prices.version)

    def price_micros(
        self,
        model: str | None,
        input_tokens: int | None,
        output_tokens: int | None,
        cache_read_input_tokens: int | None = None,
    ) -> int | None:
        """Cost in micro-USD, or None when the model has no price (unpriced, not $0)."""
        price = self.models.get(model or "")
        if price is None:
            return None
        cached = cache_read_input_tokens or 0
        fresh = max(0, (input_tokens or 0) - cached)
        usd = (
            fresh * price.input + cached * price.cached_input + (output_tokens or 0) * price.output
        ) / PER
        return int((usd * MICROS_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def load_prices(path: Any) -> PriceTable:
    import yaml

    with open(path) as fh:
        return PriceTable.from_mapping(yaml.safe_load(fh) or {})
