"""Policy versions without a broker: validation, installation into the folder, the answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.codec import Codecs
from streams.policy_files import PolicyError, files_digest, load_policy_set
from streams.policy_history import (
    PolicyVersion,
    from_record,
    history_answer,
    install_files,
    is_recorded,
    policy_version_of,
    rollback_request,
    to_record,
    validate_version,
)

REPO = Path(__file__).resolve().parents[2]

V1 = """version: 1
policies:
  - id: session-budget
    kind: budget
    scope: session
    limit_usd: 2.0
    action: kill
"""
TOOLS = """version: 1
policies:
  - id: dangerous-tools
    kind: tools
    deny: ["drop_*"]
    action: kill
"""


def version_of(files: dict[str, str], tmp: Path) -> PolicyVersion:
    tmp.mkdir()
    for name, text in files.items():
        (tmp / name).write_text(text)
    return policy_version_of(load_policy_set(tmp), files, 1_000)


def test_the_digest_of_stored_texts_is_the_digest_of_the_loaded_folder(tmp_path: Path) -> None:
    pv = version_of({"governor.yaml": V1, "tools.yaml": TOOLS}, tmp_path / "v1")
    assert files_digest(pv.files) == pv.digest
    assert pv.policies == ("session-budget", "dangerous-tools")


def test_a_stored_version_validates_to_its_own_set(tmp_path: Path) -> None:
    pv = version_of({"governor.yaml": V1}, tmp_path / "v1")
    policy_set = validate_version(pv)
    assert (policy_set.version, policy_set.digest) == (1, pv.digest)


def test_a_stored_version_whose_files_do_not_make_its_digest_is_refused(tmp_path: Path) -> None:
    pv = version_of({"governor.yaml": V1}, tmp_path / "v1")
    edited = PolicyVersion(pv.version, pv.digest, 1, pv.policies, {"governor.yaml": V1 + "\n"})
    with pytest.raises(PolicyError, match=f"gov.policies v1 \\({pv.digest}\\): its files make"):
        validate_version(edited)
    broken = PolicyVersion(1, "x", 1, (), {"governor.yaml": V1.replace("2.0", "lots")})
    with pytest.raises(PolicyError, match="limit_usd"):
        validate_version(broken)


def test_installing_replaces_enforcement_files_and_leaves_the_others(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "governor.yaml").write_text(V1.replace("2.0", "5.0").replace("version: 1", "v: 2"))
    (folder / "extra.yaml").write_text(TOOLS)
    for other in ("prices.yaml", "pii.yaml", "slo.yaml", "README.md"):
        (folder / other).write_text(f"# {other}\n")
    install_files(folder, {"governor.yaml": V1})
    assert (folder / "governor.yaml").read_text() == V1
    assert not (folder / "extra.yaml").exists(), "files not in the version are removed"
    for other in ("prices.yaml", "pii.yaml", "slo.yaml", "README.md"):
        assert (folder / other).read_text() == f"# {other}\n"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "governor.yaml",
        "pii.yaml",
        "prices.yaml",
        "slo.yaml",
    ], "no temp file is left behind"


@pytest.mark.parametrize("name", ["../evil.yaml", "prices.yaml", "notes.txt"])
def test_installing_refuses_names_outside_the_enforcement_files(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="not an enforcement file name"):
        install_files(tmp_path, {name: V1})
    assert list(tmp_path.iterdir()) == []


def test_a_version_is_recorded_only_with_the_same_digest(tmp_path: Path) -> None:
    pv = version_of({"governor.yaml": V1}, tmp_path / "v1")
    policy_set = validate_version(pv)
    assert is_recorded({1: pv}, policy_set)
    assert not is_recorded({}, policy_set)
    other = PolicyVersion(1, "different", 1, (), {})
    assert not is_recorded({1: other}, policy_set), "same version, other files: record again"


def test_the_record_round_trips_through_the_avro_codec(tmp_path: Path) -> None:
    pv = version_of({"governor.yaml": V1, "tools.yaml": TOOLS}, tmp_path / "v1")
    codec = Codecs.load(REPO / "schemas").policy_version
    assert from_record(codec.decode(codec.encode(to_record(pv)))) == pv


def test_history_marks_the_version_in_force_or_says_it_cannot_tell() -> None:
    versions = {
        1: PolicyVersion(1, "aaa", 10, ("a",), {"governor.yaml": ""}),
        2: PolicyVersion(2, "bbb", 20, ("a", "b"), {"governor.yaml": "", "x.yaml": ""}),
    }
    answer = history_answer(versions, {"version": 1, "digest": "aaa", "policies": ["a"]})
    assert [(v["version"], v["in_force"]) for v in answer["versions"]] == [(1, True), (2, False)]
    assert answer["versions"][1]["files"] == ["governor.yaml", "x.yaml"]
    unknown = history_answer(versions, None)
    assert unknown["worker_reachable"] is False
    assert [v["in_force"] for v in unknown["versions"]] == [None, None]


@pytest.mark.parametrize(
    "body", [{"to_version": "1"}, {"to_version": True}, {}, [1], {"to_version": 1.5}]
)
def test_a_rollback_request_needs_an_integer_version(body: object) -> None:
    with pytest.raises(ValueError, match=r"to_version must be an integer|a JSON object"):
        rollback_request(body)


def test_a_rollback_request_names_who_and_why() -> None:
    request = rollback_request({"to_version": 3, "reason": "v4 kills everyone", "by": "alice"})
    assert (request.to_version, request.reason, request.by) == (3, "v4 kills everyone", "alice")
    assert rollback_request({"to_version": 3}).by == "unknown"
