"""Policy files: precise errors (file, line, field), whole-bundle refusal, hot reload, warnings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from streams.pipeline.accounting import fold, new_state
from streams.pipeline.policy import (
    MAX_USD,
    BudgetPolicy,
    Facts,
    PolicySet,
    decide,
    usd_micros,
)
from streams.policy_files import (
    DEFAULT_PII_POLICY,
    OTHER_FILES,
    PolicyError,
    PolicyWatch,
    load_bundle,
    load_policy_set,
    parse_policy_file,
)
from tests.unit.pipeline.test_accounting import ev

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "policies"
PRICE_TABLE = REPO / "tests" / "fixtures" / "policies" / "prices-table.yaml"
INT64_MAX = 2**63 - 1

GOOD = """version: 4
policies:
  - id: session-budget
    kind: budget
    scope: session
    limit_usd: 2
"""


def shipped_copy(tmp_path: Path, name: str = "policies") -> Path:
    folder = tmp_path / name
    shutil.copytree(SHIPPED, folder)
    return folder


def problems_of(folder: Path) -> list[str]:
    with pytest.raises(PolicyError) as error:
        load_bundle(folder)
    return [p.replace(f"{folder}/", "") for p in error.value.problems]


def test_the_shipped_policies_are_valid() -> None:
    policy_set = load_policy_set(SHIPPED)
    assert policy_set.version >= 1
    assert {p.kind for p in policy_set.policies} >= {"budget", "tools", "loop", "concurrency"}


def test_the_shipped_folder_is_one_bundle_without_warnings() -> None:
    bundle = load_bundle(SHIPPED)
    assert bundle.policies == load_policy_set(SHIPPED)
    assert "claude-haiku-4" in bundle.prices.models, "an override"
    priced = bundle.prices.lookup("gpt-4o")
    assert priced is not None
    assert priced.source.startswith("genai-prices ")
    assert bundle.pii.rules, "pii.yaml, not the default"
    assert {s.name for s in bundle.slos} == {
        "availability",
        "latency",
        "quality",
        "compliance",
        "degradation",
    }
    assert bundle.warnings == ()
    assert set(bundle.files) == {p.name for p in SHIPPED.glob("*.yaml")}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("limit_usd: 2", "limit_usd: -2"), "x.yaml:6: policies.0.limit_usd:"),
        (GOOD.replace("scope: session", "scope: galaxy"), "x.yaml:5: policies.0.scope:"),
        (GOOD + "    colour: red\n", "x.yaml:7: policies.0.colour: Extra inputs"),
        (GOOD.replace("kind: budget", "kind: vibes"), "x.yaml:3: policies.0:"),
        (GOOD.replace("version: 4", "version: zero"), "x.yaml:1: version:"),
        (
            GOOD + "  - id: Bad Id!\n    kind: loop\n    max_repeats: 3\n",
            "x.yaml:7: policies.1.id:",
        ),
        ("version: 1\npolicies: [\n", "x.yaml:3: not valid YAML"),
        ("- just\n- a list\n", "x.yaml:1: a policy file is a mapping"),
        ("", "x.yaml:1: the file is empty: a policy file is a mapping"),
        ("# only a comment\n", "x.yaml:1: the file is empty"),
        ("just text\n", "x.yaml:1: a policy file is a mapping with 'version' and 'policies', not"),
        # PyYAML keeps the last of two equal keys: the first limit would be silently dropped
        (GOOD + "    limit_usd: 200\n", "x.yaml:7: policies.0.limit_usd: duplicate key"),
        # an alias bomb must not expand without bound
        (
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n"
                for p, c in zip("abcde", "bcdef", strict=True)
            )
            + "version: 1\n",
            "x.yaml:1: too large or too deeply nested",
        ),
    ],
)
def test_errors_name_file_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as error:
        parse_policy_file(Path("x.yaml"), text)
    assert str(error.value).startswith(expected), str(error.value)


def budget(field: str, value: str) -> str:
    text = GOOD.replace("scope: session", "scope: agent\n    window: 1d")
    return text.replace("limit_usd: 2\n", f"limit_usd: 2\n    {field}: {value}\n").replace(
        "limit_usd: 2\n    limit_usd", "limit_usd"
    )


def policy(kind: str, field: str, value: str) -> str:
    required = {
        "concurrency": "max_active: 5",
        "step_rate": "max_steps: 5",
        "loop": "max_repeats: 5",
        "max_duration": "max_duration: 1h",
        "degradation": "tool: search\n    max_failures: 5",
    }[kind]
    lines = [f"    {line.strip()}" for line in required.split("\n")]
    lines = [line for line in lines if not line.strip().startswith(f"{field}:")]
    body = "\n".join([*lines, f"    {field}: {value}"])
    return f"version: 1\npolicies:\n  - id: p\n    kind: {kind}\n{body}\n"


# every numeric field of the policy kinds, each with a value no file can mean
IMPOSSIBLE = [".inf", "-.inf", ".nan", "-1", "1e30", "1.0e+30", "99999999999999999999999", "true"]
NUMERIC_FIELDS = [
    ("budget", "limit_usd"),
    ("budget", "warn_at"),
    ("budget", "throttle_delay_ms"),
    ("concurrency", "max_active"),
    ("concurrency", "throttle_delay_ms"),
    ("step_rate", "max_steps"),
    ("step_rate", "throttle_delay_ms"),
    ("loop", "max_repeats"),
    ("degradation", "max_failures"),
    ("degradation", "throttle_delay_ms"),
]


@pytest.mark.parametrize("value", IMPOSSIBLE)
@pytest.mark.parametrize(("kind", "field"), NUMERIC_FIELDS)
def test_every_numeric_policy_field_is_finite_and_bounded(
    kind: str, field: str, value: str
) -> None:
    text = budget(field, value) if kind == "budget" else policy(kind, field, value)
    with pytest.raises(PolicyError) as error:
        parse_policy_file(Path("x.yaml"), text)
    [problem] = error.value.problems
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.strip().startswith(f"{field}:"))
    assert problem.startswith(f"x.yaml:{line}: policies.0.{field}: "), problem


@pytest.mark.parametrize("value", ["0s", "367d", "99999999999999999999d", "1y", "60", "-5m"])
@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("budget", "window"),
        ("step_rate", "window"),
        ("max_duration", "max_duration"),
        ("degradation", "window"),
        ("degradation", "resume_after"),
    ],
)
def test_durations_are_positive_and_at_most_a_year(kind: str, field: str, value: str) -> None:
    text = budget(field, value) if kind == "budget" else policy(kind, field, value)
    with pytest.raises(PolicyError) as error:
        parse_policy_file(Path("x.yaml"), text)
    assert f"policies.0.{field}: " in str(error.value)


def test_the_largest_accepted_values_fit_in_avro_longs() -> None:
    text = budget("limit_usd", str(MAX_USD)).replace("window: 1d", "window: 366d")
    [limit] = parse_policy_file(Path("x.yaml"), text).policies
    assert isinstance(limit, BudgetPolicy)
    assert usd_micros(limit.limit_usd) == MAX_USD * 1_000_000 < INT64_MAX
    assert parse_policy_file(Path("x.yaml"), policy("loop", "max_repeats", "1000000000"))


def test_a_budget_built_without_validation_cannot_overflow_decide() -> None:
    # .inf overflowed round(limit_usd * 1e6) on the first priced event; the models refuse it
    # now, and decide clamps what a caller builds around them
    for usd in (float("inf"), float("-inf"), float("nan"), 1e30):
        bad = BudgetPolicy.model_construct(
            id="b", kind="budget", scope="session", limit_usd=usd, warn_at=None
        )
        policies = PolicySet(version=1, digest="", policies=(bad,), by_kind={"budget": (bad,)})
        start = ev(1, "SESSION_START")
        state = new_state(start)
        facts = Facts(spend=None, active=None, steps=None, tool_failures=None)
        for event in (start, ev(2, "LLM_CALL", model="gpt-4o", cost_micros=6_000)):
            delta = fold(state, event, load_bundle(SHIPPED).prices)
            decided = decide(policies, state, delta, facts)
        expected = ["KILL"] if usd == float("-inf") else []
        assert [o.action for o in decided] == expected, usd
    assert usd_micros(float("inf")) == usd_micros(float("nan")) == MAX_USD * 1_000_000
    assert usd_micros(-1.0) == usd_micros(float("-inf")) == 0


def test_duplicate_ids_across_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD)
    with pytest.raises(PolicyError, match=r"b\.yaml:3: policies\.0\.id: id 'session-budget' is"):
        load_policy_set(tmp_path)


# --- prices.yaml, pii.yaml, slo.yaml --------------------------------------------------------

#: a table of eight models (what prices.yaml shipped before genai-prices): the cases edit it
PRICES = PRICE_TABLE.read_text()
PII = SHIPPED.joinpath("pii.yaml").read_text()
SLO = SHIPPED.joinpath("slo.yaml").read_text()


FINITE = "Input should be a finite number"
NUMBER = "Input should be a valid number"
GPT4O = "prices.yaml:7: per_million_tokens.gpt-4o"
THRESHOLD_S = "slo.yaml:14: slos.1.threshold_s"

#: (file, text replaced, by, the problem starts with)
OTHER_FILE_CASES = [
    ("prices.yaml", "input: 2.50", "input: .inf", f"{GPT4O}.input: {FINITE}"),
    ("prices.yaml", "input: 2.50", "input: -.inf", f"{GPT4O}.input: {FINITE}"),
    ("prices.yaml", "output: 10.00", "output: .nan", f"{GPT4O}.output: {FINITE}"),
    ("prices.yaml", "cached_input: 1.25", "cached_input: -1", f"{GPT4O}.cached_input: Input "),
    ("prices.yaml", "input: 2.50", "input: 1e30", f"{GPT4O}.input: {NUMBER} (got '1e30')"),
    ("prices.yaml", "input: 2.50", "input: 1.0e+30", f"{GPT4O}.input: Input should be less"),
    ("prices.yaml", "input: 2.50", "input: 99999999999999999999", f"{GPT4O}.input: Input "),
    ("prices.yaml", "input: 2.50", "input: '2.50'", f"{GPT4O}.input: {NUMBER} (got '2.50')"),
    ("prices.yaml", "input: 2.50", "input: true", f"{GPT4O}.input: {NUMBER} (got True)"),
    ("prices.yaml", "version: 1", "version: .inf", "prices.yaml:4: version: Input should be"),
    ("prices.yaml", "currency: USD", "currency: EUR", "prices.yaml:5: currency: Input should"),
    ("prices.yaml", "cached_input: 1.25}", "cached_input: 1.25, x: 1}", f"{GPT4O}.x: Extra"),
    ("pii.yaml", "min_score: 0.3", "min_score: .nan", f"pii.yaml:11: min_score: {FINITE}"),
    ("pii.yaml", "min_score: 0.3", "min_score: .inf", f"pii.yaml:11: min_score: {FINITE}"),
    ("pii.yaml", "min_score: 0.3", "min_score: -1", "pii.yaml:11: min_score: Input should be"),
    ("pii.yaml", "min_score: 0.3", "min_score: 2", "pii.yaml:11: min_score: Input should be"),
    ("pii.yaml", "version: 1", "version: 99999999999999999999", "pii.yaml:8: version: Input"),
    ("pii.yaml", "SECRET]\ndefault", "PASSPORT]\ndefault", "pii.yaml:9: entities: unknown"),
    ("pii.yaml", "[SECRET]\n", "[SECRETS]\n", "pii.yaml:13: rules.0.entities: SECRETS match no"),
    ("pii.yaml", "handling: kill", "handling: shred", "pii.yaml:14: rules.0.handling: Input"),
    ("slo.yaml", "objective: 0.99", "objective: .inf", f"slo.yaml:10: slos.0.objective: {FINITE}"),
    ("slo.yaml", "objective: 0.99", "objective: .nan", f"slo.yaml:10: slos.0.objective: {FINITE}"),
    ("slo.yaml", "objective: 0.99", "objective: 1", "slo.yaml:10: slos.0.objective: Input should"),
    ("slo.yaml", "objective: 0.99", "objective: 0", "slo.yaml:10: slos.0.objective: Input should"),
    ("slo.yaml", "threshold_s: 30", "threshold_s: .inf", f"{THRESHOLD_S}: {FINITE}"),
    ("slo.yaml", "threshold_s: 30", "threshold_s: -1", "slo.yaml:14: slos.1.threshold_s: Input"),
    ("slo.yaml", "threshold_s: 30", "threshold_s: 1e30", f"{THRESHOLD_S}: {NUMBER}"),
    ("slo.yaml", "threshold_s: 30", "threshold_s: 99999999999999999999", "slo.yaml:14: slos.1.th"),
    ("slo.yaml", "threshold: 0.7", "threshold: 7", "slo.yaml:18: slos.2.threshold: Input should"),
    ("slo.yaml", "name: latency", "name: latncy", "slo.yaml:11: slos.1.name: Input should be 'av"),
    ("slo.yaml", "name: latency", "name: availability", "slo.yaml:6: (file): SLO names must be"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "old", "new", "expected"), OTHER_FILE_CASES)
def test_prices_pii_and_slo_files_are_validated_with_file_line_and_field(
    tmp_path: Path, name: str, old: str, new: str, expected: str
) -> None:
    folder = shipped_copy(tmp_path)
    text = PRICES if name == "prices.yaml" else (folder / name).read_text()
    assert old in text
    (folder / name).write_text(text.replace(old, new, 1))
    [problem] = problems_of(folder)
    assert problem.startswith(expected), problem


@pytest.mark.parametrize("name", sorted(OTHER_FILES))
@pytest.mark.parametrize(("text", "expected"), [("", "the file is empty"), ("[1]\n", "not a")])
def test_an_empty_or_list_prices_pii_or_slo_file_is_refused(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    folder = shipped_copy(tmp_path)
    (folder / name).write_text(text)
    [problem] = problems_of(folder)
    assert problem.startswith(f"{name}:1: "), problem
    assert expected in problem


def test_every_problem_of_every_file_is_listed(tmp_path: Path) -> None:
    folder = shipped_copy(tmp_path)
    (folder / "prices.yaml").write_text(PRICES.replace("input: 2.50", "input: .inf"))
    (folder / "slo.yaml").write_text("")
    (folder / "governor.yaml").write_text(GOOD.replace("limit_usd: 2", "limit_usd: .nan"))
    (folder / "extra.yml").write_text(GOOD)
    problems = problems_of(folder)
    assert [p.split(":")[0] for p in problems] == [
        "extra.yml",
        "governor.yaml",
        "prices.yaml",
        "slo.yaml",
    ], problems


# --- *.yml ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["extra.yml", "extra.YAML", "extra.Yml", "prices.yml", "pii.yml"])
def test_yaml_files_with_another_extension_are_refused_not_ignored(
    tmp_path: Path, name: str
) -> None:
    folder = shipped_copy(tmp_path)
    (folder / name).write_text(GOOD.replace("session-budget", "extra-budget"))
    stem = name.rsplit(".", 1)[0]
    expected = f"{name}:1: policy files end in .yaml (lower case) and this one would not be "
    assert problems_of(folder) == [f"{expected}read: rename it to {stem}.yaml"]
    with pytest.raises(PolicyError, match=rf"rename it to {stem}\.yaml"):
        load_policy_set(folder)  # backtests and rollbacks load the set the same way
    (folder / name).rename(folder / f"{stem}.yaml")
    if stem == "extra":
        assert "extra-budget" in [p.id for p in load_bundle(folder).policies.policies]


def test_unreadable_and_odd_entries_are_refused(tmp_path: Path) -> None:
    folder = shipped_copy(tmp_path)
    (folder / "binary.yaml").write_bytes(b"version: 1\n\xff\xfe\n")
    (folder / "dir.yaml").mkdir()
    (folder / "huge.yaml").write_text("# " + "x" * (1 << 20) + "\n")
    problems = problems_of(folder)
    assert [p.split(":")[0] for p in problems] == ["binary.yaml", "dir.yaml", "huge.yaml"]
    assert "not UTF-8" in problems[0]
    assert "not a regular file" in problems[1]
    assert "larger than 1 MiB" in problems[2]


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not a folder"):
        load_bundle(tmp_path / "nowhere")


# --- warnings -------------------------------------------------------------------------------


def warnings_of(folder: Path) -> list[str]:
    return [w.replace(f"{folder}/", "") for w in load_bundle(folder).warnings]


def test_deny_everything_is_accepted_with_a_warning(tmp_path: Path) -> None:
    folder = shipped_copy(tmp_path)
    governor = folder / "governor.yaml"
    text = governor.read_text()
    governor.write_text(
        text.replace('deny: ["delete_account", "shell_exec", "drop_*"]', 'deny: ["*"]')
    )
    assert warnings_of(folder) == [
        "governor.yaml:35: policies.3.deny: deny '*': tools policy 'dangerous-tools' refuses "
        "every tool call (KILL) of tenants * / agents *"
    ]
    governor.write_text(
        text.replace('deny: ["delete_account", "shell_exec", "drop_*"]', "allow: []")
    )
    [warning] = warnings_of(folder)
    assert warning.startswith("governor.yaml:35: policies.3.allow: allow []: tools policy")


@pytest.mark.parametrize(
    "files",
    [
        {"governor.yaml": "version: 1\npolicies: []\n"},
        {"governor.yaml": "version: 1\n"},
        {"governor.yaml": None},
        {"governor.yaml": GOOD.replace("limit_usd: 2", "limit_usd: 2\n    enabled: false")},
    ],
)
def test_an_empty_policy_set_is_accepted_with_a_warning(
    tmp_path: Path, files: dict[str, str | None]
) -> None:
    folder = shipped_copy(tmp_path)
    for name, text in files.items():
        if text is None:
            (folder / name).unlink()
        else:
            (folder / name).write_text(text)
    bundle = load_bundle(folder)
    assert bundle.policies.policies == ()
    assert any("no enforcement policy is in force" in w for w in bundle.warnings), bundle.warnings


def test_disabling_a_policy_or_a_default_is_accepted_with_a_warning(tmp_path: Path) -> None:
    folder = shipped_copy(tmp_path)
    governor = folder / "governor.yaml"
    governor.write_text(
        governor.read_text()
        .replace("    max_repeats: 5\n", "    max_repeats: 5\n    enabled: false\n")
        .replace("    warn_at: 0.8\n    action: kill", "    warn_at: null\n    action: kill")
        .replace(
            "  - id: session-max-duration\n",
            "  - id: session-max-duration\n    match: {tenants: []}\n",
        )
    )
    pii = folder / "pii.yaml"
    pii.write_text(
        PII.replace("default: log", "default: allow").replace(", IP_ADDRESS, SECRET]", "]")
        + "  - entities: ['*']\n    hops: [OUTPUT]\n    handling: allow\n"
    )
    assert warnings_of(folder) == [
        "governor.yaml:12: policies.0.warn_at: null: budget policy 'session-budget' gives no "
        "warning before its limit (the default warns at 80%)",
        "governor.yaml:42: policies.4.enabled: loop policy 'tool-loop' is disabled: it is not "
        "enforced",
        "governor.yaml:60: policies.7.match.tenants: empty: max_duration policy "
        "'session-max-duration' matches no tenant and is never enforced",
        "pii.yaml:9: entities: IP_ADDRESS, SECRET not listed: never scanned (scanned by default)",
        "pii.yaml:10: default: allow: findings no rule covers are not recorded (logged by default)",
        "pii.yaml:24: rules.4.entities: '*' with handling allow: no finding on OUTPUT is recorded",
    ]
    bundle = load_bundle(folder)
    assert "tool-loop" not in [p.id for p in bundle.policies.policies]


def test_a_missing_price_table_is_a_warning_and_prices_nothing(tmp_path: Path) -> None:
    folder = shipped_copy(tmp_path)
    (folder / "prices.yaml").unlink()
    (folder / "pii.yaml").unlink()
    (folder / "slo.yaml").unlink()
    bundle = load_bundle(folder)
    assert bundle.prices.models == {}
    assert bundle.pii == DEFAULT_PII_POLICY
    assert bundle.slos == []
    assert warnings_of(folder) == [
        "prices.yaml:1: missing: no model has a price, every LLM call that arrives without a "
        "cost is unpriced"
    ]


# --- the watch: hot reload, last good --------------------------------------------------------


def test_a_bad_change_is_refused_and_the_last_good_set_stays(tmp_path: Path) -> None:
    folder, last_good = tmp_path / "policies", tmp_path / "last-good"
    folder.mkdir()
    (folder / "main.yaml").write_text(GOOD)
    shutil.copy(SHIPPED / "prices.yaml", folder)
    watch = PolicyWatch(folder, last_good)
    first = watch.load_initial()
    assert first.policies.version == 4
    assert watch.poll() is None  # nothing changed
    (folder / "main.yaml").write_text(GOOD.replace("limit_usd: 2", "limit_usd: nope"))
    with pytest.raises(PolicyError, match=r"main\.yaml:6: policies\.0\.limit_usd"):
        watch.poll()
    assert watch.current is first
    assert watch.poll() is None  # the same bad file is not reported again
    (folder / "main.yaml").write_text(GOOD.replace("version: 4", "version: 5"))
    changed = watch.poll()
    assert changed is not None
    assert changed.policies.version == 5
    assert watch.last_error is None
    # a worker starting with a broken folder enforces the last good set
    (folder / "main.yaml").write_text("version: [\n")
    restarted = PolicyWatch(folder, last_good)
    assert restarted.load_initial().policies.version == 5
    assert restarted.last_error is not None


@pytest.mark.parametrize(
    ("name", "broken"),
    [
        ("prices.yaml", PRICES.replace("input: 2.50", "input: .inf")),
        ("prices.yaml", ""),
        ("pii.yaml", PII.replace("min_score: 0.3", "min_score: .nan")),
        ("slo.yaml", SLO.replace("objective: 0.99", "objective: -1", 1)),
        ("slo.yml", SLO),
    ],
)
def test_a_broken_prices_pii_or_slo_file_is_refused_on_reload_and_at_start(
    tmp_path: Path, name: str, broken: str
) -> None:
    folder, last_good = shipped_copy(tmp_path), tmp_path / "last-good"
    watch = PolicyWatch(folder, last_good)
    first = watch.load_initial()
    kept = {p.name: p.read_text() for p in last_good.glob("*.yaml")}
    assert set(kept) == {p.name for p in folder.glob("*.yaml")}, "the copy is the whole bundle"

    (folder / name).write_text(broken)
    with pytest.raises(PolicyError) as error:
        watch.poll()
    assert str(error.value).startswith(f"{folder / name}:"), str(error.value)
    assert watch.current is first
    assert watch.last_error is error.value
    assert {p.name: p.read_text() for p in last_good.glob("*.yaml")} == kept
    assert watch.poll() is None  # reported once

    # a worker starting now enforces the last good bundle, prices, PII and SLOs included
    restarted = PolicyWatch(folder, last_good)
    bundle = restarted.load_initial()
    assert restarted.last_error is not None
    assert (bundle.digest, bundle.prices, bundle.pii, bundle.slos) == (
        first.digest,
        first.prices,
        first.pii,
        first.slos,
    )
    # once repaired, the folder is accepted again (the same bundle: nothing new to apply)
    (folder / name).unlink()
    if name in OTHER_FILES:
        shutil.copy(SHIPPED / name, folder)
    assert restarted.poll() is None
    assert restarted.last_error is None


def test_a_price_change_alone_is_a_new_bundle_with_the_same_policies(tmp_path: Path) -> None:
    folder = shipped_copy(tmp_path)
    watch = PolicyWatch(folder, tmp_path / "last-good")
    first = watch.load_initial()
    (folder / "prices.yaml").write_text(PRICES.replace("input: 2.50", "input: 5.00"))
    changed = watch.poll()
    assert changed is not None
    assert changed.policies.digest == first.policies.digest
    assert changed.digest != first.digest
    assert changed.prices.price_micros("gpt-4o", 1_000_000, 0) == 5_000_000
    kept = (tmp_path / "last-good" / "prices.yaml").read_text()
    assert "input: 5.00" in kept


def test_a_broken_folder_without_a_last_good_copy_is_one_clear_error(tmp_path: Path) -> None:
    folder = shipped_copy(tmp_path)
    (folder / "prices.yaml").write_text("per_million_tokens: [\n")
    with pytest.raises(PolicyError) as error:
        PolicyWatch(folder, tmp_path / "last-good").load_initial()
    assert error.value.problems[0].startswith(f"{folder / 'prices.yaml'}:2: not valid YAML")
    assert (
        error.value.problems[-1] == f"{tmp_path / 'last-good'}: no last good copy to fall back on"
    )


def test_a_last_good_copy_refused_by_stricter_rules_is_reported_too(tmp_path: Path) -> None:
    folder, last_good = shipped_copy(tmp_path), tmp_path / "last-good"
    last_good.mkdir()
    # accepted by an older worker, before limits had to be finite
    (last_good / "governor.yaml").write_text(GOOD.replace("limit_usd: 2", "limit_usd: .inf"))
    (folder / "governor.yaml").write_text("")
    with pytest.raises(PolicyError) as error:
        PolicyWatch(folder, last_good).load_initial()
    text = str(error.value)
    assert f"{folder / 'governor.yaml'}:1: the file is empty" in text
    assert f"{last_good}: the last good copy is refused too:" in text
    assert (
        f"{last_good / 'governor.yaml'}:6: policies.0.limit_usd: Input should be a finite" in text
    )


def test_a_rollback_is_checked_against_the_rest_of_the_folder(tmp_path: Path) -> None:
    folder = shipped_copy(tmp_path)
    (folder / "pii.yaml").write_text("")
    with pytest.raises(PolicyError, match=r"pii\.yaml:1: the file is empty"):
        load_bundle(folder, {"old.yaml": GOOD})
    (folder / "pii.yaml").write_text(PII)
    bundle = load_bundle(folder, {"old.yaml": GOOD})
    assert [p.id for p in bundle.policies.policies] == ["session-budget"]
    assert "governor.yaml" not in bundle.files
    assert "pii.yaml" in bundle.files
