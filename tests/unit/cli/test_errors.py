"""The one error wrapper: an expected failure is one line naming the fix, exit code 1, never a
traceback; a bug keeps its traceback."""

from __future__ import annotations

import pytest
import redis
from confluent_kafka import KafkaError, KafkaException
from typer.testing import CliRunner

from streams.cli import app
from streams.cli.errors import expected_failure
from tests.conftest import free_port

#: every `ask`, with what it needs to run
ASKS = [
    ["ask", "cost"],
    ["ask", "cost", "--quantiles"],
    ["ask", "top-cost"],
    ["ask", "top-cost", "--tree"],
    ["ask", "tree", "no-such-session"],
    ["ask", "outcomes"],
    ["ask", "quality"],
    ["ask", "drift", "--agent", "support-bot"],
    ["ask", "pii"],
    ["ask", "pii", "--fingerprint", "abc"],
    ["ask", "slo"],
    ["ask", "latency"],
]


@pytest.fixture
def nothing_runs(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Redis, Kafka and the worker all pointed at ports where nothing listens."""
    env = {
        "GOVERNOR_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "GOVERNOR_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "GOVERNOR_WEB_PORT": str(free_port()),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.mark.parametrize("argv", ASKS, ids=[" ".join(a) for a in ASKS])
def test_every_ask_says_in_one_line_what_is_down(
    argv: list[str], nothing_runs: dict[str, str]
) -> None:
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    line = lines[0]
    assert line.startswith("error: ")
    if argv[1] == "slo":
        assert "no worker answers" in line
        assert "governor worker" in line
    else:
        assert nothing_runs["GOVERNOR_REDIS_URL"] in line
        assert "governor up" in line
        assert "GOVERNOR_REDIS_URL" in line


def test_a_bad_argument_is_one_line(nothing_runs: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["ask", "pii", "--by", "colour"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: --by colour: use --by hop or --by destination"


def test_each_expected_failure_has_its_line(nothing_runs: dict[str, str]) -> None:
    redis_down = expected_failure(redis.ConnectionError("Error 111 connecting"))
    assert redis_down is not None
    assert nothing_runs["GOVERNOR_REDIS_URL"] in redis_down
    assert "governor up" in redis_down
    kafka = KafkaException(KafkaError(KafkaError._TRANSPORT, "Connection refused"))
    kafka_down = expected_failure(kafka)
    assert kafka_down is not None
    assert nothing_runs["GOVERNOR_BOOTSTRAP"] in kafka_down
    assert "_TRANSPORT" in kafka_down
    assert "GOVERNOR_BOOTSTRAP" in kafka_down
    denied = expected_failure(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))
    assert denied is not None
    assert "governor topics acls" in denied
    assert "cannot be reached" not in denied
    assert expected_failure(LookupError("no session 'x' ended in the last 7d")) == (
        "not found: no session 'x' ended in the last 7d"
    )
    assert expected_failure(ValueError("cannot read '2h ago'")) == (
        "cannot read '2h ago'; see --help"
    )
    missing = ModuleNotFoundError("No module named 'faust'", name="faust")
    assert expected_failure(missing) == (
        "this command needs faust, not installed: pip install 'fleet-governor[worker]'"
    )


def test_a_bug_keeps_its_traceback() -> None:
    assert expected_failure(KeyError("status")) is None  # a missing key is a bug, not "unknown"
    assert expected_failure(ModuleNotFoundError("No module named 'x'", name="x")) is None
    assert expected_failure(ZeroDivisionError()) is None
