"""What a simulated fleet looks like: every knob of :func:`streams.simulator.plan.plan_fleet`.

The defaults describe a week of a small multi-tenant fleet with the problems Governor exists to
find: a category that answers badly (``returns``), a prompt change that makes one agent call more
tools and fail more often, runaway sessions, denied tools, unpriced models, abandoned and failing
sessions, and PII in a tenth of the texts.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

US_PER_DAY = 86_400 * 1_000_000

#: tenant ids in the order a fleet of ``tenants`` tenants takes them
TENANT_NAMES = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell")
#: agent ids in the order a tenant takes them: every tenant runs at least the first two
AGENT_NAMES = ("support-bot", "billing-agent", "research-agent", "ops-agent")

#: mean evaluation score per query category; ``returns`` sits deliberately below the threshold
DEFAULT_CATEGORY_SCORES = (
    ("billing", 0.80),
    ("shipping", 0.82),
    ("returns", 0.55),
    ("technical", 0.78),
    ("account", 0.81),
)


def _now_us() -> int:
    # whole seconds, so a printed end time can be passed back to reproduce a run exactly
    return int(time.time()) * 1_000_000


@dataclass(frozen=True)
class FleetParams:
    """Everything that shapes a simulated fleet; the same params always plan the same fleet."""

    sessions: int = 1000
    seed: int = 7
    #: the simulated period ends here (event time, microseconds since the epoch)
    end_us: int = field(default_factory=_now_us)
    days: float = 7.0
    #: sessions open at once while driving (a memory bound of the driver, not event time)
    concurrency: int = 64

    # the fleet
    tenants: int = 3
    min_agents_per_tenant: int = 2
    max_agents_per_tenant: int = 4

    # quality
    category_scores: tuple[tuple[str, float], ...] = DEFAULT_CATEGORY_SCORES
    score_threshold: float = 0.7
    score_sd: float = 0.1

    # the shape of a session: LLM turns are lognormal (a heavy tail), capped
    llm_calls_median: float = 3.0
    llm_calls_sigma: float = 0.8
    max_llm_calls: int = 40
    #: mean tool calls after each LLM turn but the last (before a prompt change's factor)
    tool_calls_per_turn: float = 0.9
    #: LLM calls with 50k-150k input tokens
    long_context_fraction: float = 0.03

    # failures
    tool_error_rate: float = 0.05
    llm_error_rate: float = 0.02
    #: chance a failed call that can be retried is retried (at most twice in a row)
    retry_probability: float = 0.7
    #: sessions that end with an exception (outcome ERROR)
    error_fraction: float = 0.04
    #: sessions that stop without SESSION_END (the worker times them out)
    abandoned_fraction: float = 0.03

    # governance
    #: share of the texts (prompts, tool arguments and results, outputs) that carry PII
    pii_fraction: float = 0.10
    #: runaway sessions: many long-context calls, well above $2 each
    budget_breaker_fraction: float = 0.01
    #: sessions that call a tool policy denies (delete_account, shell_exec)
    denied_tool_fraction: float = 0.02
    #: LLM calls that report their own cost (the rest are priced by the worker)
    reported_cost_fraction: float = 0.2
    #: LLM calls to a model without a price (acme-llm-9)
    unknown_model_fraction: float = 0.01

    # the prompt change of one agent, at a fraction of the simulated period
    change_at: float = 0.6
    changed_tenant: str = "acme"
    changed_agent: str = "support-bot"
    prompt_before: str = "p7"
    prompt_after: str = "p8"
    changed_tool_call_factor: float = 1.3
    changed_tool_error_rate: float = 0.15

    def __post_init__(self) -> None:
        problems = []
        if self.sessions < 0:
            problems.append("sessions must be >= 0")
        if self.days <= 0:
            problems.append("days must be > 0")
        if self.concurrency < 1:
            problems.append("concurrency must be >= 1")
        if not 1 <= self.tenants <= len(TENANT_NAMES):
            problems.append(f"tenants must be 1..{len(TENANT_NAMES)}")
        if not 1 <= self.min_agents_per_tenant <= self.max_agents_per_tenant <= len(AGENT_NAMES):
            problems.append(f"agents per tenant must be 1 <= min <= max <= {len(AGENT_NAMES)}")
        if not self.category_scores:
            problems.append("at least one category is needed")
        for name in (
            "change_at",
            "long_context_fraction",
            "tool_error_rate",
            "llm_error_rate",
            "retry_probability",
            "error_fraction",
            "abandoned_fraction",
            "pii_fraction",
            "budget_breaker_fraction",
            "denied_tool_fraction",
            "reported_cost_fraction",
            "unknown_model_fraction",
            "changed_tool_error_rate",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be within 0..1")
        if self.error_fraction + self.abandoned_fraction > 1.0:
            problems.append("error_fraction + abandoned_fraction must be <= 1")
        if self.changed_tenant not in self.tenant_ids:
            problems.append(f"changed_tenant {self.changed_tenant!r} is not in {self.tenant_ids}")
        if self.changed_agent not in AGENT_NAMES[: self.min_agents_per_tenant]:
            problems.append(
                f"changed_agent must be one every tenant runs: "
                f"{AGENT_NAMES[: self.min_agents_per_tenant]}"
            )
        if problems:
            raise ValueError("invalid fleet parameters: " + "; ".join(problems))

    @property
    def tenant_ids(self) -> tuple[str, ...]:
        return TENANT_NAMES[: self.tenants]

    @property
    def start_us(self) -> int:
        """Where the simulated period begins."""
        return self.end_us - round(self.days * US_PER_DAY)

    @property
    def change_us(self) -> int:
        """When the changed agent switches from ``prompt_before`` to ``prompt_after``."""
        return self.start_us + round(self.change_at * (self.end_us - self.start_us))

    @property
    def category_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.category_scores)

    def replace(self, **changes: Any) -> FleetParams:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``params`` line of a ground-truth file)."""
        raw = dataclasses.asdict(self)
        raw["category_scores"] = {name: mean for name, mean in self.category_scores}
        return raw

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> FleetParams:
        """Inverse of :meth:`to_json`; unknown keys (such as ``type``) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in names}
        if "category_scores" in values:
            values["category_scores"] = tuple(
                (str(k), float(v)) for k, v in dict(values["category_scores"]).items()
            )
        return cls(**values)
