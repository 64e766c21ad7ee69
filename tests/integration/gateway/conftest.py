"""A gateway on real Kafka and Redis, in front of a fake provider, for the SDKs to call.

One gateway (and its fake upstream) for all the gateway tests, on topics of their own, run in a
thread of its own (the SDK clients of the tests are synchronous). Its policies: a session
budget of $0.05 (kill), tools ``drop_*`` denied (kill), the repository's prices and PII rules
plus one that redacts e-mail addresses sent to the model; published as the worker does, signed.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streams.codec import Codecs
from streams.control import KeyRing, SigningKey, generate_signing_key
from streams.gateway.config import key_hash, load_gateway
from streams.gateway.server import Running, start
from streams.policy_files import load_bundle
from streams.policy_history import PolicyHistory
from streams.publisher import DecisionPublisher, make_decision
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.conftest import isolated_settings
from tests.integration.gateway.fake_upstream import ANTHROPIC_KEY, OPENAI_KEY, FakeProvider
from tests.private_redis import free_low_port

REPO = Path(__file__).resolve().parents[3]
GATEWAY_KEY = "gw-test-acme-support"
TENANT, AGENT = "acme", "support-bot"
#: a second tenant (the fleet of the answers test)
PARITY_KEY = "gw-test-parity"
PARITY_TENANT = "parity-gw"
POLICIES = """version: 4
policies:
  - id: tight-budget
    kind: budget
    scope: session
    limit_usd: 0.05
    action: kill
  - id: no-drops
    kind: tools
    deny: ["drop_*"]
    action: kill
"""
REDACT_EMAIL = """
  - entities: [EMAIL_ADDRESS]
    hops: [CONTEXT]
    handling: redact
"""


def gateway_yaml(provider_port: int, dead_port: int) -> str:
    return f"""version: 1
upstreams:
  openai:
    api: openai
    base_url: "http://127.0.0.1:{provider_port}/v1"
    key_env: GW_TEST_OPENAI_KEY
    timeout_s: 5.0
    retries: 2
    retry_backoff_s: 0.01
  anthropic:
    api: anthropic
    base_url: "http://127.0.0.1:{provider_port}"
    key_env: GW_TEST_ANTHROPIC_KEY
    retries: 1
    retry_backoff_s: 0.01
  slow:
    api: openai
    base_url: "http://127.0.0.1:{provider_port}/v1"
    key_env: GW_TEST_OPENAI_KEY
    timeout_s: 0.3
    retries: 0
  nowhere:
    api: openai
    base_url: "http://127.0.0.1:{dead_port}/v1"
    key_env: ""
    retries: 1
    retry_backoff_s: 0.01
routes:
  - models: ["gone-*"]
    upstream: nowhere
  - models: ["gpt-slow"]
    upstream: slow
  - models: ["gpt-*", "text-embedding-*"]
    upstream: openai
  - models: ["claude-*"]
    upstream: anthropic
keys:
  - sha256: "{key_hash(GATEWAY_KEY)}"
    tenant: {TENANT}
    agent: {AGENT}
    agent_version: "1.0"
  - sha256: "{key_hash(PARITY_KEY)}"
    tenant: {PARITY_TENANT}
    agent: {AGENT}
denied_tool_calls: refuse
denied_tool_definitions: strip
"""


def policies_folder(folder: Path, provider_port: int, dead_port: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "policies" / "prices.yaml", folder / "prices.yaml")
    pii = (REPO / "policies" / "pii.yaml").read_text()
    (folder / "pii.yaml").write_text(pii.replace("rules:\n", "rules:" + REDACT_EMAIL, 1))
    (folder / "governor.yaml").write_text(POLICIES)
    (folder / "gateway.yaml").write_text(gateway_yaml(provider_port, dead_port))
    return folder


def publish_policies(settings: Settings, key: SigningKey, folder: Path) -> None:
    """What the worker does with an accepted bundle: record it, signed, for clients."""
    history = PolicyHistory(settings, folder, key)
    try:
        history.accepted(load_bundle(folder).policies).result(timeout=30)
    finally:
        history.close()


class Loop:
    """An event loop in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout_s: float = 60) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def serve_provider(provider: FakeProvider, port: int) -> web.AppRunner:
    runner = web.AppRunner(provider.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@dataclass
class Events:
    """Every StepEvent on the module's events topic, read as it comes."""

    settings: Settings
    seen: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._codec = Codecs.load(self.settings.schemas_dir).step_event
        self._consumer = Consumer(
            {"bootstrap.servers": self.settings.bootstrap, "group.id": uuid.uuid4().hex}
        )
        topic = self.settings.topic("events")
        partitions = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])

    def of(
        self,
        session_id: str,
        until: Callable[[list[dict[str, Any]]], bool],
        timeout_s: float = 10.0,
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            mine = [e for e in self.seen if e["session_id"] == session_id]
            if until(mine):
                return mine
            if time.monotonic() > deadline:
                kinds = [(e["kind"], e["status"]) for e in mine]
                raise AssertionError(f"events of {session_id} so far: {kinds}")
            for message in self._consumer.consume(100, 0.2):
                if message.error() is None:
                    self.seen.append(self._codec.decode(message.value() or b""))

    def close(self) -> None:
        self._consumer.close()


@dataclass
class Harness:
    settings: Settings
    running: Running
    provider: FakeProvider
    publisher: DecisionPublisher
    events: Events
    loop: Loop
    keyring: KeyRing
    #: the folder of the key that signed the policies (a worker signs with it too)
    keys_dir: Path

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.running.port}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.running.port}"

    def decide(self, session_id: str, action: str, epoch: int = 1, **fields: Any) -> None:
        fields.setdefault("policy_id", "ops-kill")
        fields.setdefault("reason", "stopped by the test")
        decision = make_decision(
            target=f"session:{session_id}",
            action=action,
            epoch=epoch,
            tenant_id=TENANT,
            issued_at_us=time.time_ns() // 1000,
            **fields,
        )
        self.publisher.publish(decision, wait=True)
        # in force at the gateway (its subscriber reads gov.control in a thread of its own)
        gov = self.running.gateway.governors[(TENANT, AGENT)]
        deadline = time.monotonic() + 10
        while True:
            found = gov.book.effective([decision["target"]], gov.now_us())
            if found is not None and found["decision_id"] == decision["decision_id"]:
                return
            assert time.monotonic() < deadline, f"{action} never reached the gateway"
            time.sleep(0.01)


@pytest.fixture(scope="session")
def harness(
    stack_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch_session: pytest.MonkeyPatch,
) -> Iterator[Harness]:
    root = tmp_path_factory.mktemp("gateway")
    # the gateway, its fake provider and a port nothing listens on: free ones, as each test
    # process (pytest-xdist) builds this harness of its own
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_low_port())
    gateway_port, provider_port, dead_port = sorted(ports)
    folder = policies_folder(root / "policies", provider_port, dead_port)
    settings = isolated_settings(stack_settings, root).replace(policies_dir=folder)
    ensure_topics(settings)
    key = generate_signing_key(root / "keys", "k1")
    keyring = KeyRing.from_dir(root / "keys")
    publish_policies(settings, key, folder)
    monkeypatch_session.setenv("GW_TEST_OPENAI_KEY", OPENAI_KEY)
    monkeypatch_session.setenv("GW_TEST_ANTHROPIC_KEY", ANTHROPIC_KEY)
    config = load_gateway(folder / "gateway.yaml")
    loop = Loop()
    provider = FakeProvider()
    provider_runner = loop.run(serve_provider(provider, provider_port))
    running = loop.run(
        start(settings, config, "127.0.0.1", gateway_port, public_keys=keyring, policy_wait_s=10)
    )
    publisher = DecisionPublisher(settings, key)
    events = Events(settings)
    try:
        yield Harness(settings, running, provider, publisher, events, loop, keyring, root / "keys")
    finally:
        events.close()
        publisher.close()
        loop.run(running.stop())
        loop.run(provider_runner.cleanup())
        loop.close()


@pytest.fixture(scope="session")
def monkeypatch_session() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def new_session() -> str:
    return f"gw-{uuid.uuid4().hex[:12]}"
