"""The tables of status, topics, policy check / history and audit, drawn from the answers the
commands build (the same dicts ``--json`` prints) on a 100-column console: every line fits and
every row stays on one line; ``wide`` keeps every cell whole."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from streams import stack
from streams.audit import ChainBreak, SignedHead
from streams.cli import render
from streams.cli.policy import _bundle_report
from streams.cli.stack import (
    MemberHealth,
    health_rows,
    health_view,
    topics_answer,
    worker_rows,
)
from streams.pipeline.bypass import CLIENT_ID_ATTR, POLICY_SOURCE_ATTR, POLICY_VERSION_ATTR
from streams.policy_files import load_bundle
from streams.policy_history import bundle_version_of, client_reports, clients_answer, history_answer
from streams.settings import Settings, project_root
from streams.topics import TopicInfo, topic_specs
from streams.workers import WorkerMember
from tests.unit.cli.test_render import WIDTH, assert_fits, drawn

POLICIES = project_root() / "policies"
LONG = "a-rather-long-name-that-a-real-fleet-might-well-use-for-its-agents"


def test_status_tables_fit_and_cut_long_cells(tmp_path: Path) -> None:
    state_dir = tmp_path / ("state-" + "x" * 80)
    s = Settings(state_dir=state_dir)
    services = stack.status(s)  # nothing runs there: every service stopped
    rows = [
        {
            "service": st.service.name,
            "address": st.service.address,
            "pid": st.pid,
            "running": st.running,
            "log": str(st.service.log_file),
        }
        for st in services
    ]
    lines = drawn(render.stack(rows, str(state_dir)))
    assert_fits(lines, len(rows))
    assert any("…" in line for line in lines)  # the log paths under the long folder are cut
    wide = drawn(render.stack(rows, str(state_dir), wide=True), wide=True)
    assert any(str(services[0].service.log_file) in line for line in wide)

    ok = health_view((200, {"status": "ok", "checks": [{"name": "loop", "ok": True}]}))
    degraded = health_view(
        (
            503,
            {
                "status": "degraded",
                "checks": [
                    {"name": "partitions", "ok": True, "detail": "6 assigned and restored"},
                    {"name": "lag", "ok": False, "detail": "164766 events behind " + "x" * 90},
                    {"name": "redis", "ok": False, "detail": "Error 111 connecting " + "y" * 90},
                ],
            },
        )
    )
    members = [
        MemberHealth(
            WorkerMember(
                f"m{n}",
                f"governor-worker@{LONG}:{7000 + n}",
                LONG,
                LONG,
                7000 + n,
                tuple(range(n * 20, n * 20 + 20, 2)),
            ),
            ok,
            degraded,
        )
        for n in range(3)
    ]
    worker_table = worker_rows(members)
    lines = drawn(render.workers(worker_table))
    assert_fits(lines, len(worker_table))
    assert "degraded: lag, redis" in "\n".join(drawn(render.workers(worker_table, wide=True), True))

    checks = health_rows({"healthz": ok, "readyz": degraded})
    lines = drawn(render.health(checks))
    assert_fits(lines, len(checks))
    assert sum("FAIL" in line for line in lines) == 2


def test_topics_fit_with_missing_ones() -> None:
    s = Settings(topic_prefix="governor-production-eu-west-1.")
    specs = topic_specs(s)
    infos = [
        TopicInfo(
            spec.name(s),
            n % 4 != 3,
            64,
            3,
            "604800000" if n % 2 else "-1",
            "compact,delete" if n % 3 == 0 else "delete",
            "2",
        )
        for n, spec in enumerate(specs)
    ]
    answer = topics_answer(s.bootstrap, [(spec.key, spec.value) for spec in specs], infos)
    assert [t["retention"] for t in answer["topics"][:2]] == ["forever", "7 d"]
    lines = drawn(render.topics(answer))
    assert_fits(lines, len(specs))
    assert sum("missing" in line for line in lines) == sum(1 for i in infos if not i.exists)
    # numbers whole: the partition count of every existing topic is shown
    assert sum(" 64 " in line for line in lines) == sum(1 for i in infos if i.exists)


def test_policy_check_of_the_repository_bundle_fits() -> None:
    report = _bundle_report(POLICIES, load_bundle(POLICIES))
    lines = drawn(render.policy_check(report))
    assert_fits(lines, len(report["policies"]))
    assert lines[-1].startswith(f"{len(report['policies'])} policies valid")
    # a policy with long names: cut in the table, whole with --wide
    long = {**report["policies"][0], "id": LONG, "applies_to": f"agent:{LONG}/{LONG}"}
    report = {**report, "policies": [*report["policies"], long]}
    lines = drawn(render.policy_check(report))
    assert_fits(lines, len(report["policies"]))
    assert LONG not in "\n".join(lines)
    assert LONG in "\n".join(drawn(render.policy_check(report, wide=True), True))


def test_a_refused_bundle_lists_every_problem() -> None:
    problems = ["governor.yaml:3: policies[0].limit: must be > 0", "pii.yaml:1: [x]: unknown"]
    lines = drawn(render.policy_refused({"problems": problems}))
    assert lines == [f"error: {p}" for p in problems] + [
        "refused: 2 problems (the worker keeps its last good bundle)"
    ]


def test_policy_history_fits_with_clients() -> None:
    bundle = load_bundle(POLICIES)
    # three accepted versions of the repository's bundle
    versions = {
        v: dataclasses.replace(
            bundle_version_of(bundle, 1_780_000_000_000_000 + v), version=v, digest=f"{v:016x}"
        )
        for v in (1, 2, 3)
    }
    answer = history_answer(versions, {"version": 2, "digest": versions[2].digest})
    events = [
        {
            "tenant_id": f"tenant-{n}-{LONG}",
            "agent_id": f"agent-{n}-{LONG}",
            "start_time_us": 1_780_000_000_000_000 + n,
            "attributes": {
                CLIENT_ID_ATTR: f"client-{n}-{LONG}",
                POLICY_VERSION_ATTR: f"v2:{versions[2].digest}",
                POLICY_SOURCE_ATTR: "gov.policies",
            },
        }
        for n in range(5)
    ]
    answer["clients"] = clients_answer(client_reports(events), len(events))
    lines = drawn(render.policy_history(answer, "gov.policies", "127.0.0.1:8000"))
    assert max(len(line) for line in lines) <= WIDTH, "\n".join(lines)
    body = [line for line in lines if line.startswith("│")]
    assert len(body) == len(versions) + len(events), "\n".join(lines)
    assert sum("in force" in line for line in body) == 1
    # times and digests whole, the version a client reports with its digest cut to 8
    assert all("2026-05-28 20:26:40.000" in line for line in body)
    assert sum(f"v2:{versions[2].digest[:8]}…" in line for line in body) == len(events)
    short = [{**e, "tenant_id": "acme", "agent_id": "bot"} for e in events]
    answer["clients"] = clients_answer(client_reports(short), len(short))
    wide = "\n".join(drawn(render.policy_history(answer, "gov.policies", "x", wide=True), True))
    assert f"v2:{versions[2].digest}" in wide
    assert f"client-4-{LONG}" in wide
    unreachable = history_answer(versions, None)
    unreachable["clients"] = clients_answer([], 2000)
    lines = drawn(render.policy_history(unreachable, "gov.policies", "127.0.0.1:8000"))
    assert "no worker answers on 127.0.0.1:8000: in force unknown" in lines
    assert " ".join(line.strip() for line in lines).endswith(
        "no client reports a policy version in the 2,000 latest events (clients report it "
        "with Governor(checks=True))"
    )


def test_audit_verify_and_anchor() -> None:
    breaks = [
        ChainBreak("acme", 7, 41, "hash does not match [prev]", 2),
        ChainBreak("globex", None, None, "the chain ends before its signed head #9"),
    ]
    result = {"records": 1234, "tenants": 3, "intact": False, "keys": ["k1"], "anchors": 0,
              "breaks": [b.__dict__ for b in breaks]}  # fmt: skip
    lines = drawn(render.audit_verify(result))
    assert lines == [
        "acme #7 (partition 2, offset 41): hash does not match [prev]",
        "globex (end of chain): the chain ends before its signed head #9",
        "1,234 records in 3 chains (keys k1): BROKEN",
    ]
    intact = {**result, "breaks": [], "anchors": 2}
    assert drawn(render.audit_verify(intact)) == [
        "1,234 records in 3 chains (keys k1, 2 anchors): intact"
    ]
    heads = [
        dataclasses.asdict(
            SignedHead(
                f"tenant-{n}-{LONG}",
                10**n,
                "ab" * 32,
                1_780_000_000_000_000,
                key_id="worker-key-2026",
            )
        )
        for n in range(4)
    ]
    lines = drawn(render.audit_anchors(heads))
    assert max(len(line) for line in lines) <= WIDTH, "\n".join(lines)
    assert len(lines) == 1 + len(heads) + 1  # the header, one line per anchor, the advice


def test_topic_acls_fit() -> None:
    from streams.kafka_acls import role_acls

    acls = role_acls(Settings(topic_prefix="governor-production-eu-west-1."), agent=LONG)
    answer = {"acls": [acl.as_dict() for acl in acls]}
    lines = drawn(render.acls(answer, "governor-production-eu-west-1."))
    assert_fits(lines, len(acls))
    # the topic or group name stays whole: it is what a person checks
    assert all(acl.name in "\n".join(lines) for acl in acls)


def test_backtest_is_one_row_per_policy_and_action() -> None:
    from streams.backtest import BacktestReport, ShadowRun

    policies = load_bundle(POLICIES).policies
    ids = [p.id for p in policies.policies] + [LONG]
    actions = ("KILL", "THROTTLE", "WARN")

    def run(n: int) -> ShadowRun:
        decisions = {
            f"{n}-{i}": {"policy_id": ids[i % len(ids)], "action": actions[i % 3]}
            for i in range(40 * n + 7)
        }
        return ShadowRun(policies, decisions, {f"s{i}" for i in range(n)}, 1_234_567 * n)

    runs = [run(n).summary() for n in (1, 2, 3)]
    candidate, live, published = runs
    report = BacktestReport(
        from_us=0, to_us=1, read_from_us=0, events=123_456, events_in_window=100_000,
        undecodable=0, candidate=candidate, live_policies=live, published=published,
        live_only_in_shadow=["a"], live_only_published=[], candidate_only=["b", "c"],
        elapsed_s=12.3,
    ).as_dict()  # fmt: skip
    lines = drawn(render.backtest(report, "/work/candidate-policies"))
    pairs = {(p, a) for r in runs for p, by in r["by_policy"].items() for a in by}
    assert_fits(lines, len(pairs) + 3)  # and decisions, sessions stopped, cost avoided
    text = "\n".join(lines)
    assert f"{runs[2]['decisions']:,}" in text
    assert "$2.4691" in text  # the live policies; the published run has none
    assert "1 only in the shadow run, 0 only published" in " ".join(x.strip() for x in lines)
    assert LONG in "\n".join(drawn(render.backtest(report, "x", wide=True), True))
