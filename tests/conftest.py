"""Fixtures shared by the whole suite.

Integration tests run against a real Kafka and Redis. By default the suite starts its own local
stack once (on ports apart from the demo's, state under ``.governor/test``) and stops it at the
end; with ``GOVERNOR_TEST_BOOTSTRAP`` (and ``GOVERNOR_TEST_REDIS_URL``) set it uses that cluster
and starts nothing. Every test gets its own topic prefix and consumer-group id, so tests do not
see each other's records and can run in any order, and in parallel: under pytest-xdist
(``make test`` runs ``-n 2 --dist loadfile``) the controller starts the stack once and the
worker processes inherit its address.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from streams import stack
from streams.settings import Settings
from streams.topics import ensure_topics

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_STATE = REPO_ROOT / ".governor" / "test"
#: many fixtures replay events at fixed 2025 instants, produced now, and move the watermark
#: with "clock" events up to a day ahead: the workers under test accept any past start time and
#: a day ahead (the fault suite and the unit tests check the real bounds with their own)
FIXTURE_PAST_SKEW_S = 100 * 365 * 86400.0
FIXTURE_FUTURE_SKEW_S = 86400.0


#: folders in the order their files are handed out to parallel workers: the minutes-long fault
#: and integration files first, so that no long file starts when the rest is nearly done
FOLDER_ORDER = ("reliability", "integration", "unit")


def folder_rank(item: pytest.Item) -> int:
    parts = Path(str(item.fspath)).parts
    return next((rank for rank, name in enumerate(FOLDER_ORDER) if name in parts), 0)


#: the property tests check behaviour, not speed: on two cores shared by the two test processes,
#: the stack and the workers under test, a draw or an example may be slow for reasons of its own
hypothesis_settings.register_profile(
    "governor", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("governor")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "reliability" in parts:
            item.add_marker(pytest.mark.reliability)
    items.sort(key=folder_rank)  # stable: a file's tests keep their order


def own_stack_settings() -> Settings:
    """The stack the suite starts when none is given (ports apart from the demo's)."""
    return Settings.from_env(
        max_event_past_skew_s=FIXTURE_PAST_SKEW_S,
        max_event_future_skew_s=FIXTURE_FUTURE_SKEW_S,
        state_dir=TEST_STATE / "session",
        kafka_port=29092,
        bootstrap="127.0.0.1:29092",
        redis_url="redis://127.0.0.1:26379/0",
    )


STARTED_STACK = pytest.StashKey[Settings]()


def is_xdist_controller(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    # each xdist worker would start a stack of its own on the same ports: the controller starts
    # it before the workers are spawned, and they inherit its address through the environment
    if is_xdist_controller(config) and not os.environ.get("GOVERNOR_TEST_BOOTSTRAP"):
        settings = own_stack_settings()
        stack.up(settings)
        config.stash[STARTED_STACK] = settings
        os.environ["GOVERNOR_TEST_BOOTSTRAP"] = settings.bootstrap
        os.environ["GOVERNOR_TEST_REDIS_URL"] = settings.redis_url


def pytest_unconfigure(config: pytest.Config) -> None:
    settings = config.stash.get(STARTED_STACK, None)
    if settings is not None:
        stack.down(settings)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def stack_settings() -> Iterator[Settings]:
    """Settings of the real stack the suite runs against, started here unless given."""
    given = os.environ.get("GOVERNOR_TEST_BOOTSTRAP")
    if given:
        yield Settings.from_env(
            bootstrap=given,
            redis_url=os.environ.get("GOVERNOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
            state_dir=TEST_STATE,
            max_event_past_skew_s=FIXTURE_PAST_SKEW_S,
            max_event_future_skew_s=FIXTURE_FUTURE_SKEW_S,
        )
        return
    settings = own_stack_settings()
    stack.up(settings)
    try:
        yield settings
    finally:
        stack.down(settings)


def isolated_settings(stack_settings: Settings, folder: Path) -> Settings:
    """``stack_settings`` with a unique topic prefix, group id, web port and a state folder
    under ``folder``: what one test (or one module's shared worker) uses on its own."""
    tag = uuid.uuid4().hex[:10]
    return stack_settings.replace(
        topic_prefix=f"t{tag}.",
        app_id=f"governor-test-{tag}",
        web_port=free_port(),
        state_dir=folder / "state",
        event_partitions=3,
    )


@pytest.fixture
def settings(stack_settings: Settings, tmp_path: Path) -> Settings:
    """Per-test settings: unique topic prefix, group id, web port and state folder."""
    return isolated_settings(stack_settings, tmp_path)


@pytest.fixture
def topics(settings: Settings) -> Settings:
    """``settings`` with every Governor topic created under the test's own prefix."""
    ensure_topics(settings)
    return settings
