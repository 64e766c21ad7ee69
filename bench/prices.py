"""What pricing costs on the hot path: the worker prices every event, the client every step.

    python -m bench.prices [--calls 200000]

Times, per call, PriceTable.price_micros for an override (prices.yaml), for a model priced by
genai-prices (resolved once, then cached), for an unpriced model (cached miss), the first
resolution of a model, and genai_prices.calc_price itself for comparison.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from streams.pipeline.pricing import load_prices
from streams.settings import Settings


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    n = args.calls
    table = load_prices(Settings.from_env().policies_dir / "prices.yaml")

    started = time.perf_counter()
    table.lookup("gpt-4o-mini")  # the first model not overridden: imports genai-prices
    first = (time.perf_counter() - started) * 1e3
    started = time.perf_counter()
    table.lookup("claude-sonnet-4")
    second = (time.perf_counter() - started) * 1e3
    print(f"first genai-prices resolution (import + lookup): {first:,.1f} ms; "
          f"another model: {second:,.2f} ms (once per model and process)")  # fmt: skip
    for label, model in (
        ("override (prices.yaml)", "claude-haiku-4"),
        ("genai-prices, cached", "claude-sonnet-4"),
        ("unpriced, cached miss", "my-finetune"),
    ):

        def price(m: str = model) -> object:
            return table.price_micros(m, 12_000, 800, 4_000, 1_000)

        us = per_call_us(price, n)
        print(f"price_micros {label:24} {us:6.2f} µs/call")

    from genai_prices import Usage, calc_price

    usage = Usage(input_tokens=12_000, output_tokens=800, cache_read_tokens=4_000,
                  cache_write_tokens=1_000)  # fmt: skip
    us = per_call_us(lambda: calc_price(usage, "claude-sonnet-4"), max(1, n // 20))
    print(f"genai_prices.calc_price (for comparison)   {us:6.2f} µs/call")


if __name__ == "__main__":
    main()
