"""The Docker Compose stack: docker-compose accepts the file, and it wires the services together."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"

EXPECTED_SERVICES = (
    "kafka",
    "redis",
    "governor-topics",
    "governor-worker",
    "prometheus",
    "alertmanager",
    "grafana",
)


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{COMPOSE_FILE} is not a YAML mapping"
    return data


def _service(name: str) -> dict[str, Any]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    service = services[name]
    assert isinstance(service, dict)
    return service


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping, whether written as a mapping or a list."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (str(item).split("=", 1) for item in env)
        return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs}
    assert isinstance(env, dict)
    return {str(key): str(value) for key, value in env.items()}


def test_docker_compose_config_is_valid() -> None:
    docker_compose = shutil.which("docker-compose")
    if docker_compose is None:
        pytest.skip("docker-compose is not installed, so the compose file cannot be validated")
    secrets = {"REDIS_PASSWORD": "test-password", "GOVERNOR_API_TOKENS": "admin:" + "t" * 32}
    base = {k: v for k, v in os.environ.items() if k not in secrets}

    def config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [docker_compose, "-f", str(COMPOSE_FILE), "config", "-q"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=env,
        )

    result = config({**base, **secrets})
    assert result.returncode == 0, f"docker-compose config -q failed:\n{result.stderr}"
    # without the secrets it refuses to start, naming the variable
    refused = config(base)
    assert refused.returncode != 0
    assert "REDIS_PASSWORD" in refused.stderr


def test_all_services_are_defined() -> None:
    services = _compose()["services"]
    missing = [name for name in EXPECTED_SERVICES if name not in services]
    assert not missing, f"services missing from docker-compose.yml: {missing}"


def test_no_top_level_version_key() -> None:
    # depends_on conditions need the Compose Specification, which has no `version:` key.
    assert "version" not in _compose()


def test_worker_points_at_the_compose_services() -> None:
    worker = _service("governor-worker")
    env = _environment(worker)
    assert env["GOVERNOR_BOOTSTRAP"] == "kafka:9092"
    assert env["GOVERNOR_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
    assert env["GOVERNOR_REDIS_URL"].endswith("}@redis:6379/0")
    assert env["GOVERNOR_WEB_HOST"] == "0.0.0.0"
    assert worker["build"]["dockerfile"] == "ops/docker/Dockerfile"


def test_worker_waits_for_its_dependencies() -> None:
    depends_on = _service("governor-worker")["depends_on"]
    assert depends_on["kafka"]["condition"] == "service_healthy"
    assert depends_on["redis"]["condition"] == "service_healthy"
    assert depends_on["governor-topics"]["condition"] == "service_completed_successfully"
    topics_depends_on = _service("governor-topics")["depends_on"]
    assert topics_depends_on["kafka"]["condition"] == "service_healthy"


def test_kafka_and_redis_have_healthchecks() -> None:
    for name in ("kafka", "redis"):
        assert "healthcheck" in _service(name), f"{name} has no healthcheck"


def test_mounted_ops_files_exist() -> None:
    """Every bind mount of a path in the repository points at something that exists."""
    for name in EXPECTED_SERVICES:
        for volume in _service(name).get("volumes") or []:
            source = str(volume).split(":", 1)[0]
            if source.startswith("./"):
                assert (REPO_ROOT / source).exists(), f"{name} mounts missing {source}"


def test_published_ports_are_bound_to_the_host_loopback_only() -> None:
    """Issue 14: nothing is published on all interfaces."""
    for name, service in _compose()["services"].items():
        for port in service.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"


def test_redis_needs_a_password_and_the_url_carries_it() -> None:
    redis = _service("redis")
    command = " ".join(redis["command"])
    assert '--requirepass "$$REDIS_PASSWORD"' in command
    assert _environment(redis)["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert "REDISCLI_AUTH" in " ".join(redis["healthcheck"]["test"])
    for name in ("governor-worker", "governor-topics"):
        assert "${REDIS_PASSWORD:?" in _environment(_service(name))["GOVERNOR_REDIS_URL"]


def test_the_workers_api_tokens_come_from_the_environment() -> None:
    env = _environment(_service("governor-worker"))
    assert env["GOVERNOR_API_TOKENS"].startswith("${GOVERNOR_API_TOKENS:?")
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert "admin:" not in text.replace("admin:$(openssl", ""), "a token is written in the file"
