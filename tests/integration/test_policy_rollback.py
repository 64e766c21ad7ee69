"""Policy versions and rollback with a real worker: gov.policies keeps every accepted set, and
`governor policy rollback` puts an old one back in force, in the folder, and in the audit trail.

The tests with a worker share one (its start-up is most of their time): a rollback leaves it
with the files and the version it started with, and a refused one changes nothing.
"""

from __future__ import annotations

import json
import secrets
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from streams.cli import app
from streams.client import Governor, SessionKilled
from streams.codec import Codecs
from streams.control import session_target
from streams.policy_files import OTHER_FILES, load_policy_set
from streams.settings import Settings
from streams.topics import ensure_topics, read_partitions
from streams.worker import WorkerProcess, post_json
from tests.conftest import free_port, isolated_settings
from tests.integration.test_worker_enforcement import wait_until

REPO = Path(__file__).resolve().parents[2]

#: version 2 raises a limit and adds a file; a rollback must undo both
EXTRA_V2 = """version: 2
policies:
  - id: search-loop
    kind: loop
    max_repeats: 3
    action: kill
"""


ADMIN_TOKEN = secrets.token_hex(16)
READER_TOKEN = secrets.token_hex(16)


def cli(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=settings.to_env())


@pytest.fixture(scope="module")
def worker(
    stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[WorkerProcess, Settings]]:
    """One worker for the module's tests, on topics of its own."""
    folder = tmp_path_factory.mktemp("rollback")
    policies = folder / "policies"
    shutil.copytree(REPO / "policies", policies)
    settings = isolated_settings(stack_settings, folder).replace(
        policies_dir=policies,
        keys_dir=folder / "keys",
        checkpoint_interval_s=0.2,
        # the worker's API tokens; the CLI sends the admin one (GOVERNOR_API_TOKEN)
        api_tokens=f"admin:{ADMIN_TOKEN},reader:{READER_TOKEN}",
        api_token=ADMIN_TOKEN,
    )
    ensure_topics(settings)
    with WorkerProcess(settings, folder / "worker.log") as process:
        wait_until(lambda: (process.get_json("/ingest") or {}).get("ready"), what="assignment")
        yield process, settings


def history(settings: Settings) -> dict[str, Any]:
    result = cli(settings, "policy", "history", "--json")
    assert result.exit_code == 0, result.output
    answer: dict[str, Any] = json.loads(result.output)
    return answer


def enforcement_files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.glob("*.yaml") if p.name not in OTHER_FILES}


def audit_records(settings: Settings) -> list[dict[str, Any]]:
    codec = Codecs.load(settings.schemas_dir).audit_record
    rows = read_partitions(settings, settings.topic("audit"), [0, 1, 2])
    return [codec.decode(v) for part in rows.values() for _o, _k, v in part if v is not None]


def test_a_rollback_puts_version_1_back_in_force_in_the_folder_and_in_the_audit_trail(
    worker: tuple[WorkerProcess, Settings],
) -> None:
    process, settings = worker
    folder = settings.policies_dir
    v1_files = enforcement_files(folder)
    others = {name: (folder / name).read_text() for name in OTHER_FILES}
    v1 = process.get_json("/policies")
    assert v1["version"] == 1
    assert v1["digest"] == load_policy_set(folder).digest
    wait_until(lambda: [v["version"] for v in history(settings)["versions"]] == [1],
               what="v1 recorded in gov.policies")  # fmt: skip

    governor_yaml = folder / "governor.yaml"
    governor_yaml.write_text(
        v1_files["governor.yaml"]
        .replace("version: 1", "version: 2")
        .replace("limit_usd: 2.00", "limit_usd: 0.50")
    )
    (folder / "extra.yaml").write_text(EXTRA_V2)
    v2_digest = load_policy_set(folder).digest
    wait_until(lambda: (process.get_json("/policies") or {}).get("digest") == v2_digest,
               what="the worker to apply v2")  # fmt: skip
    assert process.get_json("/policies")["version"] == 2
    wait_until(
        lambda: (
            [(v["version"], v["digest"]) for v in history(settings)["versions"]]
            == [(1, v1["digest"]), (2, v2_digest)]
        ),
        what="v2 recorded in gov.policies",
    )

    rolled = cli(settings, "policy", "rollback", "--to-version", "1",
                 "--reason", "v2 kills sessions too early", "--by", "alice")  # fmt: skip
    assert rolled.exit_code == 0, rolled.output
    assert "v2 -> v1" in rolled.output, rolled.output

    # in force at once (the reply comes after the swap), with the digest v1 had
    now = process.get_json("/policies")
    assert (now["version"], now["digest"], now["refused"]) == (1, v1["digest"], None)
    assert now["policies"] == v1["policies"]
    assert enforcement_files(folder) == v1_files, "v2's files replaced, extra.yaml removed"
    assert {name: (folder / name).read_text() for name in OTHER_FILES} == others
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".rollback")]

    listed = history(settings)
    assert listed["in_force"] == {"version": 1, "digest": v1["digest"]}
    assert [(v["version"], v["in_force"]) for v in listed["versions"]] == [(1, True), (2, False)]
    assert listed["versions"][1]["files"] == ["extra.yaml", "governor.yaml"]
    assert "search-loop" in listed["versions"][1]["policies"]

    # decisions and summaries cite version 1 again
    gov = Governor(
        tenant="acme", agent="support-bot", agent_version="2.0", settings=settings, checks=False
    )
    try:
        s = gov.session()
        s.start()
        s.tool_call(name="delete_account", args={"user": 7})
        decision = wait_until(lambda: gov.book.latest(session_target(s.session_id)), what="KILL")
        assert (decision["action"], decision["policy_version"]) == ("KILL", 1)
        with pytest.raises(SessionKilled):
            s.tool_call(name="lookup_order")
    finally:
        gov.close()
    state = wait_until(lambda: process.get_json(f"/state/session/{s.session_id}"),
                       what="the session's state")  # fmt: skip
    assert state["policy_version"] == 1

    def chain_intact() -> dict[str, Any] | None:
        result = cli(settings, "audit", "verify", "--json")
        verdict: dict[str, Any] = json.loads(result.output)
        return verdict if result.exit_code == 0 and verdict["tenants"] >= 2 else None

    verdict = wait_until(chain_intact, what="an intact audit trail with the rollback's chain")
    assert verdict["intact"] is True
    policy_records = [r for r in audit_records(settings) if r["tenant_id"] == "*"]
    kinds = [r["kind"] for r in policy_records]
    assert kinds[-1] == "ROLLBACK", "nothing re-applied the rolled-back files after the rollback"
    assert kinds.count("ROLLBACK") == 1
    assert "POLICY_CHANGE" in kinds[:-1], "the change to v2 was audited before"
    rollback = policy_records[-1]
    assert rollback["actor"] == "alice"
    assert rollback["details"] == {
        "from_version": "2",
        "to_version": "1",
        "digest": v1["digest"],
        "policies": ",".join(v1["policies"]),
        "reason": "v2 kills sessions too early",
        "by": "alice",
    }
    assert "rollback by alice" in rollback["summary"]
    assert process.get_json("/policies")["digest"] == v1["digest"], "still v1 after reloads"


def test_rolling_back_to_an_unknown_version_names_the_known_ones(
    worker: tuple[WorkerProcess, Settings],
) -> None:
    process, settings = worker
    versions = wait_until(lambda: history(settings)["versions"], what="v1 recorded in gov.policies")
    # version 1, and version 2 when the rollback test ran first on the module's worker
    known = ", ".join(str(v["version"]) for v in versions)
    assert known in ("1", "1, 2"), known
    before = enforcement_files(settings.policies_dir)
    result = cli(settings, "policy", "rollback", "--to-version", "9")
    assert result.exit_code == 1, result.output
    assert f"no policy version 9 in gov.policies; known versions: {known}" in result.output
    assert "Traceback" not in result.output
    assert process.get_json("/policies")["version"] == 1
    assert enforcement_files(settings.policies_dir) == before


def test_a_rollback_without_a_worker_says_so(topics: Settings) -> None:
    settings = topics.replace(web_port=free_port())
    result = cli(settings, "policy", "rollback", "--to-version", "1")
    assert result.exit_code == 1, result.output
    assert f"no worker answers on 127.0.0.1:{settings.web_port}" in result.output
    listed = history(settings)
    assert (listed["worker_reachable"], listed["versions"]) == (False, [])


def test_a_rollback_needs_an_admin_token(worker: tuple[WorkerProcess, Settings]) -> None:
    """401 (with WWW-Authenticate) without a token or with a wrong one, 403 for a reader's;
    the CLI without a token prints one line with the fix; nothing changes."""
    process, settings = worker
    before = process.get_json("/policies")
    url = f"{process.url}/policies/rollback"
    body = {"to_version": 1, "reason": "", "by": "mallory"}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"] == 'Bearer realm="governor"'
    for token, status in (("", 401), ("not-the-" + ADMIN_TOKEN, 401), (READER_TOKEN, 403)):
        reply = post_json(url, body, token=token)
        assert reply is not None
        assert reply[0] == status, (token == READER_TOKEN, reply)
        assert ADMIN_TOKEN not in json.dumps(reply[1])
    # the admin token passes (and this version does not exist: nothing changes)
    reply = post_json(url, {**body, "to_version": 99}, token=ADMIN_TOKEN)
    assert reply is not None
    assert reply[0] == 404
    result = cli(settings.replace(api_token=""), "policy", "rollback", "--to-version", "1")
    assert result.exit_code == 1, result.output
    assert "needs a token: set GOVERNOR_API_TOKEN" in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2, result.output  # one line (wrapped)
    assert process.get_json("/policies") == before
    # reads stay open without GOVERNOR_API_AUTH_READS
    assert process.get_json("/ingest") is not None
