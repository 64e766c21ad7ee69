"""A planned fleet shared by the simulator's unit tests (planning is pure, so sharing is safe)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streams.pipeline.pricing import PriceTable, load_prices
from streams.simulator.offline import simulate_offline
from streams.simulator.params import FleetParams
from streams.simulator.plan import SessionPlan, plan_fleet

REPO_ROOT = Path(__file__).resolve().parents[3]
#: a fixed end of the simulated week, so every run of the suite plans the same fleet
END_US = 1_764_000_000_000_000


@pytest.fixture(scope="session")
def prices() -> PriceTable:
    return load_prices(REPO_ROOT / "policies" / "prices.yaml")


@pytest.fixture(scope="session")
def fleet_params() -> FleetParams:
    return FleetParams(sessions=2000, seed=11, end_us=END_US)


@pytest.fixture(scope="session")
def fleet(fleet_params: FleetParams) -> list[SessionPlan]:
    return plan_fleet(fleet_params)


@pytest.fixture(scope="session")
def fleet_truth(fleet: list[SessionPlan], prices: PriceTable) -> dict[str, dict[str, Any]]:
    """Truth of every session of ``fleet`` played offline (nothing killed), by session id."""
    _events, truths = simulate_offline(fleet, prices)
    return {t["session_id"]: t for t in truths}
