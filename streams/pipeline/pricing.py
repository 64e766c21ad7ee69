"""Pricing LLM calls from ``policies/prices.yaml`` in integer micro-USD (pure, no I/O here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

MICROS_PER_USD = Decimal(1_000_000)
PER = Decimal(1_000_000)  # prices are per million tokens


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
        models = {}
        for model, p in (raw.get("per_million_tokens") or {}).items():
            models[str(model)] = ModelPrice(
                input=Decimal(str(p["input"])),
                output=Decimal(str(p["output"])),
                cached_input=Decimal(str(p.get("cached_input", p["input"]))),
            )
        return cls(models=models, version=int(raw.get("version", 1)))

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
