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


class StepBlocked(GovernorError):
    """A check in the client refused the step before it ran; it is recorded as BLOCKED.

    ``policy_id`` names the policy (``pii`` for the PII rules), ``action`` what the worker would
    have done had the step run (KILL or PAUSE; DENY for a budget whose reservation could not be
    made with Redis down and ``on_unavailable: deny``), ``kind`` the step (LLM_CALL or
    TOOL_CALL) and ``name`` its tool or model.
    """

    def __init__(
        self,
        kind: str,
        name: str | None,
        policy_id: str,
        action: str,
        reason: str,
        message: str | None = None,
    ) -> None:
        super().__init__(message or f"{kind} {name!r} refused by policy {policy_id!r}: {reason}")
        self.kind = kind
        self.name = name
        self.policy_id = policy_id
        self.action = action
        self.reason = reason


class ToolBlocked(StepBlocked):
    """The PII policy blocks this tool call: its arguments hold a value that must not leave."""

    def __init__(self, tool: str, entity_types: list[str]) -> None:
        reason = f"its arguments hold {', '.join(entity_types)}"
        super().__init__(
            "TOOL_CALL", tool, "pii", "BLOCK", reason, f"tool {tool!r} blocked: {reason}"
        )
        self.tool = tool
        self.entity_types = entity_types


class InputBlocked(StepBlocked):
    """The PII policy blocks this LLM call: its input holds a value that must not reach it."""

    def __init__(self, model: str, entity_types: list[str]) -> None:
        reason = f"its input holds {', '.join(entity_types)}"
        super().__init__(
            "LLM_CALL", model, "pii", "BLOCK", reason, f"LLM call {model!r} blocked: {reason}"
        )
        self.entity_types = entity_types


class PauseTimeout(GovernorError):
    """A PAUSE lasted longer than the configured timeout without a RESUME."""


class BudgetExhausted(GovernorError):
    """A pre-flight reservation was refused: the hard cap has no room for the estimate."""

    def __init__(self, target: str, remaining_micros: int) -> None:
        super().__init__(f"hard budget of {target} has {remaining_micros / 1e6:.6f} USD left")
        self.target = target
        self.remaining_micros = remaining_micros
