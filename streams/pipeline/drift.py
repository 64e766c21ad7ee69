"""Behavioural drift: did an agent behave differently after a version change, or lately?

Pure functions over compact per-session samples (built from SessionSummary records):

- :func:`compare` tests one group of sessions against another on every behaviour the issue
  names — tool-call rate and mix, steps, tokens, cost, latency, error rate, failure modes,
  evaluation scores by category, output length — with Mann-Whitney U for per-session values
  and chi-square for mixes, a minimum sample per test, Holm's correction over the whole table,
  and an effect size per row (Cliff's delta, Cramér's V). A row is a *shift* only when its
  adjusted p-value is below ``alpha`` *and* its effect is at least ``min_effect``: with
  thousands of sessions a trivial difference is significant, and nobody should be paged for it.
- :func:`changed_layers` names the layer a version change touched (agent, model, prompt, tool,
  policy), so a drift alert says where to look first.
- :func:`version_checkpoints` / :func:`window_checkpoint` say when a detector looks: a few
  geometric looks after a change, and one look per fresh window without a change. Few looks
  keep the false-alarm rate of repeated testing low.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams.pipeline.stats import (
    OTHER,
    TestResult,
    chi2_sf,
    chi_square,
    contingency,
    holm,
    mann_whitney,
    normal_sf,
)

#: (sample field, layer name) in the order a version tuple lists them
LAYERS: tuple[tuple[str, str], ...] = (
    ("agent_version", "agent"),
    ("model_version", "model"),
    ("prompt_version", "prompt"),
    ("tool_schema_version", "tool"),
    ("policy_version", "policy"),
)
FAILED = ("ERROR", "TIMEOUT", "KILLED")

Sample = Mapping[str, Any]


@dataclass(frozen=True)
class DriftConfig:
    #: family-wise error rate of one before/after comparison (Holm over every row)
    alpha: float = 0.01
    #: the same for a window without a version change: such windows are looked at forever,
    #: so each look must be stricter for the false alarms to stay rare
    window_alpha: float = 0.001
    #: smallest |Cliff's delta|, Cramér's V or relative change of a rate that is a shift
    min_effect: float = 0.1
    #: sessions each side needs before a comparison is made at all
    min_sessions: int = 50
    #: sessions each side a per-category quality test needs
    min_category_sessions: int = 20
    #: the sessions before a change the after-sample is compared with (the latest ones)
    max_before: int = 2000
    #: looks after a change, in sessions of the new version; none after the last
    change_looks: tuple[int, ...] = (50, 100, 200, 300, 400, 600, 800)
    #: without a change: the oldest retained sessions of a version are the baseline ...
    baseline_sessions: int = 300
    #: ... and each fresh window of this many sessions is compared with it
    window_sessions: int = 200


@dataclass(frozen=True)
class MetricRow:
    metric: str
    test: str
    n_before: int
    n_after: int
    before: float | None
    after: float | None
    #: how ``before``/``after`` summarise the groups: median, pooled (a rate over all calls),
    #: rate (a share of sessions) or "" (a mix has no one number)
    summary: str
    effect: float
    effect_name: str
    p_value: float
    p_adjusted: float
    shifted: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Comparison:
    rows: tuple[MetricRow, ...]
    n_before: int
    n_after: int

    @property
    def shifted(self) -> tuple[MetricRow, ...]:
        return tuple(r for r in self.rows if r.shifted)

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_before": self.n_before,
            "n_after": self.n_after,
            "rows": [r.as_dict() for r in self.rows],
            "shifted": [r.metric for r in self.shifted],
        }


# --- samples -----------------------------------------------------------------------------


def sample(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What drift needs of one finished session (never content, only counts and names)."""
    steps = summary["steps_by_kind"]
    status = str(summary["status"])
    failure = None
    if status in FAILED:
        failure = "|".join(
            (
                summary.get("error_type") or status,
                str(summary.get("failure_step_kind") or "SESSION"),
                summary.get("failure_tool") or "-",
            )
        )
    return {
        "sid": summary["session_id"],
        "t": int(summary["start_time_us"]),
        "v": version_tuple(summary),
        "llm": int(steps.get("LLM_CALL", 0)),
        "tools": {k: int(v) for k, v in sorted(summary["tool_calls"].items())},
        "tok": int(summary["input_tokens"]) + int(summary["output_tokens"]),
        "out": int(summary["output_tokens"]),
        "cost": int(summary["cost_micros"]),
        "dur": max(0, int(summary["end_time_us"]) - int(summary["start_time_us"])),
        "failed": status in FAILED,
        "fail": failure,
        "cat": summary.get("category") or "uncategorised",
        "score": _quality(summary["evaluations"]),
    }


def _quality(evaluations: Mapping[str, float]) -> float | None:
    # ``output`` is the client's record of the answer itself, not a judgement of it
    scores = [float(v) for name, v in evaluations.items() if name != "output"]
    return sum(scores) / len(scores) if scores else None


def version_tuple(summary: Mapping[str, Any]) -> list[str]:
    return [str(summary.get(field) or "-") for field, _ in LAYERS]


def version_label(versions: Sequence[str]) -> str:
    return " ".join(f"{layer}={v}" for (_, layer), v in zip(LAYERS, versions, strict=True))


def changed_layers(before: Sequence[str], after: Sequence[str]) -> list[str]:
    """The layers whose version differs, in LAYERS order."""
    return [layer for (_, layer), a, b in zip(LAYERS, before, after, strict=True) if a != b]


def describe_change(before: Sequence[str], after: Sequence[str]) -> str:
    return ", ".join(
        f"{layer} {a} -> {b}"
        for (_, layer), a, b in zip(LAYERS, before, after, strict=True)
        if a != b
    )


# --- when to look ------------------------------------------------------------------------


def version_checkpoints(count_before: int, count_after: int, config: DriftConfig) -> bool:
    """Whether a version with ``count_after`` sessions is due a before/after look."""
    return count_before >= config.min_sessions and count_after in config.change_looks


def window_checkpoint(count: int, config: DriftConfig) -> bool:
    """Whether a version with ``count`` sessions just completed a fresh window."""
    past_baseline = count - config.baseline_sessions
    return past_baseline >= config.window_sessions and past_baseline % config.window_sessions == 0


# --- the comparison ----------------------------------------------------------------------


def _tool_calls(s: Sample) -> int:
    return sum(s["tools"].values())


def _per_session() -> tuple[tuple[str, Any], ...]:
    return (
        ("tool calls per session", _tool_calls),
        ("steps per session", lambda s: s["llm"] + _tool_calls(s)),
        ("tokens per session", lambda s: s["tok"]),
        ("cost per session (micro-USD)", lambda s: s["cost"]),
        ("session latency (ms)", lambda s: s["dur"] / 1000),
        ("output length (tokens)", lambda s: s["out"]),
    )


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return float(ordered[mid]) if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def rate_test(
    before: Sequence[tuple[float, float]], after: Sequence[tuple[float, float]]
) -> TestResult:
    """Two ratio metrics (e.g. tool calls per LLM call), pooled per group, compared with a
    Wald test whose variance comes from the delta method over sessions.

    Pooling every call of a group is far more powerful than ranking a per-session ratio (a
    session with one LLM call has no room for a tool call and only adds ties), and the delta
    method keeps each session one unit, so a session with many calls cannot pass for many
    independent observations. Effect: the relative change of the pooled rate.
    """

    def pooled(pairs: Sequence[tuple[float, float]]) -> tuple[float, float]:
        n = len(pairs)
        total = sum(d for _, d in pairs)
        if n < 2 or total <= 0:
            return math.nan, math.nan
        rate = sum(x for x, _ in pairs) / total
        mean_den = total / n
        residual = sum((x - rate * d) ** 2 for x, d in pairs) / (n - 1)
        return rate, residual / (n * mean_den**2)

    rate_b, var_b = pooled(before)
    rate_a, var_a = pooled(after)
    if math.isnan(rate_b) or math.isnan(rate_a) or var_a + var_b <= 0:
        return TestResult("rate (delta method)", 0.0, 1.0, 0.0, "relative_change",
                          len(before), len(after))  # fmt: skip
    z = (rate_a - rate_b) / math.sqrt(var_a + var_b)
    change = rate_a / rate_b - 1 if rate_b > 0 else math.inf
    return TestResult("rate (delta method)", z, min(1.0, 2 * normal_sf(abs(z))), change,
                      "relative_change", len(before), len(after))  # fmt: skip


def mix_test(before: Sequence[Mapping[str, int]], after: Sequence[Mapping[str, int]]) -> TestResult:
    """Whether the mix of calls (e.g. which tools) differs, sessions being the unit.

    Pearson's chi-square on the pooled calls assumes every call independent, but calls come in
    sessions, and a session that uses one tool tends to use it again: on a fleet with no change
    at all the plain test cries drift. So the statistic is divided by the dispersion of the
    sessions around their group's mix (the quasi-likelihood correction; 1 when calls are truly
    independent, never below 1). Effect: Cramér's V of the pooled table.
    """
    pooled_b: Counter[str] = Counter()
    pooled_a: Counter[str] = Counter()
    for s in before:
        pooled_b.update(s)
    for s in after:
        pooled_a.update(s)
    labels, table = contingency(pooled_b, pooled_a)
    plain = chi_square(table, len(before), len(after))
    if plain.dof in (None, 0):
        return plain
    known = set(labels)
    residual = 0.0
    dof = 0
    for group, row in ((before, table[0]), (after, table[1])):
        total = sum(row)
        shares = {label: n / total for label, n in zip(labels, row, strict=True) if n > 0}
        sessions = 0
        for s in group:
            counts: Counter[str] = Counter()
            for name, n in s.items():
                counts[name if name in known else OTHER] += n
            calls = sum(counts.values())
            if not calls:
                continue
            sessions += 1
            for label, share in shares.items():
                expected = calls * share
                residual += (counts.get(label, 0) - expected) ** 2 / expected
        dof += max(0, sessions - 1) * (len(shares) - 1)
    dispersion = max(1.0, residual / dof) if dof else 1.0
    statistic = plain.statistic / dispersion
    return TestResult(
        "chi-square (dispersion-adjusted)",
        statistic,
        chi2_sf(statistic, plain.dof),
        plain.effect,
        plain.effect_name,
        len(before),
        len(after),
        dof=plain.dof,
    )


def _pooled_rate(pairs: Sequence[tuple[float, float]]) -> float | None:
    total = sum(d for _, d in pairs)
    return sum(x for x, _ in pairs) / total if total else None


def compare(
    before: Sequence[Sample], after: Sequence[Sample], config: DriftConfig, *, window: bool = False
) -> Comparison:
    """Every behaviour of ``after`` against ``before``; rows lacking samples are left out.
    ``window``: a look without a version change, held to ``window_alpha``."""
    pending: list[tuple[str, str, float | None, float | None, TestResult]] = []

    def continuous(metric: str, b: Sequence[float], a: Sequence[float], minimum: int) -> None:
        if len(b) >= minimum and len(a) >= minimum:
            pending.append((metric, "median", _median(b), _median(a), mann_whitney(b, a)))

    def mix(metric: str, b: Counter[str], a: Counter[str], nb: int, na: int) -> None:
        if sum(b.values()) >= config.min_sessions and sum(a.values()) >= config.min_sessions:
            labels, table = contingency(b, a)
            if len(labels) > 1:
                pending.append((metric, "", None, None, chi_square(table, nb, na)))

    if len(before) >= config.min_sessions and len(after) >= config.min_sessions:
        rate_b = [(float(_tool_calls(s)), float(s["llm"])) for s in before]
        rate_a = [(float(_tool_calls(s)), float(s["llm"])) for s in after]
        pending.append(
            ("tool calls per LLM call", "pooled", _pooled_rate(rate_b), _pooled_rate(rate_a),
             rate_test(rate_b, rate_a))
        )  # fmt: skip
        for metric, value in _per_session():
            continuous(
                metric, [value(s) for s in before], [value(s) for s in after], config.min_sessions
            )
        failed_b = sum(s["failed"] for s in before)
        failed_a = sum(s["failed"] for s in after)
        table = [[len(before) - failed_b, failed_b], [len(after) - failed_a, failed_a]]
        pending.append(
            (
                "error rate",
                "rate",
                failed_b / len(before),
                failed_a / len(after),
                chi_square(table, len(before), len(after)),
            )
        )
        # which tools sessions use, each tool once per session: one runaway session calling
        # the same tool fifty times must not pass for a change of the whole fleet's mix
        pending.append(
            ("tool-call mix (sessions using each tool)", "", None, None,
             mix_test([dict.fromkeys(s["tools"], 1) for s in before],
                      [dict.fromkeys(s["tools"], 1) for s in after]))
        )  # fmt: skip
        modes_b = Counter(s["fail"] for s in before if s["fail"])
        modes_a = Counter(s["fail"] for s in after if s["fail"])
        mix("failure modes", modes_b, modes_a, failed_b, failed_a)
        for category in sorted({s["cat"] for s in after} | {s["cat"] for s in before}):
            continuous(
                f"quality[{category}]",
                [s["score"] for s in before if s["cat"] == category and s["score"] is not None],
                [s["score"] for s in after if s["cat"] == category and s["score"] is not None],
                config.min_category_sessions,
            )
    adjusted = holm([r.p_value for *_, r in pending])
    alpha = config.window_alpha if window else config.alpha
    rows = tuple(
        MetricRow(
            metric=metric,
            test=result.test,
            n_before=result.n_before,
            n_after=result.n_after,
            before=b,
            after=a,
            summary=how,
            effect=result.effect,
            effect_name=result.effect_name,
            p_value=result.p_value,
            p_adjusted=p_adj,
            shifted=p_adj < alpha and abs(result.effect) >= config.min_effect,
        )
        for (metric, how, b, a, result), p_adj in zip(pending, adjusted, strict=True)
    )
    return Comparison(rows, len(before), len(after))


def suspect_layer(shifted: Sequence[MetricRow]) -> str:
    """Without a version change, the layer to suspect first: tools when the tool behaviour or
    failures moved, otherwise the model (a provider changing what stands behind a name)."""
    tool_metrics = ("tool calls per LLM call", "tool calls per session")
    if any(r.metric in tool_metrics or r.metric.startswith(("tool-call mix", "failure modes"))
           for r in shifted):  # fmt: skip
        return "tool"
    return "model"


def headline(row: MetricRow) -> str:
    """One shifted row in words: ``tool calls per LLM call 0.61 -> 0.80 (cliffs_delta +0.24,
    p=3e-07)``."""
    values = ""
    if row.before is not None and row.after is not None:
        values = f" {row.before:.4g} -> {row.after:.4g}"
    return f"{row.metric}{values} ({row.effect_name} {row.effect:+.2f}, p={row.p_adjusted:.1g})"
