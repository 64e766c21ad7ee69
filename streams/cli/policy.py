"""``governor policy``: check, backtest, history and rollback of the enforcement policies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from streams.cli import render
from streams.cli.base import (
    GovernorTyper,
    Wide,
    app,
    console,
    emit_json,
    fail,
    settings,
    show,
    who,
    worker_url,
)

# --- policies ------------------------------------------------------------------------------

policy_app = GovernorTyper(help="Enforcement policies: validate them before the worker loads them.")
app.add_typer(policy_app, name="policy")


@policy_app.command("check")
def policy_check(
    folder: Annotated[
        Path | None, typer.Argument(help="Policy folder (default: GOVERNOR_POLICIES_DIR).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable report.")] = False,
    wide: Wide = False,
) -> None:
    """Validate the folder as the worker loads it: the policies, prices.yaml, pii.yaml,
    slo.yaml and gateway.yaml as one bundle. Prints the set, each problem as file:line: field:
    reason, and a warning for what is accepted but likely not meant (every tool denied,
    nothing enforced, a policy disabled, a default turned off).

    Exits 1 when anything is refused (the worker would keep its last good bundle), 0 when the
    bundle is valid, warnings or not.
    """

    from streams.policy_files import PolicyError, load_bundle

    path = folder or settings().policies_dir
    try:
        bundle = load_bundle(path)
    except PolicyError as exc:
        refused = {"folder": str(path), "valid": False, "problems": exc.problems}
        if as_json:
            emit_json(refused)
        else:
            show(render.policy_refused(refused), wide)
        raise typer.Exit(code=1) from exc
    report = _bundle_report(path, bundle)
    if as_json:
        emit_json(report)
        return
    show(render.policy_check(report, wide=wide), wide)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _bundle_report(path: Path, bundle: Any) -> dict[str, Any]:
    """``policy check --json`` of an accepted bundle."""
    return {
        "folder": str(path),
        "valid": True,
        "problems": [],
        "warnings": list(bundle.warnings),
        "version": bundle.policies.version,
        "digest": bundle.policies.digest,
        "bundle_digest": bundle.digest,
        "policies": [
            {
                "id": p.id,
                "kind": p.kind,
                "applies_to": _applies_to(p),
                "limit": _limit(p),
                "action": p.action.upper(),
            }
            for p in bundle.policies.policies
        ],
        "prices": sorted(bundle.prices.models),
        "genai_prices": bundle.prices.fallback is not None,
        "pii": {
            "entities": list(bundle.pii.entities),
            "default": bundle.pii.default,
            "rules": len(bundle.pii.rules),
        },
        "slos": [s.name for s in bundle.slos],
        "files": sorted(bundle.files),
    }


@policy_app.command("backtest")
def policy_backtest(
    folder: Annotated[Path, typer.Argument(help="The candidate policy folder.")],
    from_: Annotated[str, typer.Option("--from", help="Window start: 2h, 7d, ISO-8601 ...")],
    to: Annotated[str, typer.Option("--to", help="Window end (default now).")] = "now",
    warmup: Annotated[
        str,
        typer.Option(
            help="Read this long before the window to warm the engines up (sessions "
            "begun before it, budgets already spent), or 'all' for the whole topic."
        ),
    ] = "all",
    live: Annotated[
        Path | None, typer.Option(help="The live policy folder (default GOVERNOR_POLICIES_DIR).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable report.")] = False,
    wide: Wide = False,
) -> None:
    """Shadow mode: what the candidate policies would have done to retained history.

    Replays the events of the window (Kafka record time) through the candidate policies and
    the live ones, in this process, publishing nothing; reports decisions by policy, sessions
    stopped and cost avoided for both, next to the decisions the live worker published. The
    live set must reproduce the published decisions exactly: if it does not, the report says
    which differ (a policy change inside the window, or events no longer retained).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from streams.backtest import backtest
    from streams.pipeline.policy import duration_s
    from streams.policy_files import PolicyError
    from streams.times import parse_instant

    s = settings()
    try:
        from_us, to_us = parse_instant(from_), parse_instant(to)
        read_from = 0 if warmup == "all" else from_us - int(duration_s(warmup) * 1_000_000)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    if to_us < from_us:
        raise fail("--to is before --from")
    bar = Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=Console(stderr=True), transient=True,
    )  # fmt: skip
    with bar:
        task = bar.add_task("replaying events", total=None)
        try:
            report = backtest(
                s, folder, from_us, to_us, read_from_us=max(0, read_from), live_dir=live,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )  # fmt: skip
        except PolicyError as exc:
            for problem in exc.problems:
                console.print(f"[red]{problem}[/]", highlight=False)
            raise typer.Exit(code=1) from exc
    if as_json:
        emit_json(report.as_dict())
        return
    show(render.backtest(report.as_dict(), str(folder), wide=wide), wide)


def _applies_to(policy: Any) -> str:
    scope = getattr(policy, "scope", "session")
    tenants = ",".join(policy.match.tenants)
    agents = ",".join(policy.match.agents)
    return f"{scope} of tenants {tenants} / agents {agents}"


def _limit(policy: Any) -> str:
    kind = policy.kind
    if kind == "budget":
        window = {"session": "", "session_tree": " per session tree"}.get(
            policy.scope, f" per {policy.window}"
        )
        warn = f", warn at {policy.warn_at:.0%}" if policy.warn_at else ""
        return f"${policy.limit_usd:,.2f}{window}{warn}"
    if kind == "concurrency":
        return f"{policy.max_active} open sessions"
    if kind == "step_rate":
        return f"{policy.max_steps} steps per {policy.window}"
    if kind == "tools":
        arguments = "".join(f"; deny {p.tool} args /{p.pattern}/" for p in policy.deny_arguments)
        return f"deny {', '.join(policy.deny) or '-'}; allow {', '.join(policy.allow)}{arguments}"
    if kind == "loop":
        return f"{policy.max_repeats} identical tool calls"
    if kind == "max_duration":
        return str(policy.max_duration)
    if kind == "degradation":
        return f"{policy.tool}: {policy.max_failures} failures in {policy.window}"
    return "unpriced model"


@policy_app.command("history")
def policy_history(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable answer.")] = False,
    events: Annotated[
        int,
        typer.Option(
            "--events",
            min=0,
            help="Latest events read per partition of gov.events to find which policy version "
            "each client reports using (clients with checks put it on every event); 0 skips.",
        ),
    ] = 2000,
    wide: Wide = False,
) -> None:
    """Every policy version the worker accepted (gov.policies): digest, when, policy ids, and
    which one is in force (asked of the running worker); then which version each client
    reports using on its latest events."""

    from streams.policy_history import (
        client_reports,
        clients_answer,
        history_answer,
        load_policy_versions,
        read_event_tail,
    )
    from streams.worker import fetch_json

    s = settings()
    # Kafka unreachable: one line naming the fix, from the CLI's wrapper (streams.cli.errors)
    versions = load_policy_versions(s)
    tail = read_event_tail(s, events) if events else []
    answer = history_answer(versions, fetch_json(f"{worker_url(s)}/policies", timeout_s=3))
    answer["clients"] = clients_answer(client_reports(tail), len(tail))
    if as_json:
        emit_json(answer)
        return
    worker = f"{s.web_host}:{s.web_port}"
    show(render.policy_history(answer, s.topic("policies"), worker, wide=wide), wide)


@policy_app.command("rollback")
def policy_rollback(
    to_version: Annotated[int, typer.Option("--to-version", help="The version to restore.")],
    reason: Annotated[str, typer.Option(help="Why (goes into the audit trail).")] = "",
    by: Annotated[str | None, typer.Option(help="Who rolls back (default: $USER).")] = None,
) -> None:
    """Put an earlier policy version back in force: the running worker writes its files from
    gov.policies into the policies folder, applies them at once and audits a ROLLBACK."""
    from streams.worker import auth_fix, post_json

    s = settings()
    payload = {"to_version": to_version, "reason": reason, "by": who(by)}
    url = f"{worker_url(s)}/policies/rollback"
    reply = post_json(url, payload, token=s.api_token)
    if reply is None:
        raise fail(
            f"no worker answers on {s.web_host}:{s.web_port}; a rollback needs the running "
            "worker (start: governor worker)"
        )
    status, answer = reply
    if status in (401, 403):
        raise fail(auth_fix(status, url))
    if status != 200:
        problems = "".join(f"\n  {p}" for p in answer.get("problems", []))
        raise fail(f"{answer.get('error', f'HTTP {status}')}{problems}")
    if not answer["changed"]:
        console.print(f"policies v{answer['to_version']} ({answer['digest']}) already in force")
        return
    console.print(
        f"policies v{answer['from_version']} -> [bold]v{answer['to_version']}[/] "
        f"({answer['digest']}) in force: {', '.join(answer['policies'])}"
    )
