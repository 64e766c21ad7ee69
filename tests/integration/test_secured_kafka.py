"""Governor against a secured cluster: a real broker with a SASL_SSL listener (SCRAM-SHA-512,
a CA and a broker certificate made here with openssl) and the KRaft ``StandardAuthorizer``
enforcing exactly the ACLs `governor topics acls` prints.

- the worker's principal runs the worker (the Faust agents, the exactly-once session and scope
  stages, the decision publisher, gov.policies): it consumes gov.events and produces the KILL
  decision onto gov.control;
- the agent's principal (the client) writes gov.events, reads gov.control (the client obeys
  the decision) and gov.policies (the client-side checks get the worker's signed set);
- its attempt to write gov.control is refused by the broker (TOPIC_AUTHORIZATION_FAILED) and
  the client says so;
- the reader's principal reads the decisions, and may not write.

One broker and one worker for the module (their start is most of its time). The broker's ports
come from GOVERNOR_TEST_SECURED_KAFKA_PORT (default 29192; the controller uses the next one).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient
from typer.testing import CliRunner

from streams import stack
from streams.cli import app
from streams.client import Governor, SessionKilled
from streams.client.emitter import Emitter
from streams.codec import Codecs
from streams.control import session_target
from streams.kafka_acls import acl_bindings, acls_from_dicts
from streams.kafka_config import client_config, connection_config, security_from_settings
from streams.settings import Settings
from streams.topics import ensure_topics, read_partitions
from streams.worker import WorkerProcess
from tests.conftest import free_port
from tests.integration.test_worker_enforcement import wait_until

REPO = Path(__file__).resolve().parents[2]
POLICIES = """version: 3
policies:
  - id: dangerous-tools
    kind: tools
    deny: ["delete_*"]
    action: kill
"""
ROLES = ("agent", "worker", "reader")


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_pki(folder: Path) -> tuple[Path, Path]:
    """A throwaway CA and a broker certificate for 127.0.0.1: (CA PEM, broker keystore PEM
    holding the PKCS#8 key and the certificate, as Kafka's PEM keystore reads it)."""
    folder.mkdir(parents=True)
    ca_key, ca = folder / "ca.key", folder / "ca.pem"
    key, csr, cert = folder / "broker.key", folder / "broker.csr", folder / "broker.pem"
    # EC keys: made in milliseconds (2048-bit RSA takes a second or more on a busy machine)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", ca_key, "-out", ca,
            "-days", "2", "-subj", "/CN=governor-test-ca")  # fmt: skip
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", csr,
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    ext = folder / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", cert, "-days", "2", "-extfile", ext)  # fmt: skip
    pkcs8 = folder / "broker.p8"
    openssl("pkcs8", "-topk8", "-nocrypt", "-in", key, "-out", pkcs8)
    keystore = folder / "keystore.pem"
    keystore.write_text(pkcs8.read_text() + cert.read_text())
    keystore.chmod(0o600)
    return ca, keystore


@dataclass(frozen=True)
class Secured:
    admin: AdminClient
    roles: dict[str, Settings]
    worker: WorkerProcess


@pytest.fixture(scope="module")
def secured(
    stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Secured]:
    if shutil.which("openssl") is None:  # not a skip: this test is the proof the ACLs hold
        pytest.fail("openssl is needed to make the test CA: `make setup` installs it")
    started = time.monotonic()
    folder = tmp_path_factory.mktemp("secured")
    ca, keystore = make_pki(folder / "pki")
    passwords = {role: secrets.token_hex(16) for role in ROLES}
    listener = stack.SecuredListener(
        keystore=keystore,
        truststore=ca,
        admin="admin",
        admin_password=secrets.token_hex(16),
        users=tuple(passwords.items()),
    )
    port = int(os.environ.get("GOVERNOR_TEST_SECURED_KAFKA_PORT", "29192"))
    policies = folder / "policies"
    policies.mkdir()
    shutil.copy(REPO / "policies" / "prices.yaml", policies)
    (policies / "governor.yaml").write_text(POLICIES)
    tag = uuid.uuid4().hex[:8]
    base = stack_settings.replace(
        state_dir=folder / "state",
        kafka_port=port,
        bootstrap=f"127.0.0.1:{port}",
        topic_prefix=f"sec{tag}.",
        app_id=f"governor-sec-{tag}",
        web_port=free_port(),
        event_partitions=3,
        policies_dir=policies,
        keys_dir=folder / "keys",
        checkpoint_interval_s=0.2,
    )
    log = logging.getLogger(__name__)
    log.info("PKI made in %.1fs", time.monotonic() - started)
    stack.up_secured(base, listener)
    log.info("secured broker up after %.1fs", time.monotonic() - started)
    try:
        admin = AdminClient(connection_config(base.bootstrap, listener.admin_security()))
        # exactly the ACLs `governor topics acls` prints
        printed = CliRunner().invoke(
            app, ["topics", "acls", "--json"], env=base.to_env(), catch_exceptions=False
        )
        assert printed.exit_code == 0, printed.output
        acls = acls_from_dicts(json.loads(printed.output)["acls"])
        for future in admin.create_acls(acl_bindings(acls)).values():
            future.result()
        roles = {
            role: base.replace(
                kafka_security_protocol="SASL_SSL",
                kafka_sasl_mechanism="SCRAM-SHA-512",
                kafka_username=role,
                kafka_password=password,
                kafka_ca_file=ca,
            )
            for role, password in passwords.items()
        }
        ensure_topics(roles["worker"])  # `governor topics create` runs as the worker
        log.info("ACLs and topics after %.1fs", time.monotonic() - started)
        with WorkerProcess(roles["worker"], folder / "worker.log") as process:
            wait_until(
                lambda: (process.get_json("/ingest") or {}).get("ready"),
                timeout_s=60,
                what="the worker's assignment on the secured cluster",
            )
            log.info("secured broker and worker ready in %.1fs", time.monotonic() - started)
            yield Secured(admin, roles, process)
            # nothing is checked after the tests: no graceful Faust shutdown (seconds) needed
            if process.proc is not None:
                process.proc.kill()
                process.proc.wait()
    finally:
        stack.down(base)


def test_the_worker_principal_governs_and_the_agent_obeys(secured: Secured) -> None:
    agent, reader = secured.roles["agent"], secured.roles["reader"]
    assert security_from_settings(agent).describe().startswith("SASL_SSL, SCRAM-SHA-512")
    # checks off: the decision must come from the worker through gov.control
    gov = Governor(tenant="acme", agent="bot", settings=agent, checks=False)
    try:
        s = gov.session()
        s.start()
        s.tool_call(name="delete_account", args={"user": 7})  # gov.events, as the agent
        decision = wait_until(lambda: gov.book.latest(session_target(s.session_id)), what="KILL")
        assert (decision["action"], decision["policy_id"]) == ("KILL", "dangerous-tools")
        with pytest.raises(SessionKilled):
            s.tool_call(name="lookup_order")
        s.finish()
    finally:
        gov.close()
    assert gov.emitter.stats.failed == 0
    # the reader reads the decision
    codecs = Codecs.load(reader.schemas_dir)
    control = read_partitions(reader, reader.topic("control"), [0, 1, 2])
    ids = {codecs.decision.decode(v)["decision_id"] for p in control.values() for *_, v in p if v}
    assert decision["decision_id"] in ids


def test_the_agents_client_checks_get_the_signed_set_from_gov_policies(secured: Secured) -> None:
    gov = Governor(tenant="acme", agent="bot", settings=secured.roles["agent"], policy_wait_s=15)
    try:
        # the worker publishes its set a moment after it is ready; the client swaps it in
        # whenever it arrives
        wait_until(lambda: gov.policy_set.source == "gov.policies", what="the signed set")
        assert [p.id for p in gov.policy_set.policies.policies] == ["dangerous-tools"]
    finally:
        gov.close()


def test_the_agent_may_not_write_the_control_topic(
    secured: Secured, caplog: pytest.LogCaptureFixture
) -> None:
    agent = secured.roles["agent"]
    emitter = Emitter(agent.bootstrap, security=security_from_settings(agent))
    with caplog.at_level(logging.WARNING, logger="governor.client"):
        assert emitter.emit(agent.topic("control"), b"session:forged", b"a forged KILL")
        assert emitter.flush(15) == 0
        emitter.close()
    assert emitter.stats.failed == 1
    assert emitter.stats.delivered == 0
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refused, caplog.text
    assert "may not write" in refused[0]
    assert "TOPIC_AUTHORIZATION_FAILED" in refused[0]
    assert agent.topic("control") in refused[0]
    assert agent.kafka_password not in caplog.text


def test_wrong_credentials_are_reported_as_such(
    secured: Secured, caplog: pytest.LogCaptureFixture
) -> None:
    agent = secured.roles["agent"].replace(kafka_password="not-the-password")
    with caplog.at_level(logging.WARNING, logger="governor.client"):
        emitter = Emitter(agent.bootstrap, security=security_from_settings(agent))
        emitter.emit(agent.topic("events"), b"s", b"e")
        wait_until(lambda: "refused this client's credentials" in caplog.text, timeout_s=15,
                   what="the client's authentication error")  # fmt: skip
        emitter.close(0.1)
    assert "GOVERNOR_KAFKA_PASSWORD" in caplog.text
    assert "not-the-password" not in caplog.text


@pytest.mark.parametrize("role", ["agent", "reader"])
def test_only_the_worker_may_write_what_the_worker_writes(secured: Secured, role: str) -> None:
    """The broker refuses the write itself (not the client): a raw producer gets the error."""
    settings = secured.roles[role]
    errors: list[KafkaError | None] = []
    producer = Producer(client_config(settings, {"acks": "all", "log_level": 0}))
    producer.produce(
        settings.topic("audit"), b"x", b"tenant", on_delivery=lambda err, _m: errors.append(err)
    )
    producer.flush(15)
    assert [e.code() if e else None for e in errors] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]
