"""What agent fleets import: ``from streams.client import Governor``."""

from streams.client.budget import Reservation
from streams.client.emitter import EmitterStats
from streams.client.errors import (
    BudgetExhausted,
    GovernorError,
    InputBlocked,
    PauseTimeout,
    SessionKilled,
    StepBlocked,
    ToolBlocked,
)
from streams.client.governor import Governor, Session, Step

__all__ = [
    "BudgetExhausted",
    "EmitterStats",
    "Governor",
    "GovernorError",
    "InputBlocked",
    "PauseTimeout",
    "Reservation",
    "Session",
    "SessionKilled",
    "Step",
    "StepBlocked",
    "ToolBlocked",
]
