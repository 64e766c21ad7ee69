"""``governor simulate``: plan a fleet, drive it through the real client, show what happened."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from streams.pipeline.pricing import load_prices
from streams.policy_files import load_pii_policy
from streams.settings import Settings
from streams.simulator.driver import DriveReport, drive, real_governors
from streams.simulator.params import FleetParams
from streams.simulator.plan import SessionPlan, plan_fleet
from streams.simulator.truth import OUTCOMES, TruthSummary, TruthWriter


def run_simulation(
    settings: Settings,
    console: Console,
    params: FleetParams,
    *,
    rate: float,
    truth_path: Path | None,
    checks: bool = False,
) -> tuple[DriveReport, TruthSummary]:
    """Plan, drive and summarise a fleet; ``checks``: the clients run their own checks (see
    :func:`streams.simulator.driver.real_governors`)."""
    prices = load_prices(settings.policies_dir / "prices.yaml")
    with console.status("planning the fleet"):
        # the PII policy the clients read: it decides which planned tool calls they refuse
        plans = plan_fleet(params, load_pii_policy(settings.policies_dir))
    console.print(
        f"{len(plans):,} sessions over {params.days:g} day{'' if params.days == 1 else 's'} ending "
        f"{_utc(params.end_us)} (seed {params.seed}, end_us {params.end_us}); "
        f"{params.changed_tenant}/{params.changed_agent} switches "
        f"{params.prompt_before} -> {params.prompt_after} at {_utc(params.change_us)}"
    )
    with TruthWriter(truth_path, params, prices) as writer:

        def done(plan: SessionPlan, events: Sequence[dict[str, object]]) -> None:
            writer.add(events, planted=plan.pii, budget_breaker=plan.budget_breaker)

        report = drive(
            plans,
            real_governors(settings, checks=checks),
            concurrency=params.concurrency,
            rate=rate,
            console=console,
            on_session=done,
        )
        summary = writer.summary
    print_summary(console, report, summary, truth_path)
    return report, summary


def print_summary(
    console: Console, report: DriveReport, summary: TruthSummary, truth_path: Path | None
) -> None:
    outcomes = Table(title="sessions by outcome")
    outcomes.add_column("outcome")
    outcomes.add_column("sessions", justify="right")
    outcomes.add_column("share", justify="right")
    for outcome in OUTCOMES:
        n = summary.by_outcome.get(outcome, 0)
        share = f"{n / summary.sessions:.1%}" if summary.sessions else "-"
        outcomes.add_row(outcome, f"{n:,}", share)
    outcomes.add_row("[bold]total", f"[bold]{summary.sessions:,}", "")
    console.print(outcomes)

    totals = Table(title="what the fleet sent")
    totals.add_column("measure")
    totals.add_column("value", justify="right")
    lost = report.dropped + report.failed + report.pending
    rows = [
        ("events emitted", f"{report.emitted:,}"),
        ("delivered", f"{report.delivered:,}"),
        (
            "dropped / failed / pending",
            f"{report.dropped:,} / {report.failed:,} / {report.pending:,}",
        ),
        ("LLM calls (unpriced)", f"{summary.llm_calls:,} ({summary.unpriced_calls:,})"),
        (
            "tool calls (blocked for PII)",
            f"{summary.tool_calls:,} ({summary.blocked_tool_calls:,})",
        ),
        ("retries", f"{summary.retries:,}"),
        ("total cost", f"${summary.cost_micros / 1e6:,.2f}"),
        ("budget breakers", f"{summary.budget_breakers:,}"),
        ("sessions calling a denied tool", f"{summary.denied_tool_sessions:,}"),
        (
            "PII values seeded (occurrences)",
            f"{summary.pii_values:,} ({summary.pii_occurrences:,})",
        ),
        ("decisions accepted", f"{report.decisions_accepted:,}"),
        ("wall time", f"{report.elapsed_s:.1f} s"),
    ]
    for name, value in rows:
        totals.add_row(name, value)
    console.print(totals)
    if lost:
        console.print(f"[yellow]{lost:,} events did not reach the broker (see the table)[/]")
    if truth_path is not None:
        console.print(f"ground truth: {truth_path}")


def _utc(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).strftime("%Y-%m-%d %H:%M UTC")
