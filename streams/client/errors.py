"""What the client raises into agent code."""

from __future__ import annotations


class GovernorError(Exception):
    """Base of the errors Governor raises into an agent."""


class SessionKilled(GovernorError):
    """A KILL decision applies to this session: stop before the next step."""

    def __init__(self, reason: str, policy_id: str, decision_id: str) -> None:
        super().__init__(f"session killed by policy {policy_id!r}: {reason}")
        self.reason = reason
        self.policy_id = policy_id
        self.decision_id = decision_id


class ToolBlocked(GovernorError):
    """The PII policy blocks this tool call: its arguments hold a value that must not leave."""

    def __init__(self, tool: str, entity_types: list[str]) -> None:
        super().__init__(f"tool {tool!r} blocked: its arguments hold {', '.join(entity_types)}")
        self.tool = tool
        self.entity_types = entity_types


class PauseTimeout(GovernorError):
    """A PAUSE lasted longer than the configured timeout without a RESUME."""


class BudgetExhausted(GovernorError):
    """A pre-flight reservation was refused: the hard cap has no room for the estimate."""

    def __init__(self, target: str, remaining_micros: int) -> None:
        super().__init__(f"hard budget of {target} has {remaining_micros / 1e6:.6f} USD left")
        self.target = target
        self.remaining_micros = remaining_micros
