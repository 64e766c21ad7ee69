"""The local stack: real Apache Kafka (KRaft) and a real redis-server, with no Docker.

``up`` resolves the Kafka jars from Maven Central (``ops/local/pom.xml``, cached under
``cache_dir``), formats KRaft storage once per cluster layout, starts each node with the
machine's Java, starts ``redis-server`` and waits until each one really answers. Pid files under
``state_dir/run`` let ``down`` stop exactly what ``up`` started; a pid whose process is gone or is
no longer ours is treated as stale.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from streams.kafka_config import KafkaSecurity, connection_config
from streams.settings import Settings, project_root

log = logging.getLogger(__name__)

KAFKA_MAIN = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
STACK_MARKER = "-Dgovernor.stack="


class StackError(RuntimeError):
    """A service could not be provided; the message says why and shows its log."""


@dataclass(frozen=True)
class Service:
    name: str
    address: str
    pid_file: Path
    log_file: Path


@dataclass(frozen=True)
class SecuredListener:
    """A secured local broker: its client listener is SASL_SSL (SCRAM), the KRaft
    ``StandardAuthorizer`` enforces ACLs, ``admin`` is the super user (the broker's own
    principal between brokers). The controller listener stays PLAINTEXT on 127.0.0.1; its
    principal (User:ANONYMOUS) is a super user too, as KRaft's broker-to-controller requests
    need: no client reaches it, the client listener only accepts SASL_SSL."""

    #: PEM file: the broker's private key (PKCS#8, unencrypted) and certificate chain
    keystore: Path
    #: PEM file: the CA that signed it (and the clients' trust anchor)
    truststore: Path
    admin: str
    admin_password: str = field(repr=False)
    #: SCRAM credentials created when the storage is formatted: (name, password)
    users: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    mechanism: str = "SCRAM-SHA-512"
    #: extra JVM options of the broker: by default the quick JIT only (C1), which starts a
    #: test broker in less CPU time; pass () for a broker that runs long
    jvm_options: tuple[str, ...] = ("-XX:TieredStopAtLevel=1",)

    def admin_security(self) -> KafkaSecurity:
        return KafkaSecurity(
            protocol="SASL_SSL",
            sasl_mechanism=self.mechanism,
            username=self.admin,
            password=self.admin_password,
            ca_file=self.truststore,
        )

    def properties(self) -> dict[str, object]:
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{self.admin}" password="{self.admin_password}";'
        )
        return {
            "sasl.enabled.mechanisms": self.mechanism,
            "sasl.mechanism.inter.broker.protocol": self.mechanism,
            f"listener.name.sasl_ssl.{self.mechanism.lower()}.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": self.keystore,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": self.truststore,
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{self.admin};User:ANONYMOUS",
            "allow.everyone.if.no.acl.found": "false",
            # topics come from `governor topics create` (or the worker), under the ACLs
            "auto.create.topics.enable": "false",
        }

    def scram_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments creating the SCRAM credentials (KIP-900)."""
        users = [(self.admin, self.admin_password), *self.users]
        return [f"--add-scram={self.mechanism}=[name={n},password={p}]" for n, p in users]


@dataclass(frozen=True)
class ServiceStatus:
    service: Service
    pid: int | None
    running: bool


# --- paths and layout ----------------------------------------------------------------------


def run_dir(settings: Settings) -> Path:
    return settings.state_dir / "run"


def layout_file(settings: Settings) -> Path:
    return run_dir(settings) / "stack.json"


def kafka_libs_dir(settings: Settings) -> Path:
    return settings.cache_dir / f"kafka-{settings.kafka_version}" / "libs"


def kafka_services(settings: Settings, brokers: int) -> list[Service]:
    services = []
    for node in range(1, brokers + 1):
        port, _ = settings.kafka_ports(node)
        services.append(
            Service(
                name=f"kafka-{node}",
                address=f"127.0.0.1:{port}",
                pid_file=run_dir(settings) / f"kafka-{node}.pid",
                log_file=settings.state_dir / "logs" / f"kafka-{node}.log",
            )
        )
    return services


def redis_service(settings: Settings) -> Service:
    return Service(
        name="redis",
        address=f"{settings.redis_host}:{settings.redis_port}",
        pid_file=run_dir(settings) / "redis.pid",
        log_file=settings.state_dir / "logs" / "redis.log",
    )


def running_brokers(settings: Settings) -> int:
    """How many Kafka nodes the last ``up`` started (0 if none is recorded)."""
    try:
        return int(json.loads(layout_file(settings).read_text())["brokers"])
    except (FileNotFoundError, KeyError, ValueError):
        return 0


def bootstrap_servers(settings: Settings, brokers: int) -> str:
    return ",".join(s.address for s in kafka_services(settings, brokers))


# --- processes -----------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0]), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def _start_ticks(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields else None  # field 22 of stat: start time since boot


def _is_gone(pid: int) -> bool:
    fields = _proc_stat(pid)
    return fields is None or fields[0] in ("Z", "X")


def _write_pid(pid_file: Path, pid: int) -> None:
    # the start time makes the pid file unambiguous: a reused pid has another start time
    pid_file.write_text(f"{pid} {_start_ticks(pid)}\n")


def _read_pid(pid_file: Path) -> tuple[int, str] | None:
    try:
        pid, ticks = pid_file.read_text().split()
        return int(pid), ticks
    except (FileNotFoundError, ValueError):
        return None


def live_pid(service: Service) -> int | None:
    """The pid in the service's pid file if that very process still runs, else None."""
    recorded = _read_pid(service.pid_file)
    if recorded is None:
        return None
    pid, ticks = recorded
    if _is_gone(pid) or _start_ticks(pid) != ticks:
        return None
    return pid


def status(settings: Settings) -> list[ServiceStatus]:
    brokers = max(running_brokers(settings), 1)
    result = []
    for service in [*kafka_services(settings, brokers), redis_service(settings)]:
        pid = live_pid(service)
        result.append(ServiceStatus(service=service, pid=pid, running=pid is not None))
    return result


def _spawn(service: Service, argv: list[str], cwd: Path) -> int:
    service.log_file.parent.mkdir(parents=True, exist_ok=True)
    service.pid_file.parent.mkdir(parents=True, exist_ok=True)
    with service.log_file.open("ab") as log_fh:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not killed with the terminal that ran `governor up`
        )
    _write_pid(service.pid_file, proc.pid)
    return proc.pid


def _stop_all(services: list[Service], timeout_s: float = 30.0) -> None:
    """SIGTERM every running service of ours at once, SIGKILL what is left after the timeout.

    Signalling all KRaft nodes together matters: a node stopped last would otherwise wait for a
    controller quorum that is already gone.
    """
    running: dict[int, Service] = {}
    stopped: list[int] = []
    for service in services:
        pid = live_pid(service)
        service.pid_file.unlink(missing_ok=True)
        if pid is not None:
            running[pid] = service
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while running and time.monotonic() < deadline:
        for pid in list(running):
            _reap(pid)
            if _is_gone(pid):
                stopped.append(pid)
                del running[pid]
        time.sleep(0.1)
    for pid, service in running.items():
        log.warning("%s (pid %d) ignored SIGTERM for %.0fs, killing", service.name, pid, timeout_s)
        os.kill(pid, signal.SIGKILL)
        stopped.append(pid)
    # an orphan's zombie lingers until init reaps it; wait so `ps` shows nothing of ours
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in stopped) and time.monotonic() < deadline:
        for pid in stopped:
            _reap(pid)
        time.sleep(0.1)


def _reap(pid: int) -> None:
    # the process is our child only when `up` and `down` run in one Python process (tests)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])


def _wait(service: Service, probe: Callable[[], bool], timeout_s: float, pid: int | None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pid is not None and live_pid(service) is None:
            raise StackError(
                f"{service.name} exited during start-up; last lines of {service.log_file}:\n"
                f"{log_tail(service.log_file)}"
            )
        if probe():
            return
        time.sleep(0.25)
    raise StackError(
        f"{service.name} did not answer at {service.address} within {timeout_s:.0f}s; "
        f"last lines of {service.log_file}:\n{log_tail(service.log_file)}"
    )


# --- Kafka ----------------------------------------------------------------------------------


def ensure_kafka_jars(settings: Settings) -> Path:
    """Resolve the broker jars with Maven once; later calls reuse the cache."""
    libs = kafka_libs_dir(settings)
    done = libs.parent / ".complete"
    if done.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (mvn) is needed to fetch the Kafka jars; install it first")
    pom = project_root() / "ops" / "local" / "pom.xml"
    log.info(
        "resolving Apache Kafka %s jars from Maven Central into %s", settings.kafka_version, libs
    )
    if libs.exists():
        shutil.rmtree(libs)
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}",
        f"-Dkafka.version={settings.kafka_version}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not any(libs.glob("kafka_2.13-*.jar")):
        raise StackError(
            f"mvn could not resolve Kafka {settings.kafka_version} (exit {proc.returncode}):\n"
            f"{(proc.stdout + proc.stderr)[-3000:]}"
        )
    done.write_text(settings.kafka_version + "\n")
    return libs


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise StackError("Java 17+ is needed to run Kafka; install a JDK first")
    return java


def kafka_properties(
    settings: Settings,
    node: int,
    brokers: int,
    data_dir: Path,
    secured: SecuredListener | None = None,
) -> str:
    """server.properties of local node ``node`` in a ``brokers``-node combined-mode cluster
    (``secured``: its client listener is SASL_SSL, with ACLs)."""
    port, controller_port = settings.kafka_ports(node)
    listener = "SASL_SSL" if secured is not None else "PLAINTEXT"
    voters = ",".join(f"{n}@127.0.0.1:{settings.kafka_ports(n)[1]}" for n in range(1, brokers + 1))
    replication = min(3, brokers)
    min_isr = 2 if replication >= 3 else 1
    props = {
        "process.roles": "broker,controller",
        "node.id": node,
        "controller.quorum.voters": voters,
        "listeners": f"{listener}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"{listener}://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": listener,
        "listener.security.protocol.map": f"{listener}:{listener},CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": 1,
        "default.replication.factor": replication,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replication,
        "offsets.topic.num.partitions": 12,
        "transaction.state.log.replication.factor": replication,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": replication,
        "share.coordinator.state.topic.min.isr": min_isr,
        # a local stack should be ready for consumers at once
        "group.initial.rebalance.delay.ms": 0,
        # a dead worker's open transaction holds back the scope stage until it is aborted:
        # look for timed-out ones every second, not every 10 s
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": 1000,
        "auto.create.topics.enable": "true",
        "log.segment.bytes": 64 * 1024 * 1024,
        **(secured.properties() if secured is not None else {}),
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _port_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def _kafka_answers(bootstrap: str, brokers: int, security: KafkaSecurity | None = None) -> bool:
    """True once a metadata request lists all ``brokers`` nodes."""
    from confluent_kafka.admin import AdminClient

    if not all(_port_open(address) for address in bootstrap.split(",")):
        return False
    # log_level 0: connection refusals while a node starts are expected, not worth printing
    admin = AdminClient(
        connection_config(bootstrap, security, {"socket.timeout.ms": 2000, "log_level": 0})
    )
    try:
        metadata = admin.list_topics(timeout=2)
    except Exception:
        return False
    return len(metadata.brokers) >= brokers


def _start_kafka(
    settings: Settings, brokers: int, secured: SecuredListener | None = None
) -> list[str]:
    libs = ensure_kafka_jars(settings)
    java = _java()
    layout = f"kafka-{brokers}node" + ("-secured" if secured is not None else "")
    cluster_root = settings.state_dir / layout
    cluster_id_file = cluster_root / "cluster.id"
    cluster_root.mkdir(parents=True, exist_ok=True)
    if not cluster_id_file.exists():
        # a KRaft cluster id is 16 random bytes, base64url without padding (22 characters)
        import base64

        raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        cluster_id_file.write_text(raw + "\n")
    cluster_id = cluster_id_file.read_text().strip()
    log4j = project_root() / "ops" / "local" / "log4j2.yaml"
    classpath = f"{libs}/*"
    started = []
    services = kafka_services(settings, brokers)
    for node, service in enumerate(services, start=1):
        if live_pid(service) is not None:
            continue
        node_dir = cluster_root / f"node-{node}"
        data_dir = node_dir / "data"
        node_dir.mkdir(parents=True, exist_ok=True)
        config = node_dir / "server.properties"
        config.write_text(kafka_properties(settings, node, brokers, data_dir, secured))
        if secured is not None:
            config.chmod(0o600)  # it holds the super user's password
        if not (data_dir / "meta.properties").exists():
            fmt = subprocess.run(
                [
                    java,
                    # a one-shot tool: the quick JIT and the serial GC start it in half the time
                    "-XX:TieredStopAtLevel=1",
                    "-XX:+UseSerialGC",
                    "-cp",
                    classpath,
                    STORAGE_TOOL,
                    "format",
                    "--ignore-formatted",
                    # one token: a base64url id may start with "-", which argparse would take
                    # for an option
                    f"--cluster-id={cluster_id}",
                    "-c",
                    str(config),
                    *(secured.scram_arguments() if secured is not None else []),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                raise StackError(f"formatting {data_dir} failed:\n{fmt.stdout}{fmt.stderr}")
        argv = [
            java,
            f"-Xmx{settings.kafka_heap_mb}m",
            f"-Xms{min(settings.kafka_heap_mb, 256)}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            *settings.kafka_jvm_options.split(),
            *(secured.jvm_options if secured is not None else ()),
            f"-Dlog4j2.configurationFile={log4j}",
            f"{STACK_MARKER}{settings.state_dir}/kafka-{node}",
            "-cp",
            classpath,
            KAFKA_MAIN,
            str(config),
        ]
        pid = _spawn(service, argv, cwd=node_dir)
        log.info("started %s (pid %d) on %s", service.name, pid, service.address)
        started.append(service.name)
    bootstrap = bootstrap_servers(settings, brokers)
    for service in services:
        _wait(
            service,
            lambda: _kafka_answers(
                bootstrap, brokers, secured.admin_security() if secured is not None else None
            ),
            settings.start_timeout_s,
            pid=live_pid(service),
        )
    return started


# --- Redis ----------------------------------------------------------------------------------


def _redis_answers(settings: Settings) -> bool:
    import redis

    client = redis.Redis(
        host=settings.redis_host, port=settings.redis_port, socket_connect_timeout=1
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _start_redis(settings: Settings) -> list[str]:
    service = redis_service(settings)
    if live_pid(service) is not None:
        return []
    server = shutil.which("redis-server")
    if server is None:
        raise StackError(
            "redis-server is not installed; run `make setup` (it installs Debian's redis-server)"
        )
    data = settings.state_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        server,
        "--bind",
        settings.redis_host,
        "--port",
        str(settings.redis_port),
        "--dir",
        str(data),
        "--daemonize",
        "no",
        # an append-only file, fsynced every second: a restarted Redis comes back with its
        # read-models instead of rebuilding them all from Kafka; no RDB snapshots besides
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--protected-mode",
        "yes",
    ]
    pid = _spawn(service, argv, cwd=data)
    log.info("started redis (pid %d) on %s", pid, service.address)
    _wait(service, lambda: _redis_answers(settings), settings.start_timeout_s, pid=pid)
    return [service.name]


# --- the stack -----------------------------------------------------------------------------


def up(settings: Settings, brokers: int = 1) -> list[str]:
    """Start whatever of the stack is not running; returns the names of what was started."""
    if brokers < 1:
        raise StackError("--brokers must be at least 1")
    current = running_brokers(settings)
    if (
        current
        and current != brokers
        and any(live_pid(s) for s in kafka_services(settings, current))
    ):
        raise StackError(
            f"a {current}-broker Kafka is running; run `governor down` before "
            f"starting one with {brokers}"
        )
    run_dir(settings).mkdir(parents=True, exist_ok=True)
    layout_file(settings).write_text(json.dumps({"brokers": brokers}) + "\n")
    try:
        started = _start_kafka(settings, brokers) + _start_redis(settings)
    except BaseException:
        down(settings)
        raise
    return started


def up_secured(settings: Settings, secured: SecuredListener) -> list[str]:
    """Start one secured Kafka node (no Redis): SASL_SSL with SCRAM users and ACLs enforced,
    for the secured-cluster test and for trying ACLs locally. ``down`` stops it."""
    run_dir(settings).mkdir(parents=True, exist_ok=True)
    layout_file(settings).write_text(json.dumps({"brokers": 1, "secured": True}) + "\n")
    try:
        return _start_kafka(settings, 1, secured)
    except BaseException:
        down(settings)
        raise


def stop(settings: Settings, names: Iterable[str]) -> list[str]:
    """Stop some services of the stack (e.g. ``kafka-2`` for a fault test); ``up`` restarts them.

    Returns the names that were running and are now stopped.
    """
    wanted = set(names)
    services = [s for s in _all_services(settings) if s.name in wanted]
    running = [s.name for s in services if live_pid(s) is not None]
    _stop_all(services)
    return running


def down(settings: Settings) -> list[str]:
    """Stop everything ``up`` started (any layout); returns the names of what was stopped."""
    stopped = stop(settings, [s.name for s in _all_services(settings)])
    layout_file(settings).unlink(missing_ok=True)
    return stopped


def _all_services(settings: Settings) -> list[Service]:
    brokers = max(running_brokers(settings), 3)
    return [redis_service(settings), *kafka_services(settings, brokers)]
