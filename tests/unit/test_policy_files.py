"""Policy files: precise errors (file, line, field), whole-set refusal, hot reload."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from streams.policy_files import PolicyError, PolicyWatch, load_policy_set, parse_policy_file

REPO = Path(__file__).resolve().parents[2]

GOOD = """version: 4
policies:
  - id: session-budget
    kind: budget
    scope: session
    limit_usd: 2
"""


def test_the_shipped_policies_are_valid() -> None:
    policy_set = load_policy_set(REPO / "policies")
    assert policy_set.version >= 1
    assert {p.kind for p in policy_set.policies} >= {"budget", "tools", "loop", "concurrency"}


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
    ],
)
def test_errors_name_file_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as error:
        parse_policy_file(Path("x.yaml"), text)
    assert str(error.value).startswith(expected), str(error.value)


def test_duplicate_ids_across_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD)
    with pytest.raises(PolicyError, match="id 'session-budget' is also in"):
        load_policy_set(tmp_path)


def test_a_bad_change_is_refused_and_the_last_good_set_stays(tmp_path: Path) -> None:
    folder, last_good = tmp_path / "policies", tmp_path / "last-good"
    folder.mkdir()
    (folder / "main.yaml").write_text(GOOD)
    shutil.copy(REPO / "policies" / "prices.yaml", folder)
    watch = PolicyWatch(folder, last_good)
    first = watch.load_initial()
    assert first.version == 4
    assert watch.poll() is None  # nothing changed
    (folder / "main.yaml").write_text(GOOD.replace("limit_usd: 2", "limit_usd: nope"))
    with pytest.raises(PolicyError, match=r"main\.yaml:6: policies\.0\.limit_usd"):
        watch.poll()
    assert watch.current is first
    assert watch.poll() is None  # the same bad file is not reported again
    (folder / "main.yaml").write_text(GOOD.replace("version: 4", "version: 5"))
    changed = watch.poll()
    assert changed is not None
    assert changed.version == 5
    # a worker starting with a broken folder enforces the last good set
    (folder / "main.yaml").write_text("version: [\n")
    restarted = PolicyWatch(folder, last_good)
    assert restarted.load_initial().version == 5
    assert restarted.last_error is not None
